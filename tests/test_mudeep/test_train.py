"""MuDeep v2 command line, schedule and evaluation by hand, and end-to-end runs of mudeep/main.py on tiny synthetic
data (CPU, ResNet-18, random init): run-folder files, opt.txt, original-format checkpoints read back by
``--evaluate`` and the original API, kill-and-resume to identical weights."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import torch

from common.checkpoint import load_checkpoint
from tests.e2e import ROOT, Workspace

WS = Workspace("mudeep-test-", "synthetic", num_ids=30)  # 15 train ids, 46 queries, 113 gallery images
setUpModule, tearDownModule = WS.generate, WS.cleanup


def tiny_args(exp, *extra):
    return ["--dataset", "synthetic", "--data-dir", WS.data, "--synthetic-ids", "30", "-a", "resnet18",
            "--no-pretrained", "--height", "48", "--width", "32", "--P", "2", "--K", "4", "--guidance", "16",
            "--embed-dim", "16", "--device", "cpu", "--workers", "0", "--exp-dir", exp, "--no-progress",
            "--test-batch-size", "64", *extra]


def run_dir(exp):
    return os.path.join(exp, "mudeep", "synthetic", "synthetic")


class TestConfig(unittest.TestCase):
    def parse(self, *argv):
        from mudeep.config import parse_args
        return parse_args(list(argv))

    def test_defaults_are_the_originals(self):
        a = self.parse()
        want = dict(arch="resnet50", height=384, width=192, lr=0.09, step_size=80, epochs=160, gamma=0.1,
                    snapshot=5, checkpoint=10, P=12, K=6, margin=1.0, test_batch_size=128, workers=8, seed=12345,
                    repeat=3, erasing_p=0.5, weight_decay=5e-4, momentum=0.9, base_lr_factor=0.1, ce_weight=2.0,
                    tri_weight=1.0, mining="block", guidance=512, embed_dim=512, dropout=0.5, flip_test=True,
                    batch_size=72)
        for k, v in want.items():
            self.assertEqual(getattr(a, k), v, k)

    def test_presets_and_original_spellings(self):
        self.assertEqual((self.parse("--preset", "market_v2").height, self.parse("--preset", "market_v2").width),
                         (384, 128))
        self.assertEqual(self.parse("--preset", "market_v2", "--width", "96").width, 96)
        a = self.parse("--TRAIN.LR", "0.1", "--TRAIN.STEPSIZE", "40", "--TRAIN.MAX_EPOCH", "100", "--TRAIN.K", "4",
                       "--TRAIN.SIZE", "256", "128", "--NAME", "duke", "--GPU_ID", "1,2")
        self.assertEqual((a.lr, a.step_size, a.epochs, a.K, a.height, a.width, a.run_name, a.device),
                         (0.1, 40, 100, 4, 256, 128, "duke", "cuda:1"))

    def test_cfg_dict_round_trip(self):
        from mudeep.config import cfg_from_args, cfg_to_argv, parse_args
        cfg = {"NAME": "m", "GPU_ID": None, "TRAIN": {"LR": 0.05, "P": 4, "SIZE": (96, 32)}, "TEST": {"BATCH_SIZE": 8}}
        back = cfg_from_args(parse_args(cfg_to_argv(cfg)))
        self.assertEqual((back["NAME"], back["TRAIN"]["LR"], back["TRAIN"]["P"], back["TRAIN"]["SIZE"],
                          back["TEST"]["BATCH_SIZE"]), ("m", 0.05, 4, [96, 32], 8))

    def test_step_schedule(self):
        from mudeep.model import MuDeepV2, parameter_groups
        from mudeep.trainer import set_epoch_lr
        model = MuDeepV2(5, "resnet18", pretrained=False, guidance=8, embed_dim=8)
        opt = torch.optim.SGD(parameter_groups(model, 0.09), lr=0.09)
        for epoch, lr in ((1, 0.09), (79, 0.09), (80, 0.009), (159, 0.009), (160, 0.0009)):
            set_epoch_lr(opt, epoch, 80, 0.1)
            self.assertAlmostEqual(opt.param_groups[1]["lr"], lr, places=12)
            self.assertAlmostEqual(opt.param_groups[0]["lr"], lr / 10, places=12)


class TestOriginalMap(unittest.TestCase):
    def test_spec_example_and_junk(self):
        from mudeep.evaluate import original_map
        # gallery ranked 0..4 by distance: good at ranks 0 and 2 -> (1 + 1)/2/2 + (2/3 + 1/2)/2/2 = 0.7917
        dist = np.array([[0.0, 1.0, 2.0, 3.0]])
        g_pids, g_cams = np.array([5, 6, 5, 7]), np.array([1, 1, 2, 1])
        self.assertAlmostEqual(original_map(dist, np.array([5]), g_pids, np.array([0]), g_cams), 0.791667, places=5)
        # a same-id same-camera gallery entry in front is junk: removed before ranking
        dist = np.array([[-1.0, 0.0, 1.0, 2.0, 3.0]])
        self.assertAlmostEqual(original_map(dist, np.array([5]), np.r_[5, g_pids], np.array([0]), np.r_[0, g_cams]),
                               0.791667, places=5)


class TestEndToEnd(unittest.TestCase):
    def test_train_files_evaluate_original_checkpoint_and_api(self):
        with tempfile.TemporaryDirectory() as exp:
            p = WS.run("mudeep/main.py", tiny_args(exp, "--epochs", "1", "--max-batches", "2", "--snapshot", "1",
                                                   "--checkpoint", "1"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            d = run_dir(exp)
            for name in ("args.json", "log.txt", "metrics.jsonl", "results.json", "opt.txt", "checkpoint.pth",
                         "synthetic_1.pkl", "tb"):
                self.assertTrue(os.path.exists(os.path.join(d, name)), name)
            opt = open(os.path.join(d, "opt.txt")).read()
            self.assertIn("MAX_EPOCH: 1", opt)
            lines = [x for x in opt.splitlines() if x.startswith("Epoch:")]
            self.assertEqual(len(lines), 1)
            self.assertRegex(lines[0], r"^Epoch:1, Rank@1:\d\.\d{4}, Rank@5:\d\.\d{4}, Rank@10:\d\.\d{4}, "
                                       r"Rank@15:\d\.\d{4}, Rank@20:\d\.\d{4}, mAP:\d\.\d{4} $")
            pkl = load_checkpoint(os.path.join(d, "synthetic_1.pkl"))
            self.assertEqual(sorted(pkl), ["epoch", "optimizer", "state_dict"])
            self.assertTrue(all(k.startswith("module.") for k in pkl["state_dict"]))
            self.assertEqual(len(pkl["optimizer"]["param_groups"]), 16)
            trained = json.load(open(os.path.join(d, "results.json")))["epoch1/synthetic"]

            p = WS.run("mudeep/main.py", tiny_args(exp, "--evaluate", "--resume", os.path.join(d, "synthetic_1.pkl"),
                                                   "--out-name", "ev", "--run-name", "ev"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            tested = json.load(open(os.path.join(exp, "mudeep", "synthetic", "ev", "results.json")))
            self.assertAlmostEqual(tested["test_epoch1/synthetic"]["mAP"], trained["mAP"], places=6)
            ev = open(os.path.join(d, "ev.txt")).read().splitlines()
            self.assertRegex(ev[-1], r"^Epoch:1, Rank@1:\d\.\d{6}, .*mAP:\d\.\d{6} $")
            p = WS.run("mudeep/main.py", tiny_args(exp, "--evaluate", "--resume", d, "--out-name", "ev"))
            self.assertEqual(p.returncode, 2)  # ev.txt exists: refused, one error block
            self.assertIn("--overwrite", p.stderr)

            from mudeep.api import MuDeep_v2
            cwd = os.getcwd()
            try:
                os.chdir(WS.path)
                res = MuDeep_v2({"NAME": "synthetic"}, extra=tiny_args(exp, "--run-name", "api")).test(
                    os.path.join(d, "synthetic_1.pkl"), "api_eval")
            finally:
                os.chdir(cwd)
            self.assertAlmostEqual(res["synthetic"]["mAP"], trained["mAP"], places=6)
            self.assertTrue(os.path.isfile(os.path.join(d, "api_eval.txt")))

    def test_module_entry_point(self):
        p = subprocess.run([sys.executable, "-m", "mudeep.main", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("--TRAIN.STEPSIZE", p.stdout)


class TestResume(unittest.TestCase):
    def test_killed_run_resumes_to_the_same_weights(self):
        common = ["--epochs", "3", "--max-batches", "2", "--snapshot", "0", "--checkpoint", "1", "--no-tensorboard"]
        with tempfile.TemporaryDirectory() as exp_a, tempfile.TemporaryDirectory() as exp_b:
            p = WS.run("mudeep/main.py", tiny_args(exp_a, *common))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            proc = subprocess.Popen(WS.command("mudeep/main.py", tiny_args(exp_b, *common)), cwd=WS.path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            first = os.path.join(run_dir(exp_b), "synthetic_1.pkl")
            deadline = time.time() + 600
            while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.assertFalse(os.path.exists(os.path.join(run_dir(exp_b), "synthetic_3.pkl")),
                             "the run finished before it could be killed")
            p = WS.run("mudeep/main.py", tiny_args(exp_b, *common))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertIn("resumed from", p.stdout)
            a = load_checkpoint(os.path.join(run_dir(exp_a), "checkpoint.pth"))
            b = load_checkpoint(os.path.join(run_dir(exp_b), "checkpoint.pth"))
            self.assertEqual((a["epoch"], b["epoch"]), (3, 3))
            for k, v in a["state_dict"].items():
                self.assertTrue(torch.equal(v, b["state_dict"][k]), k)
            p = WS.run("mudeep/main.py", tiny_args(exp_b, *common))  # finished: nothing is trained again
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertIn("this run is finished (epoch 3)", p.stdout)
            self.assertEqual(load_checkpoint(os.path.join(run_dir(exp_b), "checkpoint.pth"))["epoch"], 3)
            mom_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
            mom_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
            self.assertTrue(all(torch.equal(x, y) for x, y in zip(mom_a, mom_b)))


if __name__ == "__main__":
    unittest.main()
