"""extract_features: manual-forward equality, flip averaging (vectors and maps), mode restore, normalisation,
and the full ImageDataset -> build_test_loader -> extract path on PNG files."""
import os
import tempfile
import unittest

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from common.data.dataset import ImageDataset, ImageReadError
from common.data.loaders import build_test_loader
from common.data.transforms import build_transforms
from common.datasets.base import Record
from common.eval.features import extract_features, inference_context

H, W = 8, 4


def vector_model():
    torch.manual_seed(0)
    # Dropout makes train-mode output random, so equality with eval-mode output proves eval mode was used
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 6), nn.Dropout(0.5), nn.Linear(6, 5))


def map_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Dropout(0.5), nn.Conv2d(4, 2, (1, 3), padding=(0, 1)))


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = vector_model()

    def forward(self, x):
        f = self.body(x)
        return f, f.sum(dim=1)


def tensor_loader(n=7, batch_size=3):
    torch.manual_seed(1)
    images = torch.randn(n, 3, H, W)
    pids = torch.arange(n) * 10
    camids = torch.arange(n) % 3
    loader = DataLoader(TensorDataset(images, pids, camids, torch.arange(n)), batch_size=batch_size)
    return images, pids, camids, loader


def manual(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


class TestExtractFeatures(unittest.TestCase):
    def test_plain_equals_manual_forward(self):
        model = vector_model()
        images, pids, camids, loader = tensor_loader()
        out = extract_features(model, loader, "cpu", progress=False)
        self.assertEqual(tuple(out.feats.shape), (7, 5))
        self.assertEqual(out.feats.dtype, torch.float32)
        self.assertTrue(torch.allclose(out.feats, manual(model, images), atol=1e-6))
        np.testing.assert_array_equal(out.pids, pids.numpy())
        np.testing.assert_array_equal(out.camids, camids.numpy())
        np.testing.assert_array_equal(out.indices, np.arange(7))
        self.assertEqual(out.pids.dtype, np.int64)

    def test_flip_average_of_vectors(self):
        model = vector_model()
        images, _, _, loader = tensor_loader()
        out = extract_features(model, loader, "cpu", flip=True, progress=False)
        expected = (manual(model, images) + manual(model, images.flip(3))) / 2
        self.assertTrue(torch.allclose(out.feats, expected, atol=1e-6))
        self.assertFalse(torch.allclose(out.feats, manual(model, images), atol=1e-4))

    def test_flip_average_of_maps_flips_back(self):
        model = map_model()
        images, _, _, loader = tensor_loader()
        out = extract_features(model, loader, "cpu", flip=True, progress=False)
        self.assertEqual(tuple(out.feats.shape), (7, 2, H, W))
        expected = (manual(model, images) + manual(model, images.flip(3)).flip(3)) / 2
        self.assertTrue(torch.allclose(out.feats, expected, atol=1e-6))
        not_flipped_back = (manual(model, images) + manual(model, images.flip(3))) / 2
        self.assertFalse(torch.allclose(out.feats, not_flipped_back, atol=1e-4))

    def test_tuple_output_and_forward_fn(self):
        model = TupleModel()
        images, _, _, loader = tensor_loader()
        out = extract_features(model, loader, "cpu", progress=False)
        self.assertTrue(torch.allclose(out.feats, manual(model.body, images), atol=1e-6))
        out2 = extract_features(model, loader, "cpu", progress=False, forward_fn=lambda m, x: m(x)[1][:, None])
        self.assertTrue(torch.allclose(out2.feats[:, 0], manual(model.body, images).sum(1), atol=1e-5))

    def test_normalize_and_cpu_amp(self):
        model = vector_model()
        images, _, _, loader = tensor_loader()
        out = extract_features(model, loader, "cpu", normalize=True, amp=True, progress=False)
        self.assertTrue(torch.allclose(out.feats.norm(dim=1), torch.ones(7), atol=1e-5))
        ref = manual(model, images)
        self.assertTrue(torch.allclose(out.feats, ref / ref.norm(dim=1, keepdim=True), atol=1e-6))

    def test_modes_restored_also_after_exception(self):
        model = vector_model()
        model.train()
        model[2].eval()  # a submodule deliberately in eval mode must stay so
        _, _, _, loader = tensor_loader()
        seen = []

        def spy(m, x):
            seen.append((m.training, m[2].training))
            return m(x)

        extract_features(model, loader, "cpu", progress=False, forward_fn=spy)
        self.assertTrue(all(s == (False, False) for s in seen))
        self.assertTrue(model.training)
        self.assertFalse(model[2].training)
        self.assertTrue(model[1].training)

        def boom(m, x):
            raise RuntimeError("boom")

        with self.assertRaises(RuntimeError):
            extract_features(model, loader, "cpu", progress=False, forward_fn=boom)
        self.assertTrue(model.training and model[1].training and model[3].training)
        self.assertFalse(model[2].training)
        with self.assertRaises(KeyError):
            with inference_context(model):
                self.assertFalse(model.training)
                raise KeyError("x")
        self.assertTrue(model.training)

    def test_empty_loader_raises(self):
        with self.assertRaises(ValueError):
            extract_features(vector_model(), [], "cpu", progress=False)


class TestImageFilesPipeline(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        rng = np.random.RandomState(0)
        self.records = []
        for i in range(5):
            path = os.path.join(self.tmp.name, f"{i}.png")
            mode = "L" if i == 2 else "RGB"  # a grey image must come out as 3 channels
            shape = (20, 10) if mode == "L" else (20, 10, 3)
            Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
            self.records.append(Record(path, 100 + i, i % 2))

    def tearDown(self):
        self.tmp.cleanup()

    def test_build_test_loader_and_extract(self):
        model = vector_model()
        loader = build_test_loader(self.records, H, W, batch_size=2, workers=0)
        out = extract_features(model, loader, "cpu", progress=False)
        t = build_transforms(H, W, is_train=False)
        images = torch.stack([t(Image.open(r.img_path).convert("RGB")) for r in self.records])
        self.assertTrue(torch.allclose(out.feats, manual(model, images), atol=1e-6))
        np.testing.assert_array_equal(out.pids, [100, 101, 102, 103, 104])
        np.testing.assert_array_equal(out.camids, [0, 1, 0, 1, 0])
        np.testing.assert_array_equal(out.indices, np.arange(5))

    def test_dataset_items_and_missing_file_message(self):
        ds = ImageDataset(self.records)
        img, pid, camid, index = ds[2]
        self.assertEqual((img.mode, img.size, pid, camid, index), ("RGB", (10, 20), 102, 0, 2))
        missing = os.path.join(self.tmp.name, "nope.jpg")
        with self.assertRaises(ImageReadError) as ctx:
            ImageDataset([Record(missing, 0, 0)])[0]
        self.assertIn(missing, str(ctx.exception))
        self.assertIn("Fix", str(ctx.exception))
        broken = os.path.join(self.tmp.name, "broken.jpg")
        with open(broken, "wb") as f:
            f.write(b"not an image")
        with self.assertRaises(ImageReadError) as ctx:
            ImageDataset([Record(broken, 0, 0)])[0]
        self.assertIn(broken, str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
