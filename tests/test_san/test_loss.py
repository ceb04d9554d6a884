"""SAN losses against hand-worked cases and direct loops written from the spec (§5, §10a-5/7/8/9)."""
import math
import unittest

import torch

from common.errors import ReidError
from san.loss import (BatchHardTriplet, CrossEntropyLabelSmooth, check_identity_groups, reconstruction_loss,
                      tr_triplets, triplet_reconstruction_loss)


def constant_maps(values, shape=(2, 3, 2)):
    """(B, *shape) maps, map b constant at values[b]."""
    v = torch.tensor(values, dtype=torch.float32)
    return v.view(-1, 1, 1, 1).expand(len(values), *shape).clone()


class TestReidLosses(unittest.TestCase):
    def test_label_smoothing(self):
        n = 7
        self.assertAlmostEqual(CrossEntropyLabelSmooth(n, 0.1)(torch.zeros(3, n), torch.tensor([0, 1, 2])).item(),
                               math.log(n), places=5)
        logits = torch.tensor([[2.0, 0.0, -1.0]])
        p = torch.softmax(logits, 1)[0]
        eps = 0.1
        ref = -(1 - eps) * math.log(p[1]) - eps / 3 * sum(math.log(x) for x in p)
        self.assertAlmostEqual(CrossEntropyLabelSmooth(3, eps)(logits, torch.tensor([1])).item(), ref, places=5)

    def test_batch_hard_by_hand(self):
        # ids a, a, b, b on a line at 0, 1, 3, 6: d_ap = 1, 1, 3, 3; d_an = 3, 2, 2, 5
        x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
        loss, d_ap, d_an = BatchHardTriplet(0.3)(x, torch.tensor([0, 0, 1, 1]))
        torch.testing.assert_close(d_ap, torch.tensor([1.0, 1.0, 3.0, 3.0]), atol=1e-4, rtol=0)
        torch.testing.assert_close(d_an, torch.tensor([3.0, 2.0, 2.0, 5.0]), atol=1e-4, rtol=0)
        self.assertAlmostEqual(loss.item(), (0 + 0 + 1.3 + 0) / 4, places=4)
        # a lone identity: the anchor itself is the positive at distance 1e-6
        _, d_ap, _ = BatchHardTriplet()(torch.tensor([[0.0], [2.0]]), torch.tensor([0, 1]))
        self.assertAlmostEqual(d_ap[0].item(), 1e-6, places=9)

    def test_reconstruction(self):
        self.assertAlmostEqual(reconstruction_loss(torch.full((2, 3, 4, 8), 0.5), torch.zeros(2, 3, 4, 8)).item(),
                               0.5)
        with self.assertRaises(ReidError):
            reconstruction_loss(torch.zeros(1, 3, 4, 8), torch.zeros(1, 3, 4, 4))


class TestTripletReconstruction(unittest.TestCase):
    def test_indices_k4(self):
        lv = tr_triplets(12, 4)  # P = 3: group starts 0 and 4
        self.assertEqual(lv[0], [(0, 1, 0, 4), (4, 5, 4, 8)])
        self.assertEqual(lv[1], [(1, 2, 1, 5), (5, 6, 5, 9)])
        self.assertEqual(lv[2], [(2, 3, 2, 6), (6, 7, 6, 10)])
        self.assertEqual(lv[3], [(0, 3, 3, 4), (4, 7, 7, 8)])  # level 4's negative is anchored on i + 3
        self.assertEqual(len(tr_triplets(64, 4)[0]), 15)  # B 64, K 4 -> 15 groups, 60 terms

    def test_value_by_hand(self):
        # B = 8 (2 ids x 4). Map b is constant c_b, so d(a, b) = (c_a - c_b)^2 (MSE over all elements).
        c = [0.0, 0.1, 0.3, 0.2, 1.0, 0.5, 0.2, 0.9]
        maps = [constant_maps(c, s) for s in ((4, 2, 1), (2, 4, 2), (1, 8, 4), (1, 16, 8))]
        pids = torch.tensor([3, 3, 3, 3, 9, 9, 9, 9])
        # group 0 only (the last group is never an anchor group):
        # L1: d(0,1) - d(0,4) + .3 = .01 - 1 + .3 < 0 -> 0
        # L2: d(1,2) - d(1,5) + .3 = .04 - .16 + .3 = .18
        # L3: d(2,3) - d(2,6) + .3 = .01 - .01 + .3 = .30
        # L4: d(0,3) - d(3,4) + .3 = .04 - .64 + .3 < 0 -> 0
        loss = triplet_reconstruction_loss(maps, pids)
        self.assertAlmostEqual(loss.item(), 0.18 + 0.30, places=5)

    def test_direct_loop_and_gradients(self):
        torch.manual_seed(0)
        b, k = 16, 4
        maps = [torch.randn(b, 3, 2, 2, requires_grad=True) * 0.5 for _ in range(4)]
        pids = torch.arange(b // k).repeat_interleave(k) * 7 + 1
        loss = triplet_reconstruction_loss(maps, pids)
        d = lambda x, i, j: ((x[i] - x[j]) ** 2).mean()  # noqa: E731
        ref = 0.0
        for i in range(0, (b // k - 1) * k, k):
            ref += max(d(maps[0], i, i + 1) - d(maps[0], i, i + 4) + 0.3, 0.0)
            ref += max(d(maps[1], i + 1, i + 2) - d(maps[1], i + 1, i + 5) + 0.3, 0.0)
            ref += max(d(maps[2], i + 2, i + 3) - d(maps[2], i + 2, i + 6) + 0.3, 0.0)
            ref += max(d(maps[3], i, i + 3) - d(maps[3], i + 3, i + 4) + 0.3, 0.0)
        self.assertAlmostEqual(loss.item(), float(ref.detach()), places=5)
        # an inactive hinge gives exactly zero gradient: push every negative far away
        far = [m.detach().clone() for m in maps]
        for m in far:
            for g in range(b // k):
                m[g * k:(g + 1) * k] += 100.0 * g
            m.requires_grad_(True)
        loss = triplet_reconstruction_loss(far, pids)
        loss.backward()
        self.assertEqual(loss.item(), 0.0)
        for m in far:
            self.assertTrue(m.grad is None or m.grad.abs().sum().item() == 0.0)

    def test_grouping_checked(self):
        maps = [torch.zeros(8, 1, 1, 1)] * 4
        with self.assertRaisesRegex(ReidError, "identity-grouped"):
            triplet_reconstruction_loss(maps, torch.tensor([0, 1, 0, 1, 2, 3, 2, 3]))
        with self.assertRaisesRegex(ReidError, "adjacent"):
            check_identity_groups(torch.tensor([0] * 8))
        with self.assertRaisesRegex(ReidError, "2 identity groups"):
            check_identity_groups(torch.tensor([0] * 4))
        with self.assertRaisesRegex(ReidError, ">= 4"):
            check_identity_groups(torch.tensor([0, 0, 1, 1]), k=2)
        check_identity_groups(torch.tensor([5] * 4 + [2] * 4 + [5] * 4))  # distinct neighbours suffice

    def test_general_k_reduces(self):
        self.assertEqual(tr_triplets(12, 6)[0], [(0, 1, 0, 6)])
        self.assertEqual(tr_triplets(12, 6)[3], [(0, 3, 3, 6)])


if __name__ == "__main__":
    unittest.main()
