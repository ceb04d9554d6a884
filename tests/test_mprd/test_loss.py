"""Memory update, prototype mixing and both losses on hand-computed cases and direct loops."""
import math
import unittest

import numpy as np
import torch
import torch.nn.functional as F

from mprd.loss import contrastive_loss, relative_entropy, relative_prototypes
from mprd.memory import ClusterMemory
from mprd.mixing import mix_prototypes


class FixedRng:
    """Stands in for np.random.RandomState: choice returns the listed values in order."""

    def __init__(self, values):
        self.values = list(values)

    def choice(self, pool):
        v = self.values.pop(0)
        assert v in list(pool)
        return v


class TestMemory(unittest.TestCase):
    def test_hard_instance_update_by_hand(self):
        mem = ClusterMemory(2, 2, momentum=0.5)
        mem.features.copy_(torch.tensor([[1., 0.], [0., 1.]]))
        s = 0.6 ** 2 + 0.8 ** 2
        x = torch.tensor([[1., 0.], [0.6, 0.8], [0., 1.]])
        mem.hard_update(x, torch.tensor([0, 0, 1]))
        # label 0: sims 1.0 and 0.6 -> the hardest is x1; 0.5 [1,0] + 0.5 [0.6,0.8] = [0.8,0.4], renormalised
        torch.testing.assert_close(mem.features[0], torch.tensor([0.8, 0.4]) / math.sqrt(0.8))
        torch.testing.assert_close(mem.features[1], torch.tensor([0., 1.]))
        self.assertAlmostEqual(s, 1.0)

    def test_ties_take_the_first(self):
        mem = ClusterMemory(2, 1, momentum=0.0)
        mem.features.copy_(torch.tensor([[1., 0.]]))
        mem.hard_update(torch.tensor([[0., 1.], [0., -1.]]), torch.tensor([0, 0]))
        torch.testing.assert_close(mem.features[0], torch.tensor([0., 1.]))


class TestMixing(unittest.TestCase):
    def test_sequential_compounding(self):
        memory = torch.tensor([[1., 0.], [0., 1.]])
        bank = torch.tensor([[0., 0.], [1., 1.], [2., 0.], [0., 3.]])
        mixed, drawn = mix_prototypes(memory, bank, [0, 1, 0], [np.array([1]), np.array([3]), np.array([2, 1])],
                                      FixedRng([1, 3, 2]), alpha=0.5)
        # label 0: 0.5*[1,1] + 0.5*[1,0] = [1, .5]; then 0.5*[2,0] + 0.5*[1,.5] = [1.5, .25] (no renormalising)
        torch.testing.assert_close(mixed, torch.tensor([[1.5, 0.25], [0., 2.]]))
        self.assertEqual(drawn, [1, 3, 2])
        torch.testing.assert_close(memory, torch.tensor([[1., 0.], [0., 1.]]))   # M itself untouched


def direct_contrastive(x, y, M, P, H, t, lamb):
    total = 0.0
    for i in range(len(x)):
        o = [float(x[i] @ (P[y[i]] if k == y[i] else M[k])) for k in range(len(M))]
        den = sum(math.exp(v / t) for v in o) + lamb * sum(math.exp(float(x[i] @ h) / t) for h in H[i])
        total -= math.log(math.exp(o[y[i]] / t) / den)
    return total / len(x)


class TestContrastive(unittest.TestCase):
    def test_hand_case(self):
        x = torch.tensor([[1., 0.]])
        M = torch.tensor([[1., 0.], [0., 1.]])
        P = torch.tensor([[0.5, 0.], [0., 1.]])
        H = [torch.tensor([[-1., 0.]])]
        loss = contrastive_loss(x, torch.tensor([0]), M, P, H, temp=1.0, lamb=0.5)
        expect = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(0.0) + 0.5 * math.exp(-1.0)))
        self.assertAlmostEqual(float(loss), expect, places=5)

    def test_against_direct_loop_and_gradient(self):
        g = torch.Generator().manual_seed(0)
        x = F.normalize(torch.randn(5, 4, generator=g), dim=1).requires_grad_(True)
        M = F.normalize(torch.randn(3, 4, generator=g), dim=1)
        P = M + 0.3 * torch.randn(3, 4, generator=g)
        y = torch.tensor([0, 2, 2, 1, 0])
        H = [torch.randn(k, 4, generator=g) for k in (0, 2, 1, 0, 3)]
        loss = contrastive_loss(x, y, M, P, H, temp=0.5, lamb=0.05)
        self.assertAlmostEqual(float(loss.detach()), direct_contrastive(x.detach(), y.tolist(), M, P, H, 0.5, 0.05), places=5)
        loss.backward()
        # gradient of sample i: sum_k g_ik R_k / t with R = M, row y_i replaced by P[y_i] (its own replacement)
        grad = torch.zeros_like(x)
        for i in range(5):
            R = M.clone()
            R[y[i]] = P[y[i]]
            rows = torch.cat([R, H[i]])
            logits = (rows @ x[i].detach()) / 0.5
            w = torch.cat([torch.ones(3), torch.full((len(H[i]),), 0.05)])
            p = w * logits.exp() / (w * logits.exp()).sum()
            onehot = torch.zeros(len(rows))
            onehot[y[i]] = 1
            grad[i] = ((p - onehot) @ rows) / 0.5 / 5
        torch.testing.assert_close(x.grad, grad, rtol=1e-4, atol=1e-6)


class TestRelativeEntropy(unittest.TestCase):
    def test_prototype_table_by_hand(self):
        M = torch.tensor([[1., 0.], [0., 1.], [1., 1.]]) / torch.tensor([[1.], [1.], [2 ** 0.5]])
        bank = torch.tensor([[1., 0.], [0.6, 0.8], [0.8, 0.6], [0., 1.]])
        feats = torch.tensor([[1., 0.]])
        # positives {1, 2}: least similar to [1,0] is bank[1] (0.6 < 0.8)
        # hard negative f_h=[1,0] with label 1 (a cluster other than 0); a second with label 5 >= K is skipped
        hn = [torch.tensor([[1., 0.], [0., 1.]])]
        table = relative_prototypes(M, bank, feats, [0], [np.array([1, 2])], hn, [np.array([1, 5])], mix=0.5)
        torch.testing.assert_close(table[0], F.normalize(0.5 * bank[1] + 0.5 * M[0], dim=0))
        torch.testing.assert_close(table[1], torch.tensor([1., 1.]) / 2 ** 0.5)
        torch.testing.assert_close(table[2], M[2])

    def test_kl_direct(self):
        g = torch.Generator().manual_seed(1)
        x, f = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
        Rq, Rp = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
        loss = relative_entropy(x, f, Rq, Rp, temp=0.7)
        total = 0.0
        for i in range(3):
            p = np.exp((Rq @ x[i]).numpy() / 0.7)
            p /= p.sum()
            q = np.exp((Rp @ f[i]).numpy() / 0.7)
            q /= q.sum()
            total += float((p * np.log(p / q)).sum())
        self.assertAlmostEqual(float(loss), total / 3, places=5)
        self.assertAlmostEqual(float(relative_entropy(x, x, Rq, Rq)), 0.0, places=6)


if __name__ == "__main__":
    unittest.main()
