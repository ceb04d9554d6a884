"""san/main.py accepts the release's README command as written, with the code's defaults where it is silent;
the learning-rate schedule of spec §7.1 / §10a-10 (warm-up Adam 8e-6 * 1.259^e, then AMSGrad halved at the
step sizes; the encoder / decoder Adam stay at 1e-5)."""
import argparse
import unittest

import torch

from san.engine import reid_optimizer, should_eval
from san.main import get_parser, resolve_args

README_COMMAND = ("--root DATASET_PATH -s cuhk03 -t cuhk03 --height 256 --width 128 --optim amsgrad --label-smooth "
                  "--lr 8e-04 --max-epoch 300 --stepsize 40 80 120 160 200 240 280 --train-batch-size 64 "
                  "--test-batch-size 100 -a resnet50_fc512 --save-dir SAVE_PATH --gpu-devices 0 "
                  "--train-sampler RandomIdentitySampler --warm-up-epoch 20 --cuhk03-labeled --eval-freq 80").split()


class TestCommand(unittest.TestCase):
    def test_readme_command(self):
        a = resolve_args(get_parser().parse_args(README_COMMAND))
        self.assertEqual((a.data_dir, a.dataset, a.testset), ("DATASET_PATH", "cuhk03", ["cuhk03"]))
        self.assertEqual((a.height, a.width, a.optim, a.label_smooth, a.lr), (256, 128, "amsgrad", True, 8e-4))
        self.assertEqual((a.max_epoch, a.epochs, a.stepsize), (300, 300, [40, 80, 120, 160, 200, 240, 280]))
        self.assertEqual((a.batch_size, a.test_batch_size, a.arch, a.output_path), (64, 100, "resnet50_fc512",
                                                                                    "SAVE_PATH"))
        self.assertEqual((a.train_sampler, a.warm_up_epoch, a.cuhk03_labeled, a.eval_freq),
                         ("RandomIdentitySampler", 20, True, 80))
        # the code's defaults where the command is silent
        self.assertEqual((a.gamma, a.weight_decay, a.margin, a.num_instances, a.seed, a.split_id),
                         (0.5, 5e-4, 0.3, 4, 1, 0))
        self.assertEqual((a.warm_up_lr, a.warm_up_gamma, a.dec_lr, a.dec_beta1), (8e-6, 1.259, 1e-5, 0.5))
        self.assertFalse(a.use_metric_cuhk03 or a.cuhk03_classic_split or a.htri_only)

    def test_bad_sizes(self):
        from common.errors import ReidError
        with self.assertRaisesRegex(ReidError, "multiples of 16"):
            resolve_args(get_parser().parse_args(["--height", "100"]))
        with self.assertRaisesRegex(ReidError, "multiple of --num-instances"):
            resolve_args(get_parser().parse_args(["--train-batch-size", "30"]))


class TestSchedule(unittest.TestCase):
    def test_lrs(self):
        a = resolve_args(get_parser().parse_args(README_COMMAND))
        p = [torch.nn.Parameter(torch.zeros(1))]
        opt, sched = reid_optimizer(a, p, warm=True)
        for e in range(20):
            self.assertAlmostEqual(opt.param_groups[0]["lr"], 8e-6 * 1.259 ** e, delta=1e-12)
            sched.step()
        self.assertFalse(opt.param_groups[0].get("amsgrad"))
        opt, sched = reid_optimizer(a, p, warm=False)
        self.assertTrue(opt.param_groups[0]["amsgrad"])
        lrs = []
        for e in range(300):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
        for e, lr in enumerate(lrs):
            self.assertAlmostEqual(lr, 8e-4 * 0.5 ** (e // 40), delta=1e-12, msg=e)
        self.assertAlmostEqual(lrs[-1], 6.25e-6, delta=1e-12)

    def test_eval_epochs(self):
        a = argparse.Namespace(start_eval=0, eval_freq=80, max_epoch=300)
        self.assertEqual([e + 1 for e in range(300) if should_eval(a, e)], [80, 160, 240, 300])


if __name__ == "__main__":
    unittest.main()
