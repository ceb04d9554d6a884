"""MuDeep v2 network: parameter counts of the full-size model, the original's state-dict names (both key styles),
leader-based attention against a direct loop, stripe pooling, batch of one, parameter groups."""
import math
import unittest

import torch
import torchvision

from mudeep.model import (MuDeepV2, count_parameters, leader_attention, attention_projections,
                          load_original_state_dict, parameter_groups)


def tiny(num_classes=7, **kw):
    torch.manual_seed(0)
    return MuDeepV2(num_classes, arch="resnet18", pretrained=False, guidance=16, embed_dim=8, **kw)


def spec_state_shapes(num_classes=751):
    """The key list of spec section 3.9 with its shapes, written from the spec (not from mudeep.model)."""
    tv = torchvision.models.resnet50(weights=None).state_dict()
    shapes = {f"gamma{i}": (1,) for i in (1, 2, 3)}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    shapes["conv.conv.weight"] = (64, 3, 7, 7)
    for s in bn:
        shapes[f"conv.bn.{s}"] = tuple(tv[f"bn1.{s}"].shape)
    for k, v in tv.items():
        if k.split(".")[0] in ("layer1", "layer2", "layer3"):
            shapes[k] = tuple(v.shape)
    block = {j: {k[len(f"layer4.{j}."):]: tuple(v.shape) for k, v in tv.items() if k.startswith(f"layer4.{j}.")}
             for j in range(3)}
    for rest, shp in block[0].items():
        shapes[f"layer4_1.{rest}"] = shp  # a bare block, no index
    for depth, name in ((2, "layer4_2"), (3, "layer4_3")):
        for j in range(depth):
            for rest, shp in block[j].items():
                shapes[f"{name}.{j}.{rest}"] = shp
    shapes["conv_all.conv1.weight"] = (512, 6144, 1, 1)
    for s in bn:
        shapes[f"conv_all.bn1.{s}"] = () if s == "num_batches_tracked" else (512,)
    for i in (1, 2, 3):
        for f in ("feature1", "feature2"):
            shapes[f"atten{i}.{f}.conv1.weight"] = (2048, 512, 1, 1)
        for part in ("", "_1", "_2", "_3"):
            u = f"scale{i}{part}"
            shapes[f"{u}.feature.conv1.weight"] = (512, 2048, 1, 1)
            for s in bn:
                shapes[f"{u}.feature.bn.{s}"] = () if s == "num_batches_tracked" else (512,)
            shapes[f"{u}.classifier.fc.weight"] = (num_classes, 512)
            shapes[f"{u}.classifier.fc.bias"] = (num_classes,)
    return shapes


class TestFullSize(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.model = MuDeepV2(751, arch="resnet50", pretrained=False)

    def test_parameter_counts(self):
        self.assertEqual(count_parameters(self.model), 66_706_295)
        self.assertEqual(count_parameters(self.model, test_time=True), 62_083_139)
        self.assertEqual(self.model.descriptor_dim, 6144)

    def test_sixteen_groups_with_their_rates(self):
        groups = parameter_groups(self.model, 0.09)
        self.assertEqual(len(groups), 16)
        self.assertAlmostEqual(groups[0]["lr"], 0.009)
        self.assertTrue(all(abs(g["lr"] - 0.09) < 1e-12 for g in groups[1:]))
        sizes = [sum(p.numel() for p in g["params"]) for g in groups]
        self.assertEqual(sizes[0], 43_196_483)  # spec 5.3: backbone, streams, leader, gammas
        self.assertEqual(sum(sizes[1:]), 23_509_812)
        base_ids = {id(p) for p in groups[0]["params"]}
        for name in ("gamma1", "gamma2", "gamma3", "conv_all.conv1.weight", "layer4_3.2.conv3.weight"):
            self.assertIn(id(self.model.get_parameter(name)), base_ids, name)
        self.assertEqual(set(map(id, groups[13]["params"])), set(map(id, self.model.atten1.parameters())))
        self.assertEqual(set(map(id, groups[1]["params"])), set(map(id, self.model.scale1.parameters())))

    def test_original_state_dict_loads_in_both_key_styles(self):
        shapes = spec_state_shapes()
        self.assertEqual(len(shapes), 495)
        self.assertEqual(set(shapes), set(self.model.state_dict()))
        g = torch.Generator().manual_seed(1)
        state = {k: (torch.randint(0, 9, s, generator=g) if k.endswith("num_batches_tracked")
                     else torch.randn(s, generator=g)) for k, s in shapes.items()}
        for prefix in ("", "module."):
            with self.subTest(prefix=prefix):
                torch.manual_seed(2)
                model = MuDeepV2(751, arch="resnet50", pretrained=False)
                load_original_state_dict(model, {"epoch": 160, "state_dict": {prefix + k: v for k, v in state.items()}})
                mine = model.state_dict()
                for k, v in state.items():
                    self.assertTrue(torch.equal(mine[k], v.to(mine[k].dtype)), k)

    def test_wrong_class_count_is_refused(self):
        shapes = spec_state_shapes(num_classes=702)
        state = {k: torch.zeros(s) for k, s in shapes.items()}
        with self.assertRaises(RuntimeError):
            load_original_state_dict(self.model, state)


class TestAttention(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.atten = attention_projections(4, 5).double()
        self.leader = torch.randn(2, 4, 3, 2, dtype=torch.float64) * 0.3
        self.stream = torch.randn(2, 5, 3, 2, dtype=torch.float64)

    def test_identity_at_gamma_zero(self):
        out, a = leader_attention(self.atten, self.leader, self.stream, torch.zeros(1, dtype=torch.float64))
        self.assertTrue(torch.equal(out, self.stream))
        self.assertTrue(torch.allclose(a.sum(-1), torch.ones(2, 5, dtype=torch.float64)))

    def test_matches_a_loop_over_channels(self):
        gamma = torch.tensor([0.7], dtype=torch.float64)
        self.atten.requires_grad_(False)
        out, _ = leader_attention(self.atten, self.leader, self.stream, gamma)
        w1 = self.atten.feature1.conv1.weight[:, :, 0, 0]
        w2 = self.atten.feature2.conv1.weight[:, :, 0, 0]
        for b in range(2):
            hg = self.leader[b].reshape(4, -1)  # (Cg, L)
            f = self.stream[b].reshape(5, -1)
            q = [[sum(float(w1[c, g]) * float(hg[g, p]) for g in range(4)) for p in range(6)] for c in range(5)]
            k = [[sum(float(w2[c, g]) * float(hg[g, p]) for g in range(4)) for p in range(6)] for c in range(5)]
            for c in range(5):
                e = [sum(q[c][p] * k[c2][p] for p in range(6)) for c2 in range(5)]
                m = max(e)
                z = sum(math.exp(v - m) for v in e)
                a = [math.exp(v - m) / z for v in e]
                for p in range(6):
                    want = 0.7 * sum(a[c2] * float(f[c2, p]) for c2 in range(5)) + float(f[c, p])
                    self.assertAlmostEqual(float(out[b, c].reshape(-1)[p]), want, places=9)

    def test_model_is_identity_at_init(self):
        model = tiny().eval()
        x = torch.randn(2, 3, 96, 32)
        with torch.no_grad():
            outs, leader, maps = model.attended(x)
            streams = model.streams(x)
        self.assertEqual(tuple(leader.shape), (2, 16, 6, 2))
        self.assertEqual(tuple(maps[0].shape), (2, 512, 512))
        for o, s in zip(outs, streams):
            self.assertTrue(torch.equal(o, s))


class TestHeads(unittest.TestCase):
    def test_stripes_average_the_right_rows(self):
        model = tiny().eval()
        with torch.no_grad():
            model.gamma1.fill_(0.5)
        seen = {}
        for name in model.unit_names():
            getattr(model, name).feature.register_forward_pre_hook(
                lambda m, inp, name=name: seen.__setitem__(name, inp[0].clone()))
        x = torch.randn(2, 3, 96, 32)  # maps of 6 x 2
        with torch.no_grad():
            model.descriptor(x)
            f1 = model.attended(x)[0][0]
        for j in range(3):
            want = f1[:, :, 2 * j:2 * j + 2, :].mean(dim=(2, 3))
            self.assertTrue(torch.allclose(seen[f"scale1_{j + 1}"].flatten(1), want, atol=1e-5))
        stripes = torch.stack([seen[f"scale1_{j}"] for j in (1, 2, 3)]).mean(0)
        self.assertTrue(torch.allclose(seen["scale1"], stripes, atol=1e-5))
        self.assertTrue(torch.allclose(seen["scale1"].flatten(1), f1.mean(dim=(2, 3)), atol=1e-5))

    def test_outputs_and_batch_of_one(self):
        model = tiny()
        out = model(torch.randn(4, 3, 96, 32))
        self.assertEqual(len(out), 15)
        self.assertTrue(all(tuple(o.shape) == (4, 7) for o in out[:12]))
        self.assertTrue(all(tuple(o.shape) == (4, 8) for o in out[12:]))
        model.eval()
        x = torch.randn(3, 3, 96, 32)
        with torch.no_grad():
            feats = model(x[:1], test=True)
            self.assertEqual(len(feats), 12)
            one = model.descriptor(x[:1])
            three = model.descriptor(x)
        self.assertEqual(tuple(one.shape), (1, 96))
        self.assertTrue(torch.allclose(one, three[:1], atol=1e-5))
        self.assertTrue(bool((three >= 0).all()))  # post-ReLU embeddings

    def test_global_embeddings_are_the_triplet_inputs(self):
        model = tiny().eval()  # eval: dropout off, BN running stats, so both calls agree
        x = torch.randn(2, 3, 96, 32)
        with torch.no_grad():
            out = model(x)
            feats = model(x, test=True)
        for s in range(3):
            self.assertTrue(torch.allclose(out[12 + s], feats[4 * s]))
            self.assertTrue(torch.allclose(out[4 * s], model.get_submodule(f"scale{s + 1}").classifier(feats[4 * s])))


if __name__ == "__main__":
    unittest.main()
