"""End-to-end checks of qaconv/main_gs.py (QAConv 2.x) and qaconv/main.py (QAConv 1.x) on the synthetic data:
smoke runs with every output, evaluation from our checkpoint and from one in the original's format, the 1.x
pre-training and augmentation switch, kill-and-resume to identical weights, and learning. CPU, ResNet-18 at 64x32,
random initialisation."""
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

from common.checkpoint import load_checkpoint
from tests.e2e import ROOT, Workspace

SYNTH_IDS = 80
WS = Workspace("qaconv-test-", "synthetic", SYNTH_IDS)  # the dataset is generated once for the module
DATA = WS.data
setUpModule, tearDownModule = WS.generate, WS.cleanup


def base_args(exp_dir, *extra):
    return ["--dataset", "synthetic", "--data-dir", DATA, "--synthetic-ids", str(SYNTH_IDS), "-a", "resnet18",
            "--ibn", "none", "--no-pretrained", "--no-freeze-bn", "--height", "64", "--width", "32", "--device",
            "cpu", "-j", "0", "--exp-dir", exp_dir, "--run-name", "t", "--no-progress", "--print-freq", "0", *extra]


def run_script(script, args):
    return WS.run(f"qaconv/{script}", args)


def run_dir(exp_dir):
    return os.path.join(exp_dir, "qaconv", "synthetic", "t")


def results(exp_dir):
    with open(os.path.join(run_dir(exp_dir), "results.json")) as f:
        return json.load(f)


class TestGraphSamplingEndToEnd(unittest.TestCase):
    def test_train_evaluate_tlift_scores_pictures_and_original_checkpoint(self):
        with tempfile.TemporaryDirectory() as exp:
            p = run_script("main_gs.py", base_args(exp, "--epochs", "1", "--max-batches", "3", "-b", "8",
                                                   "--num_instance", "2", "--do_tlift", "--save_score",
                                                   "--visualize-pairs", "2", "--gs_save", "--gs_verbose"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            d = run_dir(exp)
            for name in ("args.json", "log.txt", "metrics.jsonl", "results.json", "checkpoint.pth",
                         "synthetic_score.mat", "gs1.npz"):
                self.assertTrue(os.path.exists(os.path.join(d, name)), name)
            self.assertEqual(len(glob.glob(os.path.join(d, "matches", "synthetic", "*.png"))), 2)
            res = results(exp)["synthetic"]
            for k in ("rank1", "mAP", "mINP", "openreid_rank1", "openreid_mAP", "mAP_rerank", "mAP_tlift"):
                self.assertTrue(0.0 <= res[k] <= 1.0 and math.isfinite(res[k]), (k, res[k]))
            self.assertIn("+ re-ranking + TLift", p.stdout)
            ckpt = load_checkpoint(os.path.join(d, "checkpoint.pth"))
            self.assertEqual(ckpt["epoch"], 1)
            self.assertEqual(ckpt["args"]["version"], "2.1")
            self.assertIn("matcher.logit_bn.weight", ckpt["criterion"])  # the original's criterion keys
            self.assertIn("sampler", ckpt)

            # --evaluate from the run's own checkpoint gives the same figures
            p = run_script("main_gs.py", base_args(exp, "--evaluate", "--do_tlift"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            again = results(exp)["evaluate_epoch1/synthetic"]
            for k in ("mAP", "rank1", "mAP_tlift"):
                self.assertAlmostEqual(again[k], res[k], places=6)

            # a checkpoint in the original code's layout (DataParallel 'module.' keys, .pth.tar) evaluates alike
            original = os.path.join(exp, "checkpoint.pth.tar")
            torch.save({"model": {"module." + k: v for k, v in ckpt["model"].items()},
                        "criterion": ckpt["criterion"], "optim": ckpt["optim"], "epoch": 1, "final_epochs": 60,
                        "base_loss": None, "lr_stepped": False}, original)
            p = run_script("main_gs.py", base_args(exp, "--evaluate", "--do_tlift", "--resume", original, "--run-name", "o"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            with open(os.path.join(exp, "qaconv", "synthetic", "o", "results.json")) as f:
                orig = json.load(f)["evaluate_epoch1/synthetic"]
            for k in ("mAP", "mAP_tlift"):
                self.assertAlmostEqual(orig[k], res[k], places=6)

    def test_missing_checkpoint_is_a_clear_error(self):
        with tempfile.TemporaryDirectory() as exp:
            p = run_script("main_gs.py", base_args(exp, "--evaluate"))
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("no checkpoint", p.stderr)

    def test_module_entry_points(self):
        for module, flag in (("qaconv.main_gs", "--num_instance"), ("qaconv.main", "--mem_batch_size")):
            p = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                               timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(flag, p.stdout)


class TestClassMemoryEndToEnd(unittest.TestCase):
    def test_pretraining_trials_and_augmentation_switch(self):
        with tempfile.TemporaryDirectory() as exp:
            p = run_script("main.py", base_args(exp, "--epochs", "2", "--max-batches", "3", "-b", "8",
                                                "--num_trials", "2", "--max_steps", "3", "--acc_thr", "-1"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertEqual(p.stdout.count("pre-training trial"), 2)
            self.assertIn("pre-training: kept trial", p.stdout)
            self.assertIn("augmentation now Resize -> Pad -> RandomCrop", p.stdout)  # 1.2: the full augmentation
            ckpt = load_checkpoint(os.path.join(run_dir(exp), "checkpoint.pth"))
            self.assertTrue(ckpt["aug_switched"])
            self.assertEqual(tuple(ckpt["criterion"]["class_memory"].shape[:2]), (SYNTH_IDS // 2, 64))
            self.assertGreater(int(ckpt["criterion"]["valid_class"].sum()), 0)
            self.assertIn("neck_bn.weight", ckpt["model"])  # 1.x neck: conv without bias + BN
            self.assertTrue(math.isfinite(results(exp)["synthetic"]["mAP"]))


class TestClassMemoryLearning(unittest.TestCase):
    def test_class_memory_training_beats_untrained_and_histogram(self):
        """QAConv 1.2 from random init: 3 pre-training trials, 8 epochs of 44 batches of 8 (352 iterations), the
        augmentation switch at --acc_thr, StepLR at 6."""
        from qaconv.main import main
        with tempfile.TemporaryDirectory() as exp:
            out = main(base_args(exp, "--epochs", "8", "--step_size", "6", "-b", "8", "--num_trials", "3",
                                 "--max_steps", "30", "--compare-histogram", "--no-tensorboard"))
            allres = results(exp)
            trained, untrained = out["synthetic"]["mAP"], allres["untrained/synthetic"]["mAP"]
            hist = allres["histogram/synthetic"]["mAP"]
            self.assertGreater(trained, untrained + 0.1, (trained, untrained))
            self.assertGreater(trained, hist, (trained, hist))


class TestResume(unittest.TestCase):
    def test_killed_run_resumes_to_the_same_weights(self):
        common = ["--epochs", "3", "--max-batches", "4", "-b", "8", "--num_instance", "2", "--loss", "pairwise"]
        with tempfile.TemporaryDirectory() as exp_a, tempfile.TemporaryDirectory() as exp_b:
            p = run_script("main_gs.py", base_args(exp_a, *common))  # uninterrupted reference
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            proc = subprocess.Popen(WS.command("qaconv/main_gs.py", base_args(exp_b, *common)), cwd=WS.path,
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            ck = os.path.join(run_dir(exp_b), "checkpoint.pth")
            deadline = time.time() + 600
            while not os.path.exists(ck) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.assertLess(load_checkpoint(ck)["epoch"], 3, "the run finished before it could be killed")
            p = run_script("main_gs.py", base_args(exp_b, *common))  # auto-resumes from the run's checkpoint
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertIn("resumed from", p.stdout)
            a = load_checkpoint(os.path.join(run_dir(exp_a), "checkpoint.pth"))
            b = load_checkpoint(ck)
            self.assertEqual((a["epoch"], b["epoch"]), (3, 3))
            for part in ("model", "criterion"):
                for k, v in a[part].items():
                    self.assertTrue(torch.allclose(v.float(), b[part][k].float(), atol=1e-6, rtol=0), (part, k))
            self.assertEqual(a["sampler"]["pointers"].tolist() if hasattr(a["sampler"]["pointers"], "tolist")
                             else a["sampler"]["pointers"],
                             b["sampler"]["pointers"].tolist() if hasattr(b["sampler"]["pointers"], "tolist")
                             else b["sampler"]["pointers"])


class TestLearning(unittest.TestCase):
    def test_graph_sampling_training_beats_untrained_and_histogram_and_tlift_helps(self):
        """Random init: the 2.0 pairwise matching loss (the 2.1 triplet collapses without ImageNet features, see
        qaconv/README.md). 6 epochs x 40 graph batches of 16 = 240 iterations."""
        from qaconv.main_gs import main
        with tempfile.TemporaryDirectory() as exp:
            out = main(base_args(exp, "--epochs", "6", "-b", "16", "--num_instance", "2", "--loss", "pairwise",
                                 "--compare-histogram", "--do_tlift", "--no-tensorboard"))
            allres = results(exp)
            trained, untrained = out["synthetic"]["mAP"], allres["untrained/synthetic"]["mAP"]
            hist = allres["histogram/synthetic"]["mAP"]
            iters = sum(1 for x in open(os.path.join(run_dir(exp), "metrics.jsonl")) if '"iter/loss"' in x)
            self.assertGreaterEqual(iters, 200)
            self.assertGreater(trained, untrained + 0.1, (trained, untrained))
            self.assertGreater(trained, hist, (trained, hist))
            self.assertGreater(out["synthetic"]["mAP_tlift"], trained, out["synthetic"])


if __name__ == "__main__":
    unittest.main()
