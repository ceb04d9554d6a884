"""End-to-end checks of crossmodal_bot/main.py on the synthetic data: smoke run, learning, kill-and-resume,
test and visualize modes. CPU, ResNet-18 at 64x32, random initialisation."""
import glob
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import torch

from common.errors import ReidError
from common.checkpoint import load_checkpoint
from tests.e2e import ROOT, Workspace

SYNTH_IDS = 120
WS = Workspace("bot-test-", "synthetic", SYNTH_IDS)  # the dataset is generated once for the module
DATA = WS.data
setUpModule, tearDownModule = WS.generate, WS.cleanup


def base_args(exp_dir, *extra):
    return ["--dataset", "synthetic", "--data-dir", DATA, "--synthetic-ids", str(SYNTH_IDS), "-a", "resnet18",
            "--no-pretrained", "--height", "64", "--width", "32", "--device", "cpu", "--workers", "0",
            "--exp-dir", exp_dir, "--no-progress", "--no-tensorboard", *extra]


def run_main(args):
    return WS.run("crossmodal_bot/main.py", args)


def run_dir(exp_dir):
    return os.path.join(exp_dir, "crossmodal_bot", "synthetic", "resnet18-s0")


class TestSmokeAndModes(unittest.TestCase):
    def test_train_test_visualize(self):
        with tempfile.TemporaryDirectory() as exp:
            p = run_main(base_args(exp, "--epochs", "1", "--max-batches", "2", "-b", "16", "--k", "4"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            d = run_dir(exp)
            for name in ("args.json", "log.txt", "metrics.jsonl", "results.json", "checkpoints/ckpt_ep001.pth"):
                self.assertTrue(os.path.exists(os.path.join(d, name)), name)
            res = json.load(open(os.path.join(d, "results.json")))["synthetic"]
            for k in ("rank1", "rank5", "mAP", "mINP"):
                self.assertTrue(0.0 <= res[k] <= 1.0 and math.isfinite(res[k]), (k, res[k]))
            train_lines = [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl")) if '"train/loss"' in x]
            self.assertEqual(len(train_lines), 1)
            self.assertTrue(math.isfinite(train_lines[0]["train/loss"]))
            self.assertEqual(load_checkpoint(os.path.join(d, "checkpoints/ckpt_ep001.pth"))["args"]["arch"],
                             "resnet18")

            p = run_main(base_args(exp, "--mode", "test", "--resume_test_epoch", "1"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            tested = json.load(open(os.path.join(d, "results.json")))["test_epoch1/synthetic"]
            self.assertAlmostEqual(tested["mAP"], res["mAP"], places=6)  # same weights, same figures
            self.assertIn("mAP", p.stdout)

            p = run_main(base_args(exp, "--mode", "visualize", "--visualize-queries", "3"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            grids = glob.glob(os.path.join(d, "ranked_images", "synthetic", "*.png"))
            self.assertEqual(len(grids), 3)

    def test_missing_checkpoint_is_a_clear_error(self):
        with tempfile.TemporaryDirectory() as exp:
            p = run_main(base_args(exp, "--mode", "test"))
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("no checkpoint", p.stderr)

    def test_module_entry_point(self):
        p = subprocess.run([sys.executable, "-m", "crossmodal_bot.main", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("--resume_test_epoch", p.stdout)


class TestEvaluateFlag(unittest.TestCase):
    """The shared ``--evaluate`` ("evaluate only") is ``--mode test``."""

    def resolve(self, *argv):
        from crossmodal_bot.main import get_parser, resolve_args
        return resolve_args(get_parser().parse_args(["--dataset", "synthetic", *argv]))

    def test_evaluate_means_test_mode(self):
        self.assertEqual(self.resolve().mode, "train")
        self.assertEqual(self.resolve("--evaluate").mode, "test")
        self.assertEqual(self.resolve("--mode", "train", "--evaluate").mode, "test")
        self.assertEqual(self.resolve("--mode", "test", "--evaluate").mode, "test")
        with self.assertRaises(ReidError) as ctx:
            self.resolve("--mode", "visualize", "--evaluate")
        self.assertIn("--evaluate", str(ctx.exception))

    def test_evaluate_runs_the_test_mode(self):
        with tempfile.TemporaryDirectory() as exp:
            p = run_main(base_args(exp, "--evaluate"))  # no checkpoint yet: the test mode's error, not training
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("no checkpoint", p.stderr)
            self.assertFalse(os.path.isdir(os.path.join(run_dir(exp), "checkpoints")))


class TestResume(unittest.TestCase):

    def test_killed_run_resumes_to_the_same_weights(self):
        common = ["--epochs", "3", "--max-batches", "6", "-b", "16", "--k", "4", "--eval-period", "0",
                  "--warmup-epochs", "1", "--max_save_model_num", "0"]
        with tempfile.TemporaryDirectory() as exp_a, tempfile.TemporaryDirectory() as exp_b:
            p = run_main(base_args(exp_a, *common))  # uninterrupted reference
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            proc = subprocess.Popen(WS.command("crossmodal_bot/main.py", base_args(exp_b, *common)), cwd=WS.path,
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            ck1 = os.path.join(run_dir(exp_b), "checkpoints", "ckpt_ep001.pth")
            deadline = time.time() + 600
            while not os.path.exists(ck1) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            saved = sorted(os.listdir(os.path.join(run_dir(exp_b), "checkpoints")))
            self.assertIn("ckpt_ep001.pth", saved)
            self.assertNotIn("ckpt_ep003.pth", saved, "the run finished before it could be killed")
            p = run_main(base_args(exp_b, *common))  # auto-resumes from the latest checkpoint
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertIn("resumed from", p.stdout)
            a = load_checkpoint(os.path.join(run_dir(exp_a), "checkpoints", "ckpt_ep003.pth"))
            b = load_checkpoint(os.path.join(run_dir(exp_b), "checkpoints", "ckpt_ep003.pth"))
            for k, v in a["state_dict"].items():
                self.assertTrue(torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-6, rtol=0), k)
            self.assertEqual(a["scheduler"], b["scheduler"])


class TestLearning(unittest.TestCase):
    def test_few_hundred_iterations_beat_untrained_and_histogram(self):
        from crossmodal_bot.main import main
        with tempfile.TemporaryDirectory() as exp:
            results = main(base_args(exp, "--epochs", "16", "-b", "32", "--k", "4", "--warmup-epochs", "2",
                                     "--milestones", "12", "--eval-period", "0", "--compare-histogram"))
            allres = json.load(open(os.path.join(run_dir(exp), "results.json")))
            trained, untrained = results["synthetic"]["mAP"], allres["untrained/synthetic"]["mAP"]
            hist = allres["histogram/synthetic"]["mAP"]
            iters = sum(1 for x in open(os.path.join(run_dir(exp), "metrics.jsonl")) if '"iter/loss"' in x)
            self.assertGreaterEqual(iters, 200)
            self.assertGreater(trained, untrained + 0.15, (trained, untrained))
            self.assertGreater(trained, hist, (trained, hist))


if __name__ == "__main__":
    unittest.main()
