"""Triplet, pairwise matching and class-memory losses on hand-computed score matrices (stub matchers), plus
end-to-end runs with the real QAConv matcher."""
import copy
import math
import unittest

import torch
import torch.nn.functional as F
from torch import nn

from qaconv.loss import ClassMemoryLoss, PairwiseMatchingLoss, TripletLoss
from qaconv.qaconv import QAConv

# rows: samples with labels [0, 0, 1, 1]
S = [[9.0, 5.0, 3.0, 1.0],
     [4.0, 9.0, 6.0, 2.0],
     [2.0, 0.0, 9.0, 7.0],
     [1.0, 8.0, 3.0, 9.0]]
LN3 = math.log(3.0)


class FixedScores(nn.Module):
    """Returns a fixed score matrix (a parameter, to check gradients); records the gallery inputs it got.

    For column chunks (class memory), call k returns the next ``gal.size(0)`` columns.
    """

    def __init__(self, score):
        super().__init__()
        self.score = nn.Parameter(torch.tensor(score))
        self.galleries, self.offset = [], 0

    def forward(self, prob, gal):
        self.galleries.append(gal)
        n = gal.size(0)
        out = self.score[:, self.offset:self.offset + n]
        self.offset = (self.offset + n) % self.score.size(1)
        return out

    def reset_running_stats(self):
        pass


def feats(n, c=4, h=2, w=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, c, h, w, generator=g), dim=1)


class TestTriplet(unittest.TestCase):
    def test_hand_case_margin_16(self):
        crit = TripletLoss(FixedScores(S))
        loss, acc = crit(feats(4), torch.tensor([0, 0, 1, 1]))
        # min_pos = [5, 4, 7, 3]; max_neg = [3, 6, 2, 8]
        self.assertEqual(loss.tolist(), [14.0, 18.0, 11.0, 21.0])
        self.assertEqual(acc.tolist(), [1.0, 0.0, 1.0, 0.0])
        loss.sum().backward()
        grad = crit.matcher.score.grad
        expected = torch.zeros(4, 4)
        for i, (pos, neg) in enumerate([(1, 2), (0, 2), (3, 0), (2, 1)]):
            expected[i, pos], expected[i, neg] = -1.0, 1.0
        self.assertTrue(torch.equal(grad, expected))

    def test_hinge_and_tie(self):
        crit = TripletLoss(FixedScores(S), margin=1.0)
        loss, _ = crit(feats(4), torch.tensor([0, 0, 1, 1]))
        self.assertEqual(loss.tolist(), [0.0, 3.0, 0.0, 6.0])
        tie = [[0.0, 2.0, 2.0], [2.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
        _, acc = TripletLoss(FixedScores(tie))(feats(3), torch.tensor([0, 0, 1]))
        self.assertEqual(acc[0].item(), 1.0)  # min_pos == max_neg counts as correct (>=)

    def test_singleton_class_gives_zero_loss(self):
        loss, acc = TripletLoss(FixedScores(S))(feats(4), torch.tensor([0, 0, 1, 2]))
        self.assertEqual(loss[2].item(), 0.0)
        self.assertEqual(loss[3].item(), 0.0)
        self.assertEqual(acc[2].item(), 1.0)
        self.assertTrue(torch.isfinite(loss).all())
        self.assertEqual(loss[0].item(), 16.0 + 3.0 - 5.0)

    def test_end_to_end_with_qaconv(self):
        torch.manual_seed(0)
        matcher = QAConv(4, 2, 1).train()
        ref_matcher = copy.deepcopy(matcher)
        f = feats(6, seed=3).requires_grad_()
        target = torch.tensor([0, 0, 1, 1, 2, 2])
        loss, acc = TripletLoss(matcher)(f, target)
        with torch.no_grad():
            s = ref_matcher(f, f).tolist()
        for i in range(6):
            pos = min(s[i][j] for j in range(6) if j != i and target[j] == target[i])
            neg = max(s[i][j] for j in range(6) if target[j] != target[i])
            self.assertAlmostEqual(loss[i].item(), max(0.0, neg - pos + 16.0), places=4)
            self.assertEqual(acc[i].item(), float(pos >= neg))
        loss.mean().backward()
        self.assertTrue(f.grad.abs().sum() > 0)
        self.assertTrue(all(p.grad is not None for p in matcher.parameters()))
        self.assertEqual(sorted(TripletLoss(matcher).state_dict())[:2],
                         ["matcher.bn.bias", "matcher.bn.num_batches_tracked"])


class TestPairwise(unittest.TestCase):
    def test_hand_case(self):
        score = [[0.0, LN3, -LN3], [LN3, 0.0, 0.0], [0.0, LN3, 0.0]]
        loss, acc = PairwiseMatchingLoss(FixedScores(score))(feats(3), torch.tensor([0, 0, 1]))
        # BCE(s, 1) = ln(1 + e^-s); BCE(s, 0) = ln(1 + e^s); ln(1 + 3) = ln 4, ln(1 + 1/3) = ln(4/3)
        ln2, ln4, ln43 = math.log(2), math.log(4), math.log(4 / 3)
        expected = [ln2 + ln43 + ln43, ln43 + ln2 + ln2, ln2 + ln4 + ln2]
        for got, exp in zip(loss.tolist(), expected):
            self.assertAlmostEqual(got, exp, places=6)
        # row 0: pos ln3 > neg -ln3; row 1: pos ln3 > neg 0; row 2: no other positive (1e15) > max neg ln3
        self.assertEqual(acc.tolist(), [1.0, 1.0, 1.0])

    def test_acc_strict(self):
        tie = [[0.0, 2.0, 2.0], [2.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
        _, acc = PairwiseMatchingLoss(FixedScores(tie))(feats(3), torch.tensor([0, 0, 1]))
        self.assertEqual(acc.tolist(), [0.0, 1.0, 1.0])
        _, acc = PairwiseMatchingLoss(FixedScores(S))(feats(4), torch.tensor([0, 0, 1, 1]))
        self.assertEqual(acc.tolist(), [1.0, 0.0, 1.0, 0.0])


class TestClassMemory(unittest.TestCase):
    def test_masked_classes_contribute_zero_and_memory_update(self):
        score = [[0.0, LN3, 5.0, 0.0, 1.0], [0.0, 0.0, 0.0, LN3, 0.0], [LN3, 0.0, 0.0, 0.0, 0.0]]
        stub = FixedScores(score)
        crit = ClassMemoryLoss(stub, num_classes=5, num_features=4, height=2, width=1, mem_batch_size=2)
        f = feats(3, seed=1)
        target = torch.tensor([1, 3, 1])
        loss, acc = crit(f, target)
        self.assertEqual(loss.tolist(), [0.0, 0.0, 0.0])  # no valid class yet
        self.assertEqual(acc.tolist(), [0.0, 1.0, 0.0])  # row argmaxes: classes 2, 3, 0
        self.assertEqual([g.size(0) for g in stub.galleries], [2, 2, 1])  # three chunked matcher calls
        self.assertTrue(all(not g.requires_grad for g in stub.galleries))
        self.assertTrue(torch.equal(crit.class_memory[1], f[2]))  # last occurrence of class 1 wins
        self.assertTrue(torch.equal(crit.class_memory[3], f[1]))
        self.assertEqual(crit.class_memory[[0, 2, 4]].abs().sum().item(), 0.0)
        self.assertEqual(crit.valid_class.tolist(), [0.0, 1.0, 0.0, 1.0, 0.0])
        self.assertEqual(stub.galleries[0].abs().sum().item(), 0.0)  # scores used the memory before the update

        loss, _ = crit(f, target)
        # only classes 1 and 3 count. s = 0: BCE ln2, weight 1/4 either way. s = ln3 (p = 3/4): y = 1 -> BCE ln(4/3),
        # weight 1/16; y = 0 -> BCE ln4, weight 9/16.
        ln2, ln4, ln43 = math.log(2), math.log(4), math.log(4 / 3)
        expected = [ln43 / 16 + ln2 / 4,        # row 0 (class 1): s1 = ln3 (true), s3 = 0
                    ln2 / 4 + ln43 / 16,        # row 1 (class 3): s1 = 0, s3 = ln3 (true)
                    ln2 / 4 + ln2 / 4]          # row 2 (class 1): s1 = 0 (true), s3 = 0
        for got, exp in zip(loss.tolist(), expected):
            self.assertAlmostEqual(got, exp, places=6)
        crit.valid_class[0] = 1.0  # a valid negative class with s = ln3 (row 2) adds 9/16 ln4
        loss, _ = crit(f, target)
        self.assertAlmostEqual(loss[2].item(), ln2 / 2 + 9 / 16 * ln4, places=6)
        self.assertAlmostEqual(loss[0].item(), expected[0] + ln2 / 4, places=6)

    def test_focal_weight_keeps_gradient(self):
        crit = ClassMemoryLoss(FixedScores([[0.5, -1.0]]), 2, 4, 2, 1, mem_batch_size=16)
        crit.valid_class.fill_(1.0)
        loss, _ = crit(feats(1), torch.tensor([0]))
        loss.sum().backward()
        s = torch.tensor([0.5, -1.0], requires_grad=True)
        p = s.sigmoid()
        ref = (F.softplus(-s[0]) * (1 - p[0]) ** 2 + F.softplus(s[1]) * p[1] ** 2)
        ref.backward()
        self.assertTrue(torch.allclose(crit.matcher.score.grad[0], s.grad, atol=1e-6))

    def test_end_to_end_chunks_are_separate_matcher_calls(self):
        torch.manual_seed(0)
        matcher = QAConv(4, 2, 1).train()
        crit = ClassMemoryLoss(matcher, num_classes=5, num_features=4, height=2, width=1, mem_batch_size=2)
        crit.class_memory.copy_(feats(5, seed=7))
        crit.valid_class.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
        ref = copy.deepcopy(matcher)
        f, target = feats(3, seed=8), torch.tensor([4, 0, 2])
        loss, acc = crit(f, target)
        with torch.no_grad():
            mem = feats(5, seed=7)
            s = torch.cat([ref(f, mem[0:2]), ref(f, mem[2:4]), ref(f, mem[4:5])], dim=1)
        self.assertEqual(int(matcher.bn.num_batches_tracked), 3)
        for i in range(3):
            total = 0.0
            for k in range(5):
                sk, y = s[i, k].item(), float(k == target[i].item())
                p = 1 / (1 + math.exp(-sk))
                bce = math.log1p(math.exp(-sk)) if y else math.log1p(math.exp(sk))
                total += crit.valid_class[k].item() * bce * ((1 - p) ** 2 if y else p ** 2) if k != 2 else 0.0
            self.assertAlmostEqual(loss[i].item(), total, places=5)
            self.assertEqual(acc[i].item(), float(s[i].argmax().item() == target[i].item()))
        self.assertTrue(torch.equal(crit.class_memory[2], f[2]))
        self.assertEqual(crit.valid_class.tolist(), [1.0] * 5)

    def test_state_dict_and_reset(self):
        crit = ClassMemoryLoss(QAConv(4, 2, 1), 3, 4, 2, 1)
        keys = crit.state_dict()
        self.assertIn("class_memory", keys)
        self.assertIn("valid_class", keys)
        self.assertIn("matcher.fc.weight", keys)
        crit.class_memory.fill_(1.0)
        crit.valid_class.fill_(1.0)
        crit.matcher.bn.running_mean.fill_(3.0)
        crit.reset()
        self.assertEqual(crit.class_memory.abs().sum().item() + crit.valid_class.sum().item(), 0.0)
        self.assertEqual(crit.matcher.bn.running_mean.item(), 3.0)
        crit.reset_running_stats()
        self.assertEqual(crit.matcher.bn.running_mean.item(), 0.0)


if __name__ == "__main__":
    unittest.main()
