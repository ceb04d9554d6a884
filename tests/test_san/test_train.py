"""End-to-end checks of san/main.py on the synthetic data (textures on): the release's command accepted, run
folder, kill-and-resume to identical weights (across the warm-up / main switch), --evaluate, the missing-texture
error. CPU, resnet18_fc512 at 64x32, random init."""
import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

import torch

from common.checkpoint import load_checkpoint
from common.datasets import build_dataset
from tests.e2e import Workspace

IDS = 24
WS = Workspace("san-test-", "synthetic", IDS)
DATA = WS.data


def setUpModule():
    build_dataset("synthetic", DATA, num_ids=IDS, textures=True, verbose=False)


tearDownModule = WS.cleanup


def base_args(exp, *extra):
    return ["-s", "synthetic", "-t", "synthetic", "--root", DATA, "--synthetic-ids", str(IDS), "-a", "resnet18_fc512",
            "--no-pretrained", "--height", "64", "--width", "32", "--train-batch-size", "8", "--test-batch-size",
            "50", "--optim", "amsgrad", "--label-smooth", "--lr", "8e-04",
            "--train-sampler", "RandomIdentitySampler", "--device", "cpu", "-j", "0", "--exp-dir", exp,
            "--no-progress", "--texture-source", "true", *extra]


def run_dir(exp):
    return os.path.join(exp, "san", "synthetic", "resnet18_fc512-s1")


class TestTrain(unittest.TestCase):
    def test_run_folder_and_evaluate(self):
        with tempfile.TemporaryDirectory() as exp:
            p = WS.run("san/main.py", base_args(exp, "--warm-up-epoch", "1", "--max-epoch", "1", "--max-batches", "2",
                                                "--stepsize", "1", "--eval-freq", "80"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            d = run_dir(exp)
            for name in ("args.json", "log.txt", "metrics.jsonl", "results.json", "checkpoint.pth", "tb"):
                self.assertTrue(os.path.exists(os.path.join(d, name)), name)
            stored = json.load(open(os.path.join(d, "results.json")))
            res = stored["trained resnet18_fc512/synthetic"]
            self.assertEqual(stored["synthetic"], res, "the final figures under the bare key (common.results)")
            ck = load_checkpoint(os.path.join(d, "checkpoint.pth"))
            self.assertEqual(ck["epoch"], 2)
            self.assertIn("decoder", ck)
            lines = [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl"))]
            self.assertTrue(any("train/tr" in x and "train/rec" in x for x in lines))
            p = WS.run("san/main.py", base_args(exp, "--evaluate", "--load-weights", os.path.join(d, "checkpoint.pth"),
                                                "--run-name", "eval", "--visualize-ranks"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            ev = json.load(open(os.path.join(exp, "san", "synthetic", "eval", "results.json")))
            ev = [v for k, v in ev.items() if k != "_meta"][0]
            self.assertAlmostEqual(ev["mAP"], res["mAP"], places=6)  # the same weights give the same figures
            pictures = os.listdir(os.path.join(exp, "san", "synthetic", "eval", "ranked_results", "synthetic"))
            from common.datasets import build_dataset
            num_query = len(build_dataset("synthetic", WS.data, num_ids=WS.num_ids, verbose=False).query)
            self.assertEqual(len([f for f in pictures if f.endswith(".png")]), num_query)  # one per query

    def test_missing_textures_stop_with_the_command(self):
        with tempfile.TemporaryDirectory() as exp:
            args = [a for a in base_args(exp, "--max-epoch", "1") if a not in ("--texture-source", "true")]
            p = WS.run("san/main.py", args)
            self.assertEqual(p.returncode, 2, p.stderr[-3000:])
            self.assertIn("texture_synthetic", p.stderr)
            self.assertIn("generate_texture.py", p.stderr)
            self.assertNotIn("Traceback", p.stderr)
            p = WS.run("san/main.py", base_args(exp, "--max-epoch", "1", "--train-sampler", ""))
            self.assertEqual(p.returncode, 2)
            self.assertIn("RandomIdentitySampler", p.stderr)

    def test_killed_run_resumes_to_the_same_weights(self):
        common = ["--warm-up-epoch", "1", "--max-epoch", "2", "--stepsize", "1", "--max-batches", "3",
                  "--eval-freq", "0", "--no-tensorboard"]
        with tempfile.TemporaryDirectory() as exp_a, tempfile.TemporaryDirectory() as exp_b:
            p = WS.run("san/main.py", base_args(exp_a, *common))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            proc = subprocess.Popen(WS.command("san/main.py", base_args(exp_b, *common)), cwd=WS.path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ck = os.path.join(run_dir(exp_b), "checkpoint.pth")
            deadline = time.time() + 600
            while not os.path.exists(ck) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.assertLess(load_checkpoint(ck)["epoch"], 3, "the run finished before it could be killed")
            p = WS.run("san/main.py", base_args(exp_b, *common))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertIn("resumed from", p.stdout)
            a = load_checkpoint(os.path.join(run_dir(exp_a), "checkpoint.pth"))
            b = load_checkpoint(ck)
            self.assertEqual(a["epoch"], 3)
            self.assertEqual(b["epoch"], 3)
            for part in ("encoder", "decoder"):
                for k, v in a[part].items():
                    self.assertTrue(torch.equal(v, b[part][k]), (part, k))
            self.assertEqual(a["sched_reid"], b["sched_reid"])
            self.assertTrue(a["opt_reid"]["param_groups"][0]["amsgrad"])


if __name__ == "__main__":
    unittest.main()
