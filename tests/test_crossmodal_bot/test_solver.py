"""Optimizer groups and the warm-up multi-step schedule against hand-computed learning rates."""
import unittest

import torch
from torch import nn

from crossmodal_bot.solver import WarmupMultiStepLR, build_optimizer

BASE = 3.5e-4
# epoch -> lr: warm-up base*(0.01*(1-e/10) + e/10); then x0.1 at 40, x0.01 at 70
EXPECTED = {0: 3.5e-6, 5: 3.5e-4 * 0.505, 9: 3.5e-4 * 0.901, 10: 3.5e-4, 39: 3.5e-4, 40: 3.5e-5, 69: 3.5e-5,
            70: 3.5e-6, 119: 3.5e-6}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.bias.requires_grad_(False)


def make(bias_lr_factor=1.0):
    model = Tiny()
    opt = build_optimizer(model, lr=BASE, weight_decay=5e-4, bias_lr_factor=bias_lr_factor,
                          weight_decay_bias=1e-3)
    return model, opt, WarmupMultiStepLR(opt, milestones=(40, 70), gamma=0.1, warmup_factor=0.01, warmup_iters=10)


def lrs(opt, sched, epochs):
    out = []
    for _ in range(epochs):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


class TestOptimizer(unittest.TestCase):
    def test_groups(self):
        opt = build_optimizer(Tiny(), lr=BASE, weight_decay=5e-4, bias_lr_factor=2.0, weight_decay_bias=1e-3)
        self.assertIsInstance(opt, torch.optim.Adam)
        by_name = {g["name"]: g for g in opt.param_groups}
        self.assertEqual(set(by_name), {"fc.weight", "fc.bias", "frozen.weight"})  # frozen.bias left out
        self.assertEqual((by_name["fc.weight"]["lr"], by_name["fc.weight"]["weight_decay"]), (BASE, 5e-4))
        self.assertEqual((by_name["fc.bias"]["lr"], by_name["fc.bias"]["weight_decay"]), (2 * BASE, 1e-3))
        sgd = build_optimizer(Tiny(), optimizer="SGD")
        self.assertIsInstance(sgd, torch.optim.SGD)
        self.assertEqual(sgd.param_groups[0]["momentum"], 0.9)


class TestSchedule(unittest.TestCase):
    def test_hand_computed_lrs(self):
        _, opt, sched = make(bias_lr_factor=2.0)
        self.assertIsInstance(sched, torch.optim.lr_scheduler.LRScheduler)
        history = lrs(opt, sched, 120)
        for epoch, lr in EXPECTED.items():
            self.assertAlmostEqual(history[epoch][0] / lr, 1.0, places=9, msg=f"epoch {epoch}")
            self.assertAlmostEqual(history[epoch][1] / (2 * lr), 1.0, places=9, msg=f"bias, epoch {epoch}")

    def test_constant_warmup(self):
        _, opt, _ = make()
        sched = WarmupMultiStepLR(opt, milestones=(4,), warmup_factor=0.1, warmup_iters=3, warmup_method="constant")
        got = [h[0] for h in lrs(opt, sched, 6)]
        want = [BASE * 0.1] * 3 + [BASE, BASE * 0.1, BASE * 0.1]
        for g, w in zip(got, want):
            self.assertAlmostEqual(g / w, 1.0, places=9)

    def test_state_dict_round_trip(self):
        _, opt, sched = make()
        full = lrs(opt, sched, 60)
        _, opt1, sched1 = make()
        lrs(opt1, sched1, 45)
        state = {"opt": opt1.state_dict(), "sched": sched1.state_dict()}
        _, opt2, sched2 = make()
        opt2.load_state_dict(state["opt"])
        sched2.load_state_dict(state["sched"])
        self.assertEqual(sched2.last_epoch, 45)
        self.assertEqual(sched2.milestones, [40, 70])
        resumed = lrs(opt2, sched2, 15)
        for a, b in zip(resumed, full[45:]):
            self.assertAlmostEqual(a[0], b[0], places=15)

    def test_rejects_unsorted_milestones(self):
        _, opt, _ = make()
        with self.assertRaises(ValueError):
            WarmupMultiStepLR(opt, milestones=(70, 40))


if __name__ == "__main__":
    unittest.main()
