"""MuDeep v2 loss on hand-worked cases and its sampler's batch structure."""
import math
import unittest

import torch

from mudeep.loss import MuDeepLoss, trip_hard
from mudeep.sampler import MuDeepSampler, iterations_per_epoch


class TestTriplet(unittest.TestCase):
    def test_spec_cases(self):
        f = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
        d_pos, d_neg = trip_hard(f, k=2)
        self.assertTrue(torch.allclose(d_pos, torch.full((4,), 1e-4)))
        self.assertTrue(torch.allclose(d_neg, torch.full((4,), math.sqrt(2)), atol=1e-6))
        loss = MuDeepLoss(margin=1.0, k=2)
        zeros = [torch.zeros(4, 3)] * 12
        labels = torch.tensor([0, 0, 1, 1])
        _, parts = loss(zeros, [f, 5 * f, 0.1 * f], labels)
        self.assertAlmostEqual(float(parts["loss_Tri"]), 0.0, places=6)
        same = torch.ones(4, 2)
        _, parts = loss(zeros, [same] * 3, labels)
        self.assertAlmostEqual(float(parts["loss_Tri"]), 3.0, places=5)  # margin per scale

    def test_block_mining_ignores_labels_label_mining_does_not(self):
        f = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1]])
        labels = torch.tensor([0, 1, 0, 1])  # blocks (0,1) / (2,3) disagree with the labels
        a = trip_hard(f, k=2)
        b = trip_hard(f, k=2, labels=None)
        self.assertTrue(torch.equal(a[0], b[0]))
        d = [[math.sqrt(sum((x - y) ** 2 for x, y in zip(u, v)) + 1e-8) for v in torch.nn.functional.normalize(
            f, dim=1).tolist()] for u in torch.nn.functional.normalize(f, dim=1).tolist()]
        for i in range(4):
            blk = [j for j in range(4) if j // 2 == i // 2]
            self.assertAlmostEqual(float(a[0][i]), max(d[i][j] for j in blk), places=6)
            self.assertAlmostEqual(float(a[1][i]), min(d[i][j] for j in range(4) if j not in blk), places=6)
            same = [j for j in range(4) if labels[j] == labels[i]]
            lp, ln = trip_hard(f, labels=labels)
            self.assertAlmostEqual(float(lp[i]), max(d[i][j] for j in same), places=6)
            self.assertAlmostEqual(float(ln[i]), min(d[i][j] for j in range(4) if j not in same), places=6)

    def test_total_by_hand(self):
        torch.manual_seed(0)
        logits = [torch.randn(4, 3) for _ in range(12)]
        labels = torch.tensor([2, 2, 0, 0])
        f = [torch.rand(4, 5) for _ in range(3)]
        total, parts = MuDeepLoss(margin=1.0, k=2)(logits, f, labels)
        ce = 0.0
        for z in logits:
            for i in range(4):
                row = z[i].tolist()
                ce += (math.log(sum(math.exp(v) for v in row)) - row[int(labels[i])]) / 4
        tri = 0.0
        for feat in f:
            n = torch.nn.functional.normalize(feat, dim=1).tolist()
            for i in range(4):
                d = [math.sqrt(sum((x - y) ** 2 for x, y in zip(n[i], n[j])) + 1e-8) for j in range(4)]
                blk = [j for j in range(4) if j // 2 == i // 2]
                tri += max(0.0, max(d[j] for j in blk) - min(d[j] for j in range(4) if j not in blk) + 1.0) / 4
        self.assertAlmostEqual(float(parts["loss_CEL"]), ce / 4, places=5)
        self.assertAlmostEqual(float(parts["loss_Tri"]), tri, places=5)
        self.assertAlmostEqual(float(total), 0.5 * ce + tri, places=5)  # half the sum of the 12 CEs + triplets


class TestSampler(unittest.TestCase):
    def setUp(self):
        # 5 ids: id 3 has only 2 images (sampled with replacement), the others 7..10
        self.pids = [0] * 7 + [1] * 8 + [2] * 9 + [3] * 2 + [4] * 10

    def test_structure(self):
        s = MuDeepSampler(self.pids, k=4, repeat=3, seed=1)
        idx = s.indices()
        self.assertEqual(len(idx), 3 * 5 * 4)
        self.assertEqual(len(s), len(idx))
        blocks = [idx[i:i + 4] for i in range(0, len(idx), 4)]
        labels = []
        for b in blocks:
            ids = {self.pids[i] for i in b}
            self.assertEqual(len(ids), 1)
            pid = ids.pop()
            labels.append(pid)
            if pid != 3:
                self.assertEqual(len(set(b)), 4)  # without replacement
        for r in range(3):
            self.assertEqual(sorted(labels[5 * r:5 * r + 5]), [0, 1, 2, 3, 4])
        self.assertEqual(s.num_short, 1)

    def test_epoch_order_is_reproducible(self):
        a, b = MuDeepSampler(self.pids, 4, seed=1), MuDeepSampler(self.pids, 4, seed=1)
        a.set_epoch(2)
        b.set_epoch(2)
        self.assertEqual(a.indices(), b.indices())
        self.assertNotEqual(a.indices(), a.indices(epoch=3))

    def test_iterations(self):
        self.assertEqual(iterations_per_epoch(751, 12, 6), 187)
        loader = torch.utils.data.DataLoader(list(range(len(self.pids))), batch_size=2 * 4, drop_last=True,
                                             sampler=MuDeepSampler(self.pids, 4, seed=0))
        batches = list(loader)
        self.assertEqual(len(batches), iterations_per_epoch(5, 2, 4))
        for batch in batches:
            lab = [self.pids[int(i)] for i in batch]
            self.assertEqual(len(set(lab[:4])), 1)
            self.assertEqual(len(set(lab[4:])), 1)


if __name__ == "__main__":
    unittest.main()
