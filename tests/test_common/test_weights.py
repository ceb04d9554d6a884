"""common.weights: file names, lookup (--pretrained-path, torchvision's cache), the not-found message, loading;
then the same through both methods that use it (crossmodal_bot's Baseline / build_backbone, qaconv's ResMap).

Random weights written to temporary folders; nothing is downloaded (a download attempt fails the test).
"""
import contextlib
import os
import tempfile
import unittest
from unittest import mock

import torch
import torchvision

import common.weights
import crossmodal_bot.model
import qaconv.backbone
import qaconv.model
from common.weights import (IBN_FILES, IBN_URL, IMAGENET_FILES, IMAGENET_URL, PretrainedWeightsNotFound,
                            find_weights, load_backbone_weights, read_state_dict, torchvision_cache_dir,
                            weight_files)
from crossmodal_bot.model import Baseline, build_backbone
from qaconv.model import ResMap


@contextlib.contextmanager
def no_download():
    """Any call of torch.hub's download functions raises."""
    fail = AssertionError("weights must never be downloaded")
    with mock.patch.object(torch.hub, "download_url_to_file", side_effect=fail), \
            mock.patch.object(torch.hub, "load_state_dict_from_url", side_effect=fail):
        yield


def torch_home(tmp):
    """``$TORCH_HOME`` set to ``tmp``: torchvision's cache folder becomes ``tmp/hub/checkpoints``."""
    return mock.patch.dict(os.environ, {"TORCH_HOME": tmp})


def save_in_cache(tmp, state, name):
    """Write ``state`` as ``tmp/hub/checkpoints/name``; returns the path."""
    folder = os.path.join(tmp, "hub", "checkpoints")
    os.makedirs(folder, exist_ok=True)
    torch.save(state, os.path.join(folder, name))
    return os.path.join(folder, name)


class TestFileNames(unittest.TestCase):
    def test_tables(self):
        for arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
            files, url = weight_files(arch)
            self.assertEqual((files, url), (IMAGENET_FILES[arch], IMAGENET_URL))
            self.assertEqual(len(files), 2)
            self.assertTrue(all(f.startswith(arch + "-") and f.endswith(".pth") for f in files))
        self.assertEqual(IMAGENET_FILES["resnet50"], ["resnet50-0676ba61.pth", "resnet50-19c8e357.pth"])
        self.assertEqual(weight_files("resnet50_ibn_b"), (["resnet50_ibn_b-9ca61e85.pth"], IBN_URL))
        self.assertEqual(len(IBN_FILES), 8)
        for name, f in IBN_FILES.items():
            self.assertTrue(f.startswith(name + "-"))
        self.assertTrue(IMAGENET_URL.endswith("/") and IBN_URL.endswith("/"))
        with self.assertRaises(ValueError):
            weight_files("resnet152_ibn_a")

    def test_returned_list_is_a_copy(self):
        files, _ = weight_files("resnet18")
        files.append("x.pth")
        self.assertEqual(len(IMAGENET_FILES["resnet18"]), 2)

    def test_cache_dir_follows_torch_home(self):
        with tempfile.TemporaryDirectory() as tmp, torch_home(tmp):
            self.assertEqual(torchvision_cache_dir(), os.path.join(tmp, "hub", "checkpoints"))
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(torch.hub, "get_dir", return_value=tmp):
            self.assertEqual(torchvision_cache_dir(), os.path.join(tmp, "checkpoints"))


class TestFindWeights(unittest.TestCase):
    def test_cache_preferred_then_legacy_name(self):
        with tempfile.TemporaryDirectory() as tmp, torch_home(tmp), no_download():
            legacy = save_in_cache(tmp, {}, "resnet50-19c8e357.pth")
            self.assertEqual(find_weights("resnet50"), legacy)
            current = save_in_cache(tmp, {}, "resnet50-0676ba61.pth")
            self.assertEqual(find_weights("resnet50"), current)
            ibn = save_in_cache(tmp, {}, "resnet50_ibn_a-d9d0bb7b.pth")
            self.assertEqual(find_weights("resnet50_ibn_a"), ibn)

    def test_explicit_path_wins_over_cache(self):
        with tempfile.TemporaryDirectory() as tmp, torch_home(tmp):
            save_in_cache(tmp, {}, "resnet18-f37072fd.pth")
            path = os.path.join(tmp, "mine.pth")
            torch.save({}, path)
            self.assertEqual(find_weights("resnet18", path), path)
            self.assertEqual(find_weights("resnet18", pretrained_path=path), path)

    def test_missing_in_cache_message(self):
        with tempfile.TemporaryDirectory() as tmp, torch_home(tmp), no_download():
            with self.assertRaises(PretrainedWeightsNotFound) as ctx:
                find_weights("resnet50")
            msg = str(ctx.exception)
            for part in ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth", IMAGENET_URL + "resnet50-0676ba61.pth",
                         os.path.join(tmp, "hub", "checkpoints"), "$TORCH_HOME", "--pretrained-path",
                         "--no-pretrained"):
                self.assertIn(part, msg)
            with self.assertRaises(PretrainedWeightsNotFound) as ctx:
                find_weights("resnet101_ibn_b")
            self.assertIn(IBN_URL + "resnet101_ibn_b-c55f6dba.pth", str(ctx.exception))
        self.assertTrue(issubclass(PretrainedWeightsNotFound, FileNotFoundError))

    def test_missing_explicit_path_message(self):
        with tempfile.TemporaryDirectory() as tmp, torch_home(tmp):
            save_in_cache(tmp, {}, "resnet18-f37072fd.pth")  # present in the cache: the explicit path still counts
            bad = os.path.join(tmp, "nope.pth")
            with self.assertRaises(PretrainedWeightsNotFound) as ctx:
                find_weights("resnet18", bad)
            msg = str(ctx.exception)
            for part in (bad, "resnet18-f37072fd.pth", IMAGENET_URL + "resnet18-f37072fd.pth",
                         os.path.join(tmp, "hub", "checkpoints"), "--pretrained-path", "--no-pretrained"):
                self.assertIn(part, msg)

    def test_unknown_name(self):
        with self.assertRaises(ValueError):
            find_weights("vgg16")


class TestLoad(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(5)
        self.ref = torchvision.models.resnet18(weights=None)
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def save(self, obj, name="w.pth"):
        path = os.path.join(self.tmp.name, name)
        torch.save(obj, path)
        return path

    def test_read_state_dict_unwraps(self):
        state = self.ref.state_dict()
        for obj in (state, {"state_dict": state}, {"model": state}, {"state_dict": {"model": state}},
                    {"module." + k: v for k, v in state.items()}, {"state_dict": {"module." + k: v
                                                                                  for k, v in state.items()}}):
            got = read_state_dict(self.save(obj))
            self.assertEqual(list(got), list(state))
            torch.testing.assert_close(got["conv1.weight"], state["conv1.weight"])

    def test_strict_load_keeps_fc_unless_dropped(self):
        net = torchvision.models.resnet18(weights=None)
        info = load_backbone_weights(net, self.save(self.ref.state_dict()), "resnet18")
        self.assertEqual(info, {"path": os.path.join(self.tmp.name, "w.pth"), "missing": [], "unexpected": []})
        for a, b in zip(net.state_dict().values(), self.ref.state_dict().values()):
            torch.testing.assert_close(a, b)
        net2 = torchvision.models.resnet18(weights=None)
        fc_before = net2.fc.weight.detach().clone()
        info = load_backbone_weights(net2, self.save(self.ref.state_dict()), "resnet18", drop_fc=True)
        self.assertEqual((info["missing"], info["unexpected"]), ([], []))
        torch.testing.assert_close(net2.fc.weight, fc_before)
        torch.testing.assert_close(net2.layer4[1].conv2.weight, self.ref.layer4[1].conv2.weight)

    def test_wrong_file_strict_raises_lenient_reports(self):
        state = self.ref.state_dict()
        state["extra.weight"] = torch.zeros(1)
        del state["layer1.0.conv1.weight"]
        path = self.save(state)
        with self.assertRaisesRegex(RuntimeError, "does not fit resnet18") as ctx:
            load_backbone_weights(torchvision.models.resnet18(weights=None), path, "resnet18")
        self.assertIn("layer1.0.conv1.weight", str(ctx.exception))
        self.assertIn("extra.weight", str(ctx.exception))
        info = load_backbone_weights(torchvision.models.resnet18(weights=None), path, "resnet18", strict=False)
        self.assertEqual((info["missing"], info["unexpected"]), (["layer1.0.conv1.weight"], ["extra.weight"]))

    def test_fc_and_batch_counters_may_be_missing(self):
        state = {k: v for k, v in self.ref.state_dict().items()
                 if not (k.startswith("fc.") or k.endswith("num_batches_tracked"))}  # a pre-0.4 file, no fc
        info = load_backbone_weights(torchvision.models.resnet18(weights=None), self.save(state), "resnet18")
        self.assertEqual((info["missing"], info["unexpected"]), ([], []))  # torch fills in the batch counters

    def test_shape_mismatch_raises_even_lenient(self):
        state = self.ref.state_dict()
        state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
        path = self.save(state)
        for strict in (True, False):
            with self.assertRaisesRegex(RuntimeError, "does not fit resnet18"):
                load_backbone_weights(torchvision.models.resnet18(weights=None), path, "resnet18", strict=strict)
        fc = self.ref.state_dict()
        fc["fc.weight"], fc["fc.bias"] = torch.zeros(7, 512), torch.zeros(7)  # a re-ID classifier: dropped is fine
        info = load_backbone_weights(torchvision.models.resnet18(weights=None), self.save(fc, "fc.pth"), "resnet18",
                                     strict=False, drop_fc=True)
        self.assertEqual((info["missing"], info["unexpected"]), ([], []))


class TestMethodsShareOneModule(unittest.TestCase):
    def test_same_objects(self):
        self.assertIs(crossmodal_bot.model.PretrainedWeightsNotFound, common.weights.PretrainedWeightsNotFound)
        self.assertIs(qaconv.model.PretrainedWeightsNotFound, common.weights.PretrainedWeightsNotFound)
        self.assertIs(qaconv.model.find_weights, common.weights.find_weights)
        self.assertIs(qaconv.model.IMAGENET_FILES, common.weights.IMAGENET_FILES)
        self.assertIs(qaconv.model.IBN_FILES, common.weights.IBN_FILES)
        for module in (crossmodal_bot.model, qaconv.backbone):
            self.assertIs(module.find_weights, common.weights.find_weights)
            self.assertIs(module.load_backbone_weights, common.weights.load_backbone_weights)


class TestCrossmodalBotPretrained(unittest.TestCase):
    """Moved from tests/test_crossmodal_bot/test_model.py (TestPretrained)."""

    def test_missing_file_raises_clear_error(self):
        with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"TORCH_HOME": tmp}), no_download():
            with self.assertRaises(PretrainedWeightsNotFound) as ctx:
                Baseline(5, arch="resnet18", pretrained=True)
        msg = str(ctx.exception)
        for part in ("resnet18-f37072fd.pth", os.path.join(tmp, "hub", "checkpoints"), "--pretrained-path",
                     "--no-pretrained", IMAGENET_URL + "resnet18-f37072fd.pth"):
            self.assertIn(part, msg)
        with self.assertRaises(FileNotFoundError):
            build_backbone("resnet18", pretrained=True, pretrained_path="/nonexistent/weights.pth")
        with self.assertRaises(ValueError):  # build_backbone keeps its own architecture list
            build_backbone("resnet152", pretrained=False)

    def test_load_from_pretrained_path(self):
        torch.manual_seed(3)
        ref = torchvision.models.resnet18(weights=None)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "r18.pth")
            torch.save(ref.state_dict(), path)
            model = Baseline(5, arch="resnet18", pretrained=True, pretrained_path=path)
        torch.testing.assert_close(model.base.conv1.weight, ref.conv1.weight)
        torch.testing.assert_close(model.base.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
        info = model.base.pretrained_info
        self.assertEqual((info["missing"], info["unexpected"]), ([], []))
        self.assertEqual(info["path"], path)
        self.assertEqual(model.classifier.weight.shape, (5, 512))  # fc.* dropped, our classifier kept

    def test_mismatched_keys_stop_the_run(self):
        # issue 8.3: a file whose keys do not match must not load half-way (or nothing) and train from scratch
        torch.manual_seed(6)
        state = torchvision.models.resnet18(weights=None).state_dict()
        with tempfile.TemporaryDirectory() as tmp:
            extra = dict(state, **{"extra.weight": torch.zeros(1)})
            path = os.path.join(tmp, "r18.pth")
            torch.save({"state_dict": extra}, path)
            with self.assertRaisesRegex(RuntimeError, r"unexpected keys \['extra.weight'\]"):
                build_backbone("resnet18", pretrained=True, pretrained_path=path)
            prefixed = {"backbone." + k: v for k, v in state.items()}  # nothing matches: used to load nothing
            torch.save(prefixed, path)
            with self.assertRaisesRegex(RuntimeError, "missing keys .*conv1.weight.*unexpected keys .*backbone"):
                build_backbone("resnet18", pretrained=True, pretrained_path=path)
            reid_fc = dict(state, **{"fc.weight": torch.zeros(7, 512), "fc.bias": torch.zeros(7)})
            torch.save(reid_fc, path)  # the expected mismatch: another classifier, dropped
            backbone = build_backbone("resnet18", pretrained=True, pretrained_path=path)
        self.assertEqual((backbone.pretrained_info["missing"], backbone.pretrained_info["unexpected"]), ([], []))
        torch.testing.assert_close(backbone.conv1.weight, state["conv1.weight"])

    def test_load_from_torchvision_cache(self):
        torch.manual_seed(4)
        ref = torchvision.models.resnet18(weights=None)
        with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"TORCH_HOME": tmp}):
            os.makedirs(os.path.join(tmp, "hub", "checkpoints"))
            torch.save(ref.state_dict(), os.path.join(tmp, "hub", "checkpoints", "resnet18-f37072fd.pth"))
            backbone = build_backbone("resnet18", pretrained=True)
        torch.testing.assert_close(backbone.layer3[0].conv2.weight, ref.layer3[0].conv2.weight)


class TestQAConvPretrainedFiles(unittest.TestCase):
    """Moved from tests/test_qaconv/test_model.py (TestPretrainedFiles)."""

    def test_missing_file_names_file_and_fixes(self):
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(torch.hub, "get_dir", return_value=tmp), \
                no_download():
            with self.assertRaises(PretrainedWeightsNotFound) as ctx:
                ResMap(50, ibn="b", pretrained=True)
            msg = str(ctx.exception)
            self.assertIn("resnet50_ibn_b-9ca61e85.pth", msg)
            self.assertIn("--pretrained-path", msg)
            self.assertIn(os.path.join(tmp, "checkpoints"), msg)
            self.assertIn(IBN_URL + "resnet50_ibn_b-9ca61e85.pth", msg)
            self.assertIn("--no-pretrained", msg)
            with self.assertRaises(PretrainedWeightsNotFound) as ctx:
                ResMap(18, ibn=None, pretrained=True)
            self.assertIn("resnet18-f37072fd.pth", str(ctx.exception))
            self.assertIn(IMAGENET_URL + "resnet18-f37072fd.pth", str(ctx.exception))
            with self.assertRaises(PretrainedWeightsNotFound):
                ResMap(18, ibn=None, pretrained=True, pretrained_path=os.path.join(tmp, "nope.pth"))

    def test_load_from_cache(self):
        torch.manual_seed(2)
        donor = torchvision.models.resnet18(weights=None)
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(torch.hub, "get_dir", return_value=tmp):
            os.makedirs(os.path.join(tmp, "checkpoints"))
            torch.save(donor.state_dict(), os.path.join(tmp, "checkpoints", "resnet18-f37072fd.pth"))
            m = ResMap(18, ibn=None, pretrained=True)
        self.assertTrue(torch.equal(m.base.layer2[0].conv1.weight, donor.layer2[0].conv1.weight))
        self.assertTrue(torch.equal(m.base.fc.weight, donor.fc.weight))  # qaconv keeps the ImageNet fc, as before

    def test_strict_against_wrong_file(self):
        torch.manual_seed(7)
        state = torchvision.models.resnet18(weights=None).state_dict()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "r18.pth")
            torch.save(state, path)
            with self.assertRaisesRegex(RuntimeError, "does not fit resnet18_ibn_a"):  # plain ResNet into IBN-a
                ResMap(18, ibn="a", pretrained=True, pretrained_path=path)


if __name__ == "__main__":
    unittest.main()
