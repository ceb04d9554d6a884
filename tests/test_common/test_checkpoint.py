"""Checkpoint round trip, atomic write, RNG capture and run-folder hygiene."""
import argparse
import json
import os
import random
import tempfile
import unittest
from unittest import mock

import numpy as np
import torch

from common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from common.cli import base_parser, resolve_common
from common.run import setup_run


class TestCheckpoint(unittest.TestCase):
    def test_round_trip_with_optimizer_and_args(self):
        model = torch.nn.Linear(4, 3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "run", "checkpoint.pth")
            save_checkpoint(path, {"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3},
                            args={"lr": 1e-3, "arch": "x"})
            self.assertFalse(os.path.exists(path + ".tmp"))
            ck = load_checkpoint(path)
            self.assertEqual(ck["epoch"], 3)
            self.assertEqual(ck["args"], {"lr": 1e-3, "arch": "x"})
            with open(os.path.join(d, "run", "args.json")) as f:
                self.assertEqual(json.load(f)["args"]["arch"], "x")
            m2 = torch.nn.Linear(4, 3)
            m2.load_state_dict(ck["state_dict"])
            for a, b in zip(model.parameters(), m2.parameters()):
                self.assertTrue(torch.equal(a, b))
            opt2 = torch.optim.Adam(m2.parameters(), lr=1e-3)
            opt2.load_state_dict(ck["optimizer"])
            self.assertTrue(torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]))

    def test_failed_save_keeps_previous_checkpoint(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "checkpoint.pth")
            save_checkpoint(path, {"epoch": 1})
            with mock.patch("torch.save", side_effect=RuntimeError("disk full")):
                with self.assertRaises(RuntimeError):
                    save_checkpoint(path, {"epoch": 2})
            self.assertEqual(load_checkpoint(path)["epoch"], 1)

    def test_missing_checkpoint_message(self):
        with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
            load_checkpoint("/nonexistent/ck.pth")

    def test_rng_state_restores_all_generators(self):
        state = rng_state()
        a = (random.random(), np.random.rand(), torch.rand(1).item())
        with tempfile.TemporaryDirectory() as d:  # the state must survive a weights_only load
            path = os.path.join(d, "ck.pth")
            save_checkpoint(path, {"rng": state})
            state = load_checkpoint(path)["rng"]
        set_rng_state(state)
        b = (random.random(), np.random.rand(), torch.rand(1).item())
        self.assertEqual(a, b)


class TestRunFolder(unittest.TestCase):
    def test_setup_run_writes_args_log_metrics_results(self):
        parser = argparse.ArgumentParser(parents=[base_parser()])
        with tempfile.TemporaryDirectory() as d:
            args = resolve_common(parser.parse_args(["--dataset", "synthetic", "--exp-dir", d, "-a", "resnet18",
                                                     "--device", "cpu", "--testset", "market,duke"]))
            self.assertEqual(args.testset, ["market", "duke"])
            run = setup_run(args, "demo_method")
            self.assertEqual(run.dir, os.path.join(d, "demo_method", "synthetic", "resnet18-s0"))
            run.log("hello %d", 5)
            run.log_metrics(1, prefix="train", loss=0.5)
            run.log_metrics(2, prefix="train", loss=torch.tensor(0.25))
            run.write_results("synthetic", {"mAP": 0.5, "cmc": np.array([0.5, 1.0])})
            run.close()
            with open(os.path.join(run.dir, "args.json")) as f:
                info = json.load(f)
            self.assertEqual(info["args"]["arch"], "resnet18")
            self.assertIn("sha", info["git"])
            lines = [json.loads(x) for x in open(os.path.join(run.dir, "metrics.jsonl"))]
            self.assertEqual([x["train/loss"] for x in lines], [0.5, 0.25])
            self.assertIn("hello 5", open(os.path.join(run.dir, "log.txt")).read())
            res = json.load(open(os.path.join(run.dir, "results.json")))
            self.assertEqual(res["synthetic"]["cmc"], [0.5, 1.0])
            self.assertTrue(any(n.startswith("events") for n in os.listdir(os.path.join(run.dir, "tb"))))

    def test_device_cuda_without_gpu_is_a_clear_error(self):
        from common.env import select_device
        if torch.cuda.is_available():
            self.skipTest("a GPU is present")
        with self.assertRaisesRegex(ValueError, "--device cpu"):
            select_device("cuda")


if __name__ == "__main__":
    unittest.main()
