"""QAConv matcher against a plain loop over locations; ResMap / IBN-Net construction, key names, weight loading;
optimizer groups; reading checkpoints in the original's format. Random init, tiny tensors.

Pretrained-file lookup (cache folder, not-found message) is tested in tests/test_common/test_weights.py."""
import copy
import math
import os
import tempfile
import unittest

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from qaconv.loss import ClassMemoryLoss, TripletLoss
from qaconv.model import (IBN, QAConv, ResMap, load_original_checkpoint, matcher_state_from_criterion,
                          optimizer_param_groups)


def unit_maps(n, c=6, h=3, w=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, c, h, w, generator=g), dim=1)


def randomize(q, seed=1):
    """Non-trivial affine parameters, fc weights and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (q.bn, q.logit_bn):
            bn.weight.copy_(0.5 + torch.rand(1, generator=g))
            bn.bias.copy_(torch.randn(1, generator=g))
            bn.running_mean.copy_(0.3 * torch.randn(1, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(1, generator=g))
        q.fc.weight.copy_(torch.randn(q.fc.weight.shape, generator=g))
        q.fc.bias.copy_(torch.randn(1, generator=g))
    return q


def loop_maxima(prob, gal):
    """a[p][g][s] = max_r <gal_g[:, r], prob_p[:, s]>, b[p][g][r] = max_s ..., with argmaxes; plain loops."""
    P, C = prob.shape[:2]
    G, L = gal.shape[0], prob.shape[2] * prob.shape[3]
    pf, gf = prob.reshape(P, C, L).tolist(), gal.reshape(G, C, L).tolist()
    a, b, ia, ib = [], [], [], []
    for p in range(P):
        ra, rb, ria, rib = [], [], [], []
        for g in range(G):
            sim = [[sum(gf[g][c][r] * pf[p][c][s] for c in range(C)) for s in range(L)] for r in range(L)]
            ra.append([max(sim[r][s] for r in range(L)) for s in range(L)])
            ria.append([max(range(L), key=lambda r: sim[r][s]) for s in range(L)])
            rb.append([max(sim[r]) for r in range(L)])
            rib.append([max(range(L), key=lambda s: sim[r][s]) for r in range(L)])
        a.append(ra), b.append(rb), ia.append(ria), ib.append(rib)
    return a, b, ia, ib


def loop_scores(q, prob, gal, train):
    """Direct reference of QAConv.forward: scalar BN over all maxima, fc, (sum), scalar logit BN."""
    a, b, _, _ = loop_maxima(prob, gal)
    P, G, L = len(a), len(a[0]), q.length
    w, c = q.fc.weight.reshape(-1).tolist(), q.fc.bias.item()

    def stats(values, bn):
        if train:
            m = sum(values) / len(values)
            return m, sum((v - m) ** 2 for v in values) / len(values)
        return bn.running_mean.item(), bn.running_var.item()

    vals = [v for p in range(P) for g in range(G) for v in a[p][g] + b[p][g]]
    m, v = stats(vals, q.bn)
    gam, bet, eps = q.bn.weight.item(), q.bn.bias.item(), q.bn.eps

    def nrm(x):
        return gam * (x - m) / math.sqrt(v + eps) + bet

    z = []
    for p in range(P):
        for g in range(G):
            na, nb = [nrm(x) for x in a[p][g]], [nrm(x) for x in b[p][g]]
            if q.version == "2.1":
                z.append(sum(w[i] * na[i] for i in range(L)) + c + sum(w[i] * nb[i] for i in range(L)) + c)
            else:  # gallery half first
                z.append(sum(w[i] * nb[i] for i in range(L)) + sum(w[L + i] * na[i] for i in range(L)) + c)
    m2, v2 = stats(z, q.logit_bn)
    gam2, bet2 = q.logit_bn.weight.item(), q.logit_bn.bias.item()
    out = [gam2 * (x - m2) / math.sqrt(v2 + q.logit_bn.eps) + bet2 for x in z]
    return torch.tensor(out).reshape(P, G), vals, z


class TestQAConvAgainstLoops(unittest.TestCase):
    def setUp(self):
        self.prob, self.gal = unit_maps(3, seed=0), unit_maps(4, seed=1)

    def check(self, version, train):
        torch.manual_seed(0)
        q = randomize(QAConv(6, 3, 2, version=version)).train(train)
        expected, vals, z = loop_scores(q, self.prob, self.gal, train)
        with torch.no_grad():
            got = q(self.prob, self.gal)
        self.assertEqual(tuple(got.shape), (3, 4))
        self.assertTrue(torch.allclose(got, expected, atol=1e-4), (got, expected))
        return q, vals, z

    def test_v21_eval(self):
        self.check("2.1", False)

    def test_v1_eval(self):
        self.check("1", False)

    def test_v21_train_batch_stats_and_running_update(self):
        torch.manual_seed(0)
        old = randomize(QAConv(6, 3, 2))
        old_m, old_v = old.bn.running_mean.item(), old.bn.running_var.item()
        q, vals, z = self.check("2.1", True)
        n, mean = len(vals), sum(vals) / len(vals)
        unbiased = sum((v - mean) ** 2 for v in vals) / (n - 1)
        self.assertAlmostEqual(q.bn.running_mean.item(), 0.9 * old_m + 0.1 * mean, places=5)
        self.assertAlmostEqual(q.bn.running_var.item(), 0.9 * old_v + 0.1 * unbiased, places=5)
        self.assertEqual(int(q.bn.num_batches_tracked), 1)

    def test_v1_train(self):
        self.check("1", True)

    def test_blocks_do_not_change_results_train_or_eval(self):
        torch.manual_seed(0)
        q = randomize(QAConv(6, 3, 2))
        small = copy.deepcopy(q)
        small.block_elems = 1  # one probe x one gallery map per block
        for train in (True, False):
            q.train(train), small.train(train)
            self.assertTrue(torch.allclose(q(self.prob, self.gal), small(self.prob, self.gal), atol=1e-6))
            self.assertTrue(torch.allclose(q.bn.running_mean, small.bn.running_mean))

    def test_gradients_through_blocks(self):
        torch.manual_seed(0)
        q = randomize(QAConv(3, 2, 1)).double().eval()
        q.block_elems = 4
        prob = unit_maps(2, 3, 2, 1, seed=3).double().requires_grad_()
        gal = unit_maps(3, 3, 2, 1, seed=4).double().requires_grad_()
        self.assertTrue(torch.autograd.gradcheck(lambda x, y: q(x, y), (prob, gal)))

    def test_local_matches(self):
        for version in ("2.1", "1"):
            torch.manual_seed(0)
            q = randomize(QAConv(6, 3, 2, version=version)).eval()
            with torch.no_grad():
                out = q.local_matches(self.prob, self.gal)
            self.assertEqual(set(out), {"prob_score", "prob_index", "gal_score", "gal_index", "score"})
            for k in ("prob_score", "prob_index", "gal_score", "gal_index"):
                self.assertEqual(tuple(out[k].shape), (3, 4, 3, 2))
            self.assertEqual(out["prob_index"].dtype, torch.long)
            _, _, ia, ib = loop_maxima(self.prob, self.gal)
            self.assertEqual(out["prob_index"].reshape(3, 4, 6).tolist(), ia)
            self.assertEqual(out["gal_index"].reshape(3, 4, 6).tolist(), ib)
            expected, _, _ = loop_scores(q, self.prob, self.gal, False)
            self.assertTrue(torch.allclose(out["score"], expected, atol=1e-4))
            # the contributions sum to the fc output: z = sum(prob) + sum(gal) + bias (once per fc application)
            nb = 2 if version == "2.1" else 1
            z = out["prob_score"].sum((2, 3)) + out["gal_score"].sum((2, 3)) + nb * q.fc.bias
            bn = q.logit_bn
            logit = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
            self.assertTrue(torch.allclose(logit, out["score"], atol=1e-4))


class TestQAConvProperties(unittest.TestCase):
    def test_v21_symmetric(self):
        torch.manual_seed(0)
        q = randomize(QAConv(6, 3, 2)).eval()
        x, y = unit_maps(3, seed=5), unit_maps(5, seed=6)
        with torch.no_grad():
            self.assertTrue(torch.allclose(q(x, y), q(y, x).t(), atol=1e-5))
            q.train()
            s = q(x, x)
        self.assertTrue(torch.allclose(s, s.t(), atol=1e-5))

    def test_v1_not_symmetric_and_layout(self):
        torch.manual_seed(0)
        q = randomize(QAConv(6, 3, 2, version="1")).eval()
        self.assertEqual(tuple(q.fc.weight.shape), (1, 12))
        x, y = unit_maps(3, seed=5), unit_maps(5, seed=6)
        with torch.no_grad():
            self.assertFalse(torch.allclose(q(x, y), q(y, x).t(), atol=1e-3))

    def test_chunk_invariance_eval(self):
        torch.manual_seed(0)
        q = randomize(QAConv(6, 3, 2)).eval()
        x, y = unit_maps(5, seed=7), unit_maps(7, seed=8)
        with torch.no_grad():
            full = q(x, y)
            parts = torch.cat([torch.cat([q(x[i:i + 2], y[j:j + 3]) for j in range(0, 7, 3)], 1)
                               for i in range(0, 5, 2)], 0)
        self.assertTrue(torch.allclose(full, parts, atol=1e-6))

    def test_chunks_differ_in_train_mode(self):
        torch.manual_seed(0)
        q = randomize(QAConv(6, 3, 2)).train()
        x, y = unit_maps(4, seed=7), unit_maps(6, seed=8)
        with torch.no_grad():
            full, part = q(x, y), q(x, y[:3])
        self.assertFalse(torch.allclose(full[:, :3], part, atol=1e-3))

    def test_init_and_reset(self):
        torch.manual_seed(0)
        q = QAConv(6, 3, 2)
        self.assertEqual((q.version, q.num_features, q.height, q.width, q.length), ("2.1", 6, 3, 2, 6))
        self.assertTrue(torch.equal(q.fc.weight, torch.full((1, 6), 1 / 6)))
        bound = 1 / math.sqrt(6)
        randomize(q)
        with torch.no_grad():
            q.fc.bias.fill_(5.0)
        q.reset_parameters()
        self.assertTrue(torch.equal(q.fc.weight, torch.full((1, 6), 1 / 6)))
        self.assertTrue(-bound <= q.fc.bias.item() <= bound)
        for bn in (q.bn, q.logit_bn):
            self.assertEqual((bn.weight.item(), bn.bias.item(), bn.running_mean.item(), bn.running_var.item()),
                             (1.0, 0.0, 0.0, 1.0))
        randomize(q)
        w = q.fc.weight.clone()
        q.reset_running_stats()
        self.assertEqual((q.bn.running_mean.item(), q.logit_bn.running_var.item()), (0.0, 1.0))
        self.assertTrue(torch.equal(q.fc.weight, w))
        v1 = QAConv(6, 3, 2, version="1")
        self.assertFalse(torch.allclose(v1.fc.weight, torch.full((1, 12), 1 / 12)))  # default init
        self.assertEqual(sorted(q.state_dict()), sorted(
            ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "fc.weight",
             "fc.bias", "logit_bn.weight", "logit_bn.bias", "logit_bn.running_mean", "logit_bn.running_var",
             "logit_bn.num_batches_tracked"]))
        with self.assertRaises(ValueError):
            QAConv(6, 3, 2, version="3")
        with self.assertRaises(ValueError):
            q(unit_maps(2, c=5), unit_maps(2))

    def test_bfloat16_input(self):
        torch.manual_seed(0)
        q = randomize(QAConv(6, 3, 2)).eval()
        x, y = unit_maps(3, seed=9), unit_maps(4, seed=10)
        with torch.no_grad():
            ref, low = q(x, y), q(x.bfloat16(), y.bfloat16())
        self.assertEqual(low.dtype, torch.float32)
        self.assertTrue(torch.allclose(ref, low, atol=0.1), (ref - low).abs().max())


def small_resmap(**kw):
    torch.manual_seed(0)
    kw.setdefault("ibn", None)
    return ResMap("resnet18", pretrained=False, **kw)


class TestResMap(unittest.TestCase):
    def test_shape_unit_norm_and_forward_order(self):
        m = small_resmap().eval()
        self.assertEqual((m.num_features, m.stride, m.feature_size(64, 32)), (128, 16, (4, 2)))
        x = torch.rand(2, 3, 64, 32)
        with torch.no_grad():
            y = m(x)
            b = m.base
            ref = b.layer3(b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))))
            ref = m.neck_conv(ref)
            ref = ref / ref.norm(dim=1, keepdim=True)
        self.assertEqual(tuple(y.shape), (2, 128, 4, 2))
        self.assertTrue(torch.allclose(y.norm(dim=1), torch.ones(2, 4, 2), atol=1e-5))
        self.assertTrue(torch.allclose(y, ref, atol=1e-5))

    def test_neck_variants_and_final_layers(self):
        head = small_resmap()
        self.assertIn("neck_conv.bias", head.state_dict())
        self.assertFalse(any(k.startswith("neck_bn") for k in head.state_dict()))
        old = small_resmap(neck=64, neck_bias=False, neck_bn=True)
        keys = old.state_dict()
        self.assertNotIn("neck_conv.bias", keys)
        self.assertIn("neck_bn.running_var", keys)
        self.assertEqual(old.num_features, 64)
        none = small_resmap(neck=0)
        self.assertEqual(none.num_features, 256)
        self.assertFalse(any(k.startswith("neck") for k in none.state_dict()))
        l2 = small_resmap(final_layer="layer2", neck=0).eval()
        with torch.no_grad():
            self.assertEqual(tuple(l2(torch.rand(1, 3, 64, 32)).shape), (1, 128, 8, 4))
        self.assertEqual((l2.stride, l2.feature_size(384, 128)), (8, (48, 16)))
        self.assertEqual(small_resmap(final_layer="layer4").feature_size(384, 128), (12, 4))
        self.assertEqual(small_resmap(final_layer="layer4", neck=0).num_features, 512)
        with self.assertRaises(ValueError):
            small_resmap(final_layer="layer5")

    def test_neck_bn_applied(self):
        m = small_resmap(neck_bias=False, neck_bn=True).eval()
        with torch.no_grad():
            m.neck_bn.running_mean.fill_(0.7)
            x = torch.rand(1, 3, 64, 32)
            b = m.base
            f = b.layer3(b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))))
            ref = F.normalize(m.neck_bn(m.neck_conv(f)), dim=1)
            self.assertTrue(torch.allclose(m(x), ref, atol=1e-5))

    def test_optimizer_param_groups(self):
        m = small_resmap()
        q = QAConv(m.num_features, 4, 2)
        crit = TripletLoss(q)
        groups = optimizer_param_groups(m, crit, 0.01)
        self.assertEqual([g["lr"] for g in groups], [0.001, 0.01, 0.01])
        self.assertEqual([id(p) for p in groups[0]["params"]], [id(p) for p in m.base.parameters()])
        self.assertEqual({id(p) for p in groups[1]["params"]}, {id(m.neck_conv.weight), id(m.neck_conv.bias)})
        self.assertEqual(len(groups[2]["params"]), 6)
        torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)  # no duplicates


class TestIBN(unittest.TestCase):
    def test_ibn_module(self):
        torch.manual_seed(0)
        ibn = IBN(6).train()
        with torch.no_grad():
            ibn.IN.weight.copy_(torch.tensor([2.0, 1.0, 0.5]))
        x = torch.randn(4, 6, 3, 3)
        y = ibn(x)
        first = x[:, :3]
        m = first.mean((2, 3), keepdim=True)
        v = first.var((2, 3), unbiased=False, keepdim=True)
        ref_in = (first - m) / torch.sqrt(v + 1e-5) * torch.tensor([2.0, 1.0, 0.5]).view(1, 3, 1, 1)
        second = x[:, 3:]
        ref_bn = (second - second.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
            second.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
        self.assertTrue(torch.allclose(y[:, :3], ref_in, atol=1e-4))
        self.assertTrue(torch.allclose(y[:, 3:], ref_bn, atol=1e-4))

    @staticmethod
    def ibn_net_keys(depth, ibn):
        """State-dict keys (and shapes) of XingangPan/IBN-Net resnet{depth}_ibn_{ibn}, derived from torchvision's."""
        tv = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
        out = {}
        for k, v in tv.items():
            parts = k.split(".")
            if ibn == "a" and parts[0] in ("layer1", "layer2", "layer3") and parts[2] == "bn1":
                prefix, half = ".".join(parts[:3]), v.shape[0] // 2 if v.dim() else None
                if parts[3] in ("weight", "bias"):
                    out[f"{prefix}.IN.{parts[3]}"] = (half,)
                    out[f"{prefix}.BN.{parts[3]}"] = (v.shape[0] - half,)
                elif parts[3] in ("running_mean", "running_var"):
                    out[f"{prefix}.BN.{parts[3]}"] = (v.shape[0] - half,)
                else:
                    out[f"{prefix}.BN.{parts[3]}"] = ()
            elif ibn == "b" and parts[0] == "bn1" and parts[1] not in ("weight", "bias"):
                continue  # InstanceNorm stem: no running statistics
            else:
                out[k] = tuple(v.shape)
        if ibn == "b":
            blocks = {18: (2, 2), 34: (3, 4), 50: (3, 4), 101: (3, 4)}[depth]
            exp = 4 if depth >= 50 else 1
            for layer, n, c in (("layer1", blocks[0], 64 * exp), ("layer2", blocks[1], 128 * exp)):
                out[f"{layer}.{n - 1}.IN.weight"] = (c,)
                out[f"{layer}.{n - 1}.IN.bias"] = (c,)
        return out

    def test_key_names_match_ibn_net(self):
        for depth in (18, 50):
            for ibn in ("a", "b"):
                torch.manual_seed(0)
                m = ResMap(depth, neck=0, ibn=ibn, pretrained=False)
                got = {k[len("base."):]: tuple(v.shape) for k, v in m.state_dict().items()}
                self.assertEqual(got, self.ibn_net_keys(depth, ibn), (depth, ibn))

    def test_ibn_b_layout_and_block_forward(self):
        torch.manual_seed(0)
        m = ResMap(18, neck=0, ibn="b", pretrained=False).eval()
        self.assertIsInstance(m.base.bn1, torch.nn.InstanceNorm2d)
        self.assertTrue(m.base.bn1.affine)
        self.assertIsNone(m.base.layer1[0].IN)
        self.assertIsNone(m.base.layer3[-1].IN)
        self.assertEqual(list(dict(m.base.named_children())), ["conv1", "bn1", "relu", "maxpool", "layer1",
                                                                "layer2", "layer3", "layer4", "avgpool", "fc"])
        blk = m.base.layer1[-1]
        with torch.no_grad():
            blk.IN.weight.copy_(torch.linspace(0.5, 1.5, 64))
            x = torch.randn(2, 64, 5, 4)
            pre = blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(x))))) + x
            ref = F.relu(F.instance_norm(pre, weight=blk.IN.weight, bias=blk.IN.bias))
            self.assertTrue(torch.allclose(blk(x), ref, atol=1e-5))

    def test_ibn_152_and_bad_names_raise(self):
        with self.assertRaisesRegex(ValueError, "152"):
            ResMap(152, ibn="a", pretrained=False)
        with self.assertRaises(ValueError):
            ResMap("resnet20", ibn=None, pretrained=False)
        with self.assertRaises(ValueError):
            ResMap("resnet18", ibn="c", pretrained=False)

    def test_load_released_layout_from_path(self):
        torch.manual_seed(1)
        donor = ResMap(18, neck=0, ibn="b", pretrained=False)
        state = {k[len("base."):]: v for k, v in donor.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "resnet18_ibn_b-bc2f3c11.pth")
            torch.save(state, path)
            m = ResMap(18, neck=0, ibn="b", pretrained=True, pretrained_path=path)
            self.assertTrue(torch.equal(m.base.layer1[1].IN.weight, donor.base.layer1[1].IN.weight))
            self.assertTrue(torch.equal(m.base.conv1.weight, donor.base.conv1.weight))
            with self.assertRaisesRegex(RuntimeError, "does not fit"):  # IBN-b weights into IBN-a
                ResMap(18, neck=0, ibn="a", pretrained=True, pretrained_path=path)


class TestOriginalCheckpoint(unittest.TestCase):
    def test_round_trip_head_layout(self):
        model = small_resmap()
        matcher = QAConv(model.num_features, 4, 2)
        randomize(matcher)
        crit = TripletLoss(matcher)
        opt = torch.optim.SGD(optimizer_param_groups(model, crit, 0.005), lr=0.005, momentum=0.9)
        ckpt = {"model": {"module." + k: v for k, v in model.state_dict().items()},  # DataParallel prefix
                "criterion": crit.state_dict(), "optim": opt.state_dict(), "epoch": 3, "final_epochs": 7,
                "base_loss": np.float64(1.25), "lr_stepped": True}  # numpy scalar, as an old run may save
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "checkpoint.pth.tar")
            torch.save(ckpt, path)
            model_state, crit_state, extra = load_original_checkpoint(path)
        self.assertTrue(all(k.startswith(("base.", "neck_conv.")) for k in model_state))
        self.assertIn("matcher.bn.weight", crit_state)
        self.assertEqual((extra["epoch"], extra["final_epochs"], extra["lr_stepped"]), (3, 7, True))
        self.assertEqual(float(extra["base_loss"]), 1.25)
        self.assertIn("optim", extra)
        torch.manual_seed(5)
        model2, matcher2 = ResMap("resnet18", ibn=None, pretrained=False), QAConv(128, 4, 2)
        model2.load_state_dict(model_state)
        matcher2.load_state_dict(matcher_state_from_criterion(crit_state))
        TripletLoss(QAConv(128, 4, 2)).load_state_dict(crit_state)
        model.eval(), model2.eval(), matcher.eval(), matcher2.eval()
        x = torch.rand(3, 3, 64, 32)
        with torch.no_grad():
            f, f2 = model(x), model2(x)
            self.assertTrue(torch.equal(f, f2))
            self.assertTrue(torch.equal(matcher(f, f), matcher2(f2, f2)))

    def test_class_memory_and_v10_criterion_layouts(self):
        matcher = randomize(QAConv(4, 2, 1, version="1"))
        crit = ClassMemoryLoss(matcher, 5, 4, 2, 1)
        crit.class_memory.normal_()
        v10 = {"bn.weight": matcher.bn.weight.detach(), "bn.bias": matcher.bn.bias.detach(),
               "fc.weight": matcher.fc.weight.detach(), "fc.bias": matcher.fc.bias.detach(),
               "class_memory": crit.class_memory.clone(), "valid_class": crit.valid_class.clone()}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "checkpoint.pth.tar")
            torch.save({"model": {}, "criterion": {"module." + k: v for k, v in crit.state_dict().items()},
                        "optim": {}, "epoch": 1}, path)
            _, crit_state, _ = load_original_checkpoint(path)
            torch.save({"model": {}, "criterion": v10, "epoch": 1}, path)
            _, v10_state, _ = load_original_checkpoint(path)
        crit2 = ClassMemoryLoss(QAConv(4, 2, 1, version="1"), 5, 4, 2, 1)
        crit2.load_state_dict(crit_state)
        self.assertTrue(torch.equal(crit2.class_memory, crit.class_memory))
        sub = matcher_state_from_criterion(v10_state)
        self.assertEqual(sorted(sub), ["bn.bias", "bn.weight", "fc.bias", "fc.weight"])
        self.assertTrue(torch.equal(sub["fc.weight"], matcher.fc.weight))

    def test_bad_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaises(FileNotFoundError):
                load_original_checkpoint(os.path.join(tmp, "none.pth.tar"))
            path = os.path.join(tmp, "x.pth")
            torch.save({"foo": 1}, path)
            with self.assertRaises(RuntimeError):
                load_original_checkpoint(path)


if __name__ == "__main__":
    unittest.main()
