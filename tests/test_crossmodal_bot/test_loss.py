"""Losses against hand-computed numbers."""
import math
import unittest

import torch
import torch.nn.functional as F

from crossmodal_bot.loss import CenterLoss, CrossEntropyLabelSmooth, TripletLoss, build_loss, euclidean_dist


class TestLabelSmoothing(unittest.TestCase):
    def test_hand_computed(self):
        # row 0: softmax = (0.25, 0.5, 0.25), label 1; row 1: softmax = (0.6, 0.2, 0.2), label 2; K = 3, eps = 0.1
        logits = torch.tensor([[0.0, math.log(2.0), 0.0], [math.log(3.0), 0.0, 0.0]])
        targets = torch.tensor([1, 2])
        q_true, q_other = 1 - 2 / 3 * 0.1, 0.1 / 3
        l0 = -(q_true * math.log(0.5) + 2 * q_other * math.log(0.25))
        l1 = -(q_true * math.log(0.2) + q_other * math.log(0.6) + q_other * math.log(0.2))
        got = CrossEntropyLabelSmooth(3, epsilon=0.1)(logits, targets).item()
        self.assertAlmostEqual(got, (l0 + l1) / 2, places=6)
        # = (0.9333*0.6931 + 0.0667*1.3863 + 0.9333*1.6094 + 0.0333*0.5108 + 0.0333*1.6094) / 2
        self.assertAlmostEqual(got, 1.1560872, places=5)

    def test_zero_epsilon_is_cross_entropy(self):
        torch.manual_seed(0)
        logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
        self.assertAlmostEqual(CrossEntropyLabelSmooth(4, 0.0)(logits, targets).item(),
                               F.cross_entropy(logits, targets).item(), places=6)


# ids 0: (0,0), (4,0); ids 1: (0,3), (6,3). Distances: d01=4, d02=3, d03=sqrt45, d12=5, d13=sqrt13, d23=6.
FEATS = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [6.0, 3.0]])
LABELS = torch.tensor([0, 0, 1, 1])
AP = [4.0, 4.0, 6.0, 6.0]
AN = [3.0, math.sqrt(13), 3.0, math.sqrt(13)]


class TestTriplet(unittest.TestCase):
    def test_euclidean_not_squared(self):
        d = euclidean_dist(FEATS, FEATS)
        self.assertAlmostEqual(d[0, 3].item(), math.sqrt(45), places=5)
        self.assertAlmostEqual(d[1, 2].item(), 5.0, places=5)
        self.assertAlmostEqual(d[0, 0].item(), 1e-6, places=7)  # clamp(1e-12) before sqrt

    def test_batch_hard_with_margin(self):
        loss, dist_ap, dist_an = TripletLoss(margin=0.3)(FEATS, LABELS)
        torch.testing.assert_close(dist_ap, torch.tensor(AP), atol=1e-5, rtol=0)
        torch.testing.assert_close(dist_an, torch.tensor(AN), atol=1e-5, rtol=0)
        # anchors: 4-3+.3=1.3, 4-sqrt13+.3=0.6944, 6-3+.3=3.3, 6-sqrt13+.3=2.6944
        expected = sum(max(0.0, ap - an + 0.3) for ap, an in zip(AP, AN)) / 4
        self.assertAlmostEqual(loss.item(), expected, places=5)
        self.assertAlmostEqual(loss.item(), 1.99722, places=4)

    def test_order_and_uneven_ids_do_not_matter(self):
        perm = torch.tensor([2, 0, 3, 1])
        loss, _, _ = TripletLoss(0.3)(FEATS[perm], LABELS[perm])
        self.assertAlmostEqual(loss.item(), 1.99722, places=4)
        # a third id with a single sample far away: its anchor has ap ~ 0 and an = min distance
        feats = torch.cat([FEATS, torch.tensor([[100.0, 0.0]])])
        loss, ap, an = TripletLoss(0.3)(feats, torch.tensor([0, 0, 1, 1, 2]))
        self.assertAlmostEqual(an[4].item(), math.hypot(94.0, 3.0), places=3)
        self.assertLess(ap[4].item(), 1e-5)

    def test_margin_satisfied_gives_zero(self):
        feats = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
        loss, _, _ = TripletLoss(0.3)(feats, LABELS)
        self.assertEqual(loss.item(), 0.0)

    def test_soft_margin(self):
        loss, _, _ = TripletLoss(margin=None)(FEATS, LABELS)
        expected = sum(math.log1p(math.exp(ap - an)) for ap, an in zip(AP, AN)) / 4
        self.assertAlmostEqual(loss.item(), expected, places=5)

    def test_gradient_finite_with_identical_features(self):
        feats = torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [3.0, 4.0]], requires_grad=True)
        loss, _, _ = TripletLoss(0.3)(feats, torch.tensor([0, 1, 0, 1]))
        loss.backward()
        self.assertTrue(torch.isfinite(feats.grad).all())


class TestCenterAndCombination(unittest.TestCase):
    def test_center_loss(self):
        crit = CenterLoss(num_classes=2, feat_dim=2)
        with torch.no_grad():
            crit.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        feats = torch.tensor([[3.0, 4.0], [1.0, 2.0]])  # squared distances 25 and 1
        self.assertAlmostEqual(crit(feats, torch.tensor([0, 1])).item(), 13.0, places=5)

    def test_build_loss_sums_parts(self):
        torch.manual_seed(0)
        logits, feat = torch.randn(4, 3), torch.randn(4, 8)
        labels = torch.tensor([0, 0, 2, 2])
        crit = build_loss(3, margin=0.3, epsilon=0.1)
        loss, parts = crit(logits, feat, labels)
        ce = CrossEntropyLabelSmooth(3, 0.1)(logits, labels)
        tri = TripletLoss(0.3)(feat, labels)[0]
        self.assertAlmostEqual(loss.item(), (ce + tri).item(), places=5)
        self.assertEqual(set(parts), {"ce", "triplet", "tri_acc"})
        crit_c = build_loss(3, center_weight=5e-4, feat_dim=8)
        loss_c, parts_c = crit_c(logits, feat, labels)
        expected = (ce + tri + 5e-4 * crit_c.center(feat, labels)).item()
        self.assertAlmostEqual(loss_c.item(), expected, places=5)
        self.assertIn("center", parts_c)
        self.assertIsNone(build_loss(3, margin=0.0).triplet.margin)  # margin <= 0 -> soft margin


if __name__ == "__main__":
    unittest.main()
