"""QAConv training pieces: adaptive and step schedules, random occlusion, per-version presets, the epoch loop
(finite-loss filtering, clipping, frozen BN) and the pre-training trials. Expected values worked out by hand."""
import unittest

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.errors import ReidError

from qaconv import transforms as QT
from qaconv.trainer import AdaptiveSchedule, StepSchedule, pretrain_trials, train_one_epoch


def sgd(params, lr=1.0):
    return torch.optim.SGD(params, lr=lr)


class TestAdaptiveSchedule(unittest.TestCase):
    def test_dynamic_decay_and_final_epochs(self):
        opt = sgd([nn.Parameter(torch.zeros(1))], lr=1.0)
        s = AdaptiveSchedule(step_factor=0.7, max_epochs=60)
        # base loss = epoch 2's (8.0); 0.7 * 8 = 5.6: epoch 3 (7.0) no, epoch 4 (5.5) yes -> final 4 + 4 // 2 = 6
        stops = [s.step(e, loss, opt) for e, loss in [(1, 10.0), (2, 8.0), (3, 7.0), (4, 5.5)]]
        self.assertEqual(stops, [False, False, False, False])
        self.assertEqual((s.base_loss, s.lr_stepped, s.final_epochs), (8.0, True, 6))
        self.assertAlmostEqual(opt.param_groups[0]["lr"], 0.1)
        self.assertFalse(s.step(5, 1.0, opt))
        self.assertTrue(s.step(6, 1.0, opt))
        self.assertAlmostEqual(opt.param_groups[0]["lr"], 0.1)  # decayed once only

    def test_epoch_two_never_triggers_itself_and_final_is_capped(self):
        s = AdaptiveSchedule(0.7, max_epochs=4)
        s.step(1, 1.0)
        s.step(2, 0.1)  # far below the first epoch, but epoch 2 is the base
        self.assertFalse(s.lr_stepped)
        s.step(3, 0.05)  # 0.05 < 0.07 -> decay; final = min(4, 3 + 1) = 4
        self.assertEqual((s.lr_stepped, s.final_epochs), (True, 4))

    def test_fixed_schedule(self):
        opt = sgd([nn.Parameter(torch.zeros(1))], lr=1.0)
        s = AdaptiveSchedule(step_factor=3, max_epochs=5)
        lrs = []
        for e in range(1, 6):
            stop = s.step(e, 1.0, opt)
            lrs.append(opt.param_groups[0]["lr"])
        self.assertEqual(lrs, [1.0, 1.0, 0.1, 0.1, 0.1])
        self.assertTrue(stop)

    def test_resume_does_not_decay_twice(self):
        opt = sgd([nn.Parameter(torch.zeros(1))], lr=1.0)
        s = AdaptiveSchedule(0.5, 60)
        for e, loss in [(1, 4.0), (2, 4.0), (3, 1.0)]:
            s.step(e, loss, opt)
        t = AdaptiveSchedule(0.5, 60)
        t.load_state_dict(s.state_dict())
        opt2 = sgd([nn.Parameter(torch.zeros(1))], lr=1.0)
        opt2.load_state_dict(opt.state_dict())
        t.step(4, 1.0, opt2)
        self.assertAlmostEqual(opt2.param_groups[0]["lr"], 0.1)
        self.assertEqual(t.final_epochs, 4)


class TestStepSchedule(unittest.TestCase):
    def test_step_lr(self):
        opt = sgd([nn.Parameter(torch.zeros(1))], lr=1.0)
        s = StepSchedule(step_size=2, epochs=5)
        lrs, stops = [], []
        for e in range(1, 6):
            stops.append(s.step(e, 0.0, opt))
            lrs.append(round(opt.param_groups[0]["lr"], 6))
        self.assertEqual(lrs, [1.0, 0.1, 0.1, 0.01, 0.01])  # torch StepLR(2) after epochs 1..5
        self.assertEqual(stops, [False] * 4 + [True])


class TestRandomOcclusion(unittest.TestCase):
    def test_white_square_where_the_draws_say(self):
        img = Image.fromarray(np.zeros((40, 20, 3), np.uint8))
        np.random.seed(3)
        out = np.asarray(QT.RandomOcclusion(0.0, 0.8)(img))
        np.random.seed(3)  # replay the three draws by hand: side in [1, 16), x0 in [0, 20 - side), y0 in [0, 40 - side)
        side = np.random.randint(1, 16)
        x0, y0 = np.random.randint(20 - side), np.random.randint(40 - side)
        expected = np.zeros((40, 20, 3), np.uint8)
        expected[y0:y0 + side, x0:x0 + side] = 255
        np.testing.assert_array_equal(out, expected)

    def test_disabled_and_bad_sizes(self):
        img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
        self.assertIs(QT.RandomOcclusion(0, 0)(img), img)
        with self.assertRaises(ValueError):
            QT.RandomOcclusion(0.9, 0.5)

    def test_regimes(self):
        self.assertEqual([QT.regime_for(v, False) for v in ("1.0", "1.1", "1.2", "2.0", "2.1")],
                         ["flip_occlusion", "none", "none", "full", "full"])
        self.assertEqual([QT.regime_for(v, True) for v in ("1.1", "1.2")], ["flip_occlusion", "full"])
        x = QT.build_train_transform(32, 16, "full")(Image.fromarray(np.full((50, 30, 3), 128, np.uint8)))
        self.assertEqual(tuple(x.shape), (3, 32, 16))
        self.assertLessEqual(float(x.max()), 1.0)  # ToTensor only, no ImageNet normalisation
        self.assertGreaterEqual(float(x.min()), 0.0)


class TestPresets(unittest.TestCase):
    def parse(self, script, *argv):
        from qaconv.config import build_parser, parse_args, CLASS_MEMORY_VERSIONS, GRAPH_SAMPLING_VERSIONS
        versions = CLASS_MEMORY_VERSIONS if script == "main" else GRAPH_SAMPLING_VERSIONS
        return parse_args(build_parser(script, "", versions), list(argv))

    def test_head_defaults(self):
        a = self.parse("main_gs")
        self.assertEqual((a.version, a.batch_size, a.num_instance, a.margin, a.lr, a.epochs, a.step_factor),
                         ("2.1", 64, 2, 16.0, 0.005, 60, 0.7))
        self.assertEqual((a.neck, a.ibn, a.clip_value, a.loss, a.height, a.width, a.freeze_bn),
                         (128, "b", 8.0, "triplet", 384, 128, True))
        self.assertEqual(a.testset, ["market"])  # issue 8.1: the training set unless asked otherwise
        self.assertEqual(self.parse("main_gs", "--paper-testsets").testset, ["cuhk03_np_detected", "msmt"])
        self.assertEqual(self.parse("main", "--version", "1.0", "--paper-testsets").testset, ["duke", "market"])
        self.assertEqual(a.run_name, "resnet50-ibnb-layer3-v2.1-s0")  # issue 8.4: named from what makes the model
        self.assertEqual(self.parse("main_gs", "-a", "resnet18", "--ibn", "none", "--seed", "3").run_name,
                         "resnet18-layer3-v2.1-s3")
        self.assertEqual(self.parse("main_gs", "--sub_method", "mine").run_name, "mine")
        self.assertEqual((a.test_gal_batch, a.test_prob_batch, a.test_fea_batch), (128, 128, 256))

    def test_v12_and_v10_defaults_and_overrides(self):
        a = self.parse("main")
        self.assertEqual((a.version, a.batch_size, a.neck, a.lr, a.epochs, a.step_size, a.pre_epochs, a.ibn),
                         ("1.2", 8, 64, 0.005, 15, 10, 1, None))
        self.assertFalse(a.freeze_bn)
        b = self.parse("main", "--version", "1.0", "--lr", "0.02", "--max_epochs", "7")
        self.assertEqual((b.batch_size, b.neck, b.lr, b.epochs, b.pre_epochs), (32, 128, 0.02, 7, 0))
        c = self.parse("main_gs", "--version", "2.0", "--dataset", "synthetic")
        self.assertEqual((c.loss, c.num_instance, c.gs_pre_epochs, c.gs_rerank, c.clip_value, c.neck),
                         ("pairwise", 4, 1, True, 512.0, 64))
        self.assertEqual(c.testset, ["synthetic"])

    def test_wrong_script_and_bad_batch(self):
        with self.assertRaises(SystemExit):
            self.parse("main", "--version", "2.1")
        with self.assertRaisesRegex(ReidError, "qaconv/main.py"):
            self.parse("main_gs", "--loss", "class_memory")
        with self.assertRaisesRegex(ReidError, "multiple of --num_instance"):
            self.parse("main_gs", "-b", "15", "--num_instance", "2")


class FixedLoss(nn.Module):
    """loss_i = w * x_i with a chosen per-sample pattern of NaNs; acc = 1."""

    def __init__(self, nan_mask):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.nan_mask = torch.tensor(nan_mask)

    def forward(self, feat, pids):
        loss = self.w * feat.flatten(1).sum(1)
        loss = torch.where(self.nan_mask[: loss.numel()], torch.full_like(loss, float("nan")), loss)
        return loss, torch.ones_like(loss)


class TestEpochLoop(unittest.TestCase):
    def loader(self, n=2):
        return [(torch.ones(2, 3, 2, 2), torch.tensor([0, 1]), None, None) for _ in range(n)]

    def test_finite_filtering_and_skipped_batches(self):
        model = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(model.weight, 1.0)
        crit = FixedLoss([True, False])
        opt = sgd(list(model.parameters()) + list(crit.parameters()), lr=0.0)
        stats = train_one_epoch(model, crit, opt, self.loader(), torch.device("cpu"), 0, clip_value=0, progress=False)
        # each image: conv of ones with weight 1 over 3 channels = 3 per pixel, 4 pixels -> 12; only sample 1 counts
        self.assertAlmostEqual(stats["loss"], 12.0)
        self.assertEqual((stats["iterations"], stats["skipped"]), (2, 0))
        crit_all_nan = FixedLoss([True, True])
        stats = train_one_epoch(model, crit_all_nan, opt, self.loader(), torch.device("cpu"), 0, progress=False)
        self.assertEqual((stats["iterations"], stats["skipped"]), (0, 2))

    def test_clipping_bounds_the_update(self):
        model = nn.Conv2d(3, 1, 1, bias=False)
        crit = FixedLoss([False, False])
        before = model.weight.detach().clone()
        opt = sgd(model.parameters(), lr=1.0)
        train_one_epoch(model, crit, opt, self.loader(1), torch.device("cpu"), 0, clip_value=0.5, progress=False)
        # the unclipped gradient is 8 per weight (norm 8 * sqrt(3)); clipped to norm 0.5, lr 1
        self.assertAlmostEqual(float((model.weight.detach() - before).norm()), 0.5, places=4)

    def test_frozen_bn_keeps_running_stats(self):
        model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.BatchNorm2d(1))
        crit = FixedLoss([False, False])
        opt = sgd(model.parameters(), lr=0.1)
        loader = [(torch.randn(2, 3, 2, 2), torch.tensor([0, 1]), None, None)]
        train_one_epoch(model, crit, opt, loader, torch.device("cpu"), 0, freeze_bn=True, progress=False)
        self.assertEqual(float(model[1].running_mean), 0.0)
        self.assertEqual(int(model[1].num_batches_tracked), 0)
        train_one_epoch(model, crit, opt, loader, torch.device("cpu"), 0, freeze_bn=False, progress=False)
        self.assertEqual(int(model[1].num_batches_tracked), 1)


class TestPretrainTrials(unittest.TestCase):
    def test_best_trial_is_kept(self):
        model = nn.Conv2d(3, 1, 1, bias=False)
        accs = iter([0.2, 0.9, 0.5])  # trial 2 has the best 100 * acc - loss

        class Crit(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.zeros(1))
                self.acc = 0.0

            def forward(self, feat, pids):
                loss = (feat.flatten(1).sum(1) * 0 + 1.0) + 0 * self.w
                return loss, torch.full_like(loss, self.acc)

        crit = Crit()
        trial = {"n": 0}

        def reset():
            trial["n"] += 1
            with torch.no_grad():
                model.weight.fill_(float(trial["n"]))
            crit.acc = next(accs)

        opt = sgd(list(model.parameters()) + list(crit.parameters()), lr=0.0)
        loader = [(torch.ones(2, 3, 2, 2), torch.tensor([0, 1]), None, None)] * 5
        best = pretrain_trials(model, crit, opt, loader, torch.device("cpu"), reset, num_trials=3, pre_epochs=2,
                               max_steps=4, log=lambda s: None, progress=False)
        self.assertEqual(best["trial"], 2)
        self.assertAlmostEqual(best["score"], 90.0 - 1.0, places=4)  # acc is a float32 0.9
        self.assertTrue(torch.all(model.weight == 2.0))


if __name__ == "__main__":
    unittest.main()
