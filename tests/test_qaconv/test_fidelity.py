"""Issue 7 (fidelity to the releases): the 1.0 / 1.1 class-memory loss applies the matcher's BN -> FC -> logit-BN
head once over all classes (independent of ``mem_batch_size``), 1.2 keeps one matcher call per chunk, 1.0 has no
valid-class mask, and 1.0 / 1.1 build the re-ranking's qq and gg blocks transposed.

The references are written from the spec (``shared/design/qaconv.md`` sections 3.2, 4.1, 11): a direct loop over
(sample, class) pairs and locations in float64, scalar batch statistics computed by hand, the focal BCE by hand.
"""
import copy
import math
import unittest

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.datasets.base import Record
from qaconv.evaluate import evaluate_qaconv
from qaconv.loss import ClassMemoryLoss
from qaconv.qaconv import QAConv
from qaconv.rerank import k_reciprocal_rerank

C, H, W = 4, 2, 2
L = H * W
EPS = 1e-5


def unit_maps(n, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, C, H, W, generator=g, dtype=torch.float64), dim=1)


def v1_matcher(seed=0):
    """A version-1 matcher (Linear(2L, 1), gallery half first) with non-trivial affine BN parameters."""
    torch.manual_seed(seed)
    m = QAConv(C, H, W, version="1").double().train()
    with torch.no_grad():
        m.bn.weight.fill_(1.3)
        m.bn.bias.fill_(0.2)
        m.logit_bn.weight.fill_(0.7)
        m.logit_bn.bias.fill_(-0.1)
    return m


def pair_halves(prob, gal):
    """Direct loop: for kernel map ``prob`` and convolved map ``gal`` (C, h, w) the 2L max-pooled similarities in
    the v1 layout: first, for each gallery location r, max over probe locations s of <gal[:, r], prob[:, s]>;
    then, for each probe location s, max over gallery locations r."""
    p, g = prob.reshape(C, L), gal.reshape(C, L)
    sim = [[(g[:, r] * p[:, s]).sum() for s in range(L)] for r in range(L)]  # sim[r][s]
    gal_half = [torch.stack(sim[r]).max() for r in range(L)]
    prob_half = [torch.stack([sim[r][s] for r in range(L)]).max() for s in range(L)]
    return torch.stack(gal_half + prob_half)


def scalar_bn(x, weight, bias):
    """Train-mode BatchNorm1d(1) over every value of x: one mean and one biased variance."""
    mean, var = x.mean(), x.var(unbiased=False)
    return (x - mean) / torch.sqrt(var + EPS) * weight + bias, mean, x.var(unbiased=True)


def reference_scores(matcher, feature, memory):
    """Scores (B, K) of every sample (kernel) against every class memory (convolved) with ONE head over all pairs,
    plus the batch statistics of both BNs."""
    b, k = feature.size(0), memory.size(0)
    x = torch.stack([pair_halves(feature[i], memory[j]) for i in range(b) for j in range(k)])  # (B*K, 2L)
    xn, m1, v1 = scalar_bn(x, matcher.bn.weight[0], matcher.bn.bias[0])
    z = xn @ matcher.fc.weight[0] + matcher.fc.bias[0]  # (B*K,)
    s, m2, v2 = scalar_bn(z, matcher.logit_bn.weight[0], matcher.logit_bn.bias[0])
    return s.reshape(b, k), (m1, v1, m2, v2)


def reference_loss(score, target, mask):
    """Focal BCE (gamma 2) summed over classes, each class weighted by ``mask``; by hand."""
    rows = []
    for i in range(score.size(0)):
        total = 0
        for k in range(score.size(1)):
            s, y = score[i, k], float(k == int(target[i]))
            p = 1 / (1 + torch.exp(-s))
            bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
            total = total + mask[k] * bce * ((1 - p) ** 2 if y else p ** 2)
        rows.append(total)
    return torch.stack(rows)


def setup_memory(crit, memory, valid):
    crit.class_memory.copy_(memory)
    crit.valid_class.copy_(valid)


NUM_CLASSES = 5
TARGET = torch.tensor([4, 0, 2])
VALID = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])


def memory_with_an_empty_class():
    mem = unit_maps(NUM_CLASSES, seed=7)
    mem[2] = 0.0  # class 2 never seen: zero memory, invalid
    return mem


def run_loss(version, mem_batch_size, matcher=None, feature=None):
    """(loss, acc, feature grad, fc weight grad, matcher after the call) of one forward/backward."""
    matcher = v1_matcher() if matcher is None else matcher
    crit = ClassMemoryLoss(matcher, NUM_CLASSES, C, H, W, mem_batch_size=mem_batch_size, version=version).double()
    setup_memory(crit, memory_with_an_empty_class(), VALID.double())
    f = (unit_maps(3, seed=8) if feature is None else feature).clone().requires_grad_(True)
    loss, acc = crit(f, TARGET)
    loss.sum().backward()
    return loss.detach(), acc, f.grad, matcher.fc.weight.grad.clone(), matcher


class TestWholeHeadClassMemory(unittest.TestCase):
    """1.0 / 1.1: BN -> FC -> logit-BN once over the maxima of all classes."""

    def check_version(self, version, mask):
        f = unit_maps(3, seed=8).requires_grad_(True)
        ref_matcher = v1_matcher()
        score, (m1, v1, m2, v2) = reference_scores(ref_matcher, f, memory_with_an_empty_class())
        ref = reference_loss(score, TARGET, mask)
        ref.sum().backward()
        for mbs in (1, 2, 3, 16):
            with self.subTest(version=version, mem_batch_size=mbs):
                loss, acc, fgrad, wgrad, m = run_loss(version, mbs)
                torch.testing.assert_close(loss, ref.detach(), rtol=1e-9, atol=1e-10)
                torch.testing.assert_close(fgrad, f.grad, rtol=1e-7, atol=1e-10)
                torch.testing.assert_close(wgrad, ref_matcher.fc.weight.grad, rtol=1e-7, atol=1e-10)
                self.assertEqual(acc.tolist(), (score.argmax(1) == TARGET).double().tolist())
                # the running statistics move once per iteration, by the statistics of all classes
                self.assertEqual(int(m.bn.num_batches_tracked), 1)
                self.assertEqual(int(m.logit_bn.num_batches_tracked), 1)
                self.assertAlmostEqual(m.bn.running_mean.item(), 0.1 * m1.item(), places=12)
                self.assertAlmostEqual(m.bn.running_var.item(), 0.9 + 0.1 * v1.item(), places=12)
                self.assertAlmostEqual(m.logit_bn.running_mean.item(), 0.1 * m2.item(), places=12)
                self.assertAlmostEqual(m.logit_bn.running_var.item(), 0.9 + 0.1 * v2.item(), places=12)

    def test_v11_masks_unseen_classes_and_ignores_chunking(self):
        self.check_version("1.1", VALID.double())

    def test_v10_has_no_mask_and_ignores_chunking(self):
        self.check_version("1.0", torch.ones(NUM_CLASSES, dtype=torch.float64))

    def test_v10_and_v11_differ_only_by_the_mask(self):
        l10, l11 = run_loss("1.0", 2)[0], run_loss("1.1", 2)[0]
        self.assertTrue(torch.all(l10 > l11))  # the empty class 2 adds a positive focal term in 1.0
        f = unit_maps(3, seed=8)
        score, _ = reference_scores(v1_matcher(), f, memory_with_an_empty_class())
        extra = reference_loss(score, TARGET, torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
        torch.testing.assert_close(l10 - l11, extra.detach(), rtol=1e-8, atol=1e-10)


class TestPerChunkClassMemory(unittest.TestCase):
    """1.2 (and 2.0's class memory): one matcher call per chunk, each with its own BN statistics."""

    def test_v12_is_per_chunk_and_depends_on_the_chunk_size(self):
        f = unit_maps(3, seed=8)
        mem = memory_with_an_empty_class()
        for version in ("1.2", "2.0"):
            for mbs, bounds in ((2, [(0, 2), (2, 4), (4, 5)]), (3, [(0, 3), (3, 5)])):
                with self.subTest(version=version, mem_batch_size=mbs):
                    loss, _, _, _, m = run_loss(version, mbs)
                    ref_m = v1_matcher()
                    score = torch.cat([reference_scores(ref_m, f, mem[a:b])[0] for a, b in bounds], dim=1)
                    torch.testing.assert_close(loss, reference_loss(score, TARGET, VALID.double()).detach(),
                                               rtol=1e-9, atol=1e-10)
                    self.assertEqual(int(m.bn.num_batches_tracked), len(bounds))
        self.assertFalse(torch.allclose(run_loss("1.2", 2)[0], run_loss("1.2", 5)[0]))

    def test_engine_passes_the_release(self):
        from argparse import Namespace
        from qaconv.engine import build_criterion
        for version in ("1.0", "1.1", "1.2"):
            args = Namespace(loss="class_memory", mem_batch_size=2, version=version)
            crit = build_criterion(args, v1_matcher(), NUM_CLASSES)
            self.assertEqual((crit.version, crit.mem_batch_size), (version, 2))

    def test_default_version_is_1_2_and_bad_version_raises(self):
        crit = ClassMemoryLoss(v1_matcher(), NUM_CLASSES, C, H, W)
        self.assertEqual(crit.version, "1.2")
        with self.assertRaises(ValueError):
            ClassMemoryLoss(v1_matcher(), NUM_CLASSES, C, H, W, version="2.1")


class Asymmetric(nn.Module):
    """Stand-in matcher with score(p, g) != score(g, p): cosine of the mean vectors plus a probe-only term."""

    def __init__(self):
        super().__init__()
        self.u = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))

    def forward(self, prob, gal):
        a, b = prob.mean(dim=(2, 3)), gal.mean(dim=(2, 3))
        cos = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
        return 3 * cos + 2 * (a @ self.u)[:, None] - 0.5 * (b @ self.u)[None, :]


def asym_score(p, g):
    """Independent float64 value of Asymmetric()(p[None], g[None])."""
    a, b = p.double().mean(dim=(1, 2)), g.double().mean(dim=(1, 2))
    u = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    return 3 * (a @ b) / (a.norm() * b.norm()) + 2 * (a @ u) - 0.5 * (b @ u)


def sigmoid_dist(s):
    return 1 - 1 / (1 + math.exp(-float(s) / 10))


class TestRerankOrientation(unittest.TestCase):
    def setUp(self):
        g = torch.Generator().manual_seed(3)
        self.q = torch.randn(5, C, H, W, generator=g)
        self.g = torch.randn(9, C, H, W, generator=g)
        self.q_recs = [Record(f"q{i}", i % 3 + 1, 0, i) for i in range(5)]
        self.g_recs = [Record(f"g{i}", i % 4 + 1, 1, i) for i in range(9)]

    def reference_full(self, transposed):
        """[[qq, qg], [qg^T, gg]] by hand: qg[i, j] = d(score(q_i, g_j)); qq[i, j] = d(score(q_j, q_i)) when
        transposed (1.0 / 1.1), d(score(q_i, q_j)) otherwise; gg likewise."""
        allmaps = list(self.q) + list(self.g)
        n, nq = len(allmaps), len(self.q)
        full = np.zeros((n, n), dtype=np.float32)
        for i in range(n):
            for j in range(n):
                same_side = (i < nq) == (j < nq)
                a, b = (j, i) if (same_side and transposed) else (i, j)
                if not same_side and i >= nq:  # the qg^T block
                    a, b = j, i
                full[i, j] = sigmoid_dist(asym_score(allmaps[a], allmaps[b]))
        return full

    def evaluate(self, version):
        _, dists = evaluate_qaconv(Asymmetric(), self.q, self.g, self.q_recs, self.g_recs, distance="sigmoid",
                                   do_rerank=True, k1=3, k2=2, prob_batch=2, gal_batch=4, use_cython=False,
                                   return_dists=True, version=version)
        return dists["dist_rerank"]

    def test_v10_v11_transpose_the_self_blocks(self):
        ref_t = k_reciprocal_rerank(self.reference_full(True), 5, k1=3, k2=2)
        ref_n = k_reciprocal_rerank(self.reference_full(False), 5, k1=3, k2=2)
        self.assertGreater(np.abs(ref_t - ref_n).max(), 1e-2)  # the orientation matters on this problem
        for version in ("1.0", "1.1"):
            np.testing.assert_allclose(self.evaluate(version), ref_t, atol=2e-3)
        for version in ("1.2", "2.0", "2.1", None):
            np.testing.assert_allclose(self.evaluate(version), ref_n, atol=2e-3)


if __name__ == "__main__":
    unittest.main()
