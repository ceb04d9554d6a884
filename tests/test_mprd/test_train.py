"""End-to-end checks of the unsupervised loop on a tiny synthetic dataset: ground truth never used, exact resume,
the README's command lines, the missing-GCN-checkpoint error."""
import os
import unittest

import numpy as np
import torch

from common.checkpoint import load_checkpoint
from common.datasets import build_dataset
from common.datasets.base import ReidDataset
from common.errors import ReidError
from common.run import setup_run
from mprd import engine
from mprd.main import get_parser, resolve
from tests.e2e import Workspace

WS = Workspace("mprd-test-", "synthetic", num_ids=40)
setUpModule, tearDownModule = WS.generate, WS.cleanup


def tiny_args(exp, *extra):
    return resolve(get_parser().parse_args([
        "-d", "synthetic", "--synthetic-ids", "40", "--data-dir", WS.data, "--exp-dir", exp, "-a", "resnet18",
        "--no-pretrained", "--height", "32", "--width", "16", "-b", "8", "--num-instances", "4", "--iters", "2",
        "--epochs", "2", "--eps", "0.6", "--k1", "10", "-j", "0", "--eval-step", "0", "--no-compare-histogram",
        "--no-progress", "--no-tensorboard", "--print-freq", "0", "--test-batch-size", "64", "--device", "cpu",
        *extra]))


def train_with(exp, name, dataset=None, *extra):
    args = tiny_args(exp, "--run-name", name, *extra)
    run = setup_run(args, engine.METHOD)
    try:
        engine.train(args, run, dataset)
    finally:
        run.close()
    return load_checkpoint(run.checkpoint_path)


class TestUnsupervised(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.exp = os.path.join(WS.path, "exp")
        cls.ds = build_dataset("synthetic", WS.data, num_ids=40, verbose=False)
        cls.ref = train_with(cls.exp, "ref", cls.ds)

    def assert_same_weights(self, a, b):
        self.assertEqual(a["state_dict"].keys(), b["state_dict"].keys())
        for k in a["state_dict"]:
            self.assertTrue(torch.equal(a["state_dict"][k], b["state_dict"][k]), k)

    def test_clusters_were_trained(self):
        # the reference run really clustered and trained (otherwise the comparisons below prove nothing)
        self.assertGreater(int(self.ref["num_cluster"]), 1)
        self.assertEqual(int(self.ref["epoch"]), 2)
        start = engine.build_model(tiny_args(self.exp)).state_dict()
        changed = [k for k in start if not torch.equal(start[k], self.ref["state_dict"][k])]
        self.assertGreater(len(changed), 10)

    def test_ground_truth_is_never_used(self):
        rng = np.random.RandomState(0)
        pids = sorted({r.pid for r in self.ds.train})
        perm = dict(zip(pids, rng.permutation(pids)))
        for name, train in (("permuted", [r._replace(pid=int(perm[r.pid])) for r in self.ds.train]),
                            ("blanked", [r._replace(pid=0) for r in self.ds.train])):
            ds = ReidDataset(train, self.ds.query, self.ds.gallery, self.ds.name, self.ds.root)
            other = train_with(self.exp, name, ds)
            self.assert_same_weights(self.ref, other)
            torch.testing.assert_close(other["memory"], self.ref["memory"], rtol=0, atol=0)
            np.testing.assert_array_equal(other["idx2labels"].numpy(), self.ref["idx2labels"].numpy())

    def test_kill_and_resume(self):
        exp = os.path.join(WS.path, "exp_resume")
        first = train_with(exp, "r", self.ds, "--epochs", "1")
        self.assertEqual(int(first["epoch"]), 1)
        resumed = train_with(exp, "r", self.ds, "--resume", "auto")
        self.assertEqual(int(resumed["epoch"]), 2)
        self.assert_same_weights(self.ref, resumed)
        for key in ("memory", "idx2labels"):
            self.assertTrue(torch.equal(resumed[key], self.ref[key]), key)
        self.assertEqual(resumed["optimizer"]["state"].keys(), self.ref["optimizer"]["state"].keys())


class TestCli(unittest.TestCase):
    def test_readme_commands(self):
        base = "-b 64 -a resnet50 -d {} --iters 400 --momentum 0.1 --eps {} --num-instances 16 --use-hard"
        for name, key, eps in (("market1501", "market", 0.4), ("dukemtmcreid", "duke", 0.6), ("MSMT17", "msmt", 0.7),
                               ("msmt17", "msmt", 0.7)):
            for gcn in ("", " --use-gcn"):
                a = resolve(get_parser().parse_args((base.format(name, eps) + gcn).split()))
                self.assertEqual((a.dataset, a.eps, a.batch_size, a.num_instances, a.momentum, a.iters),
                                 (key, eps, 64, 16, 0.1, 400))
                self.assertEqual(a.use_gcn, bool(gcn))

    def test_paper_defaults(self):
        a = resolve(get_parser().parse_args([]))
        self.assertEqual((a.dataset, a.arch, a.eps, a.k1, a.k2, a.momentum, a.temp, a.lr, a.weight_decay,
                          a.epochs, a.iters, a.step_size, a.seed, a.num_instances, a.min_samples),
                         ("duke", "resnet50", 0.6, 30, 6, 0.2, 0.05, 3.5e-4, 5e-4, 50, 400, 20, 1, 4, 4))

    def test_bad_inputs(self):
        with self.assertRaises(ReidError):
            resolve(get_parser().parse_args(["-d", "nosuchset"]))
        with self.assertRaises(ReidError):
            resolve(get_parser().parse_args(["-b", "30", "--num-instances", "16"]))


if __name__ == "__main__":
    unittest.main()
