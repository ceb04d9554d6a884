"""mprd/main.py under ``torchrun --nproc_per_node 2`` (gloo on the CPU) against one process.

Each case runs the real script in a subprocess on a tiny synthetic set (20 training identities, 32x16 images, the
3-block CNN ``cnn3`` from a fixed start file, -b 8 = 2 pseudo-identities x 4, one per rank):

* equal to one process: 2 epochs of 3 steps (clustering, memory, mixing, both losses, hard updates), SyncBN on and
  augmentation off (it is drawn per rank): the weights and the cluster memory agree to 1e-5 while training moved the
  weights by far more, the pseudo-labels are equal, and each epoch's bitwise cross-rank check (pseudo-labels,
  memory, bank, weights) is logged;
* a 2-process run stopped after epoch 1 (``--epochs 1``) and resumed with 2 processes for epoch 2 ends with the
  weights, memory and pseudo-labels of the uninterrupted 2-process run;
* resuming that 2-process checkpoint alone is a clear error (exit 2, both world sizes named);
* rank 1 writes nothing: one log, one TensorBoard file, no repeated log or metrics line;
* ``--evaluate`` under torchrun (sharded extraction, rank 0 scores) gives the single-process figures;
* ``--use-gcn``: the GCN is bitwise the same on both ranks after the link filter and the Reptile update;
  ``gcn_pretrain.py`` (one process only) refuses torchrun with a clear message.
"""
import glob
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import torch

from common.checkpoint import load_checkpoint
from common.datasets import build_dataset
from tests.e2e import ROOT, clean_env, launch_command

SYNTH_IDS = 40
_TMP = tempfile.TemporaryDirectory(prefix="mprd-ddp-test-")
WORK = _TMP.name
DATA = os.path.join(WORK, "data")
START = os.path.join(WORK, "cnn3_start.pth")
SCRIPT = os.path.join(ROOT, "mprd", "main.py")
EXACT = ("--flip-p", "0", "--pad", "0", "--random-erase", "0", "--sync-bn")  # per-rank draws off, global BN
TOL = 1e-5


def setUpModule():
    build_dataset("synthetic", DATA, num_ids=SYNTH_IDS, verbose=False)
    from mprd.model import MPRDNet
    torch.manual_seed(0)
    torch.save(MPRDNet("cnn3", pretrained=False).state_dict(), START)


def tearDownModule():
    _TMP.cleanup()


def mprd_args(exp_dir, *extra):
    return ["-d", "synthetic", "--synthetic-ids", str(SYNTH_IDS), "--data-dir", DATA, "--exp-dir", exp_dir,
            "-a", "cnn3", "--no-pretrained", "--init-weights", START, "--height", "32", "--width", "16", "-b", "8",
            "--num-instances", "4", "--iters", "3", "--eps", "0.6", "--k1", "10", "-j", "0", "--no-progress",
            "--print-freq", "0", "--test-batch-size", "64", "--device", "cpu", "--no-compare-histogram", *extra]


def run(nproc, argv, timeout=600):
    return subprocess.run(launch_command(SCRIPT, argv, nproc), cwd=WORK, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_ok(test, nproc, argv):
    p = run(nproc, argv)
    test.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
    return p


def run_dir(exp_dir, name="cnn3-s1"):
    return os.path.join(exp_dir, "mprd", "synthetic", name)


def checkpoint(exp_dir, name="cnn3-s1"):
    return load_checkpoint(os.path.join(run_dir(exp_dir, name), "checkpoint.pth"))


def log_lines(exp_dir):
    with open(os.path.join(run_dir(exp_dir), "log.txt")) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def max_difference(a, b):
    """(largest |a - b| over the float entries of two state dicts, its key); integer entries must be equal."""
    assert sorted(a) == sorted(b)
    worst = (0.0, "")
    for key, v in a.items():
        if v.is_floating_point():
            worst = max(worst, ((v.double() - b[key].double()).abs().max().item(), key))
        else:
            assert torch.equal(v, b[key]), key
    return worst


class TestTwoProcesses(unittest.TestCase):
    """One 2-process run and one single-process run of the same 2 epochs x 3 steps (evaluation each epoch,
    TensorBoard on), and checks against them."""

    COMMON = ("--epochs", "2", "--eval-step", "1", *EXACT)

    @classmethod
    def setUpClass(cls):
        cls.one, cls.two = tempfile.mkdtemp(dir=WORK), tempfile.mkdtemp(dir=WORK)
        for nproc, exp in ((1, cls.one), (2, cls.two)):
            p = run(nproc, mprd_args(exp, *cls.COMMON))
            if p.returncode != 0:
                raise AssertionError(p.stdout[-2000:] + p.stderr[-3000:])

    def test_equals_one_process(self):
        ref, ddp = checkpoint(self.one), checkpoint(self.two)
        self.assertEqual((ref.get("world_size", 1), ddp["world_size"]), (1, 2))
        self.assertTrue(torch.equal(ref["idx2labels"], ddp["idx2labels"]))  # epoch 2's clustering
        self.assertGreater(int(ref["num_cluster"]), 1)
        diff, key = max_difference(ref["state_dict"], ddp["state_dict"])
        self.assertLess(diff, TOL, key)
        self.assertEqual(ref["memory"].shape, ddp["memory"].shape)
        self.assertLess((ref["memory"] - ddp["memory"]).abs().max().item(), TOL)
        start = torch.load(START, weights_only=True)  # the 6 steps moved the weights far beyond the tolerance
        moved = max((ref["state_dict"][k] - start[k]).abs().max().item()
                    for k in ("base.0.weight", "base.9.weight", "feat_bn.weight"))
        self.assertGreater(moved, 100 * TOL)
        self.assertEqual(int(ref["state_dict"]["feat_bn.num_batches_tracked"]), 2 * 3 * 2)  # x and partners
        agree = [line for line in log_lines(self.two) if "identical on all 2 processes" in line]
        self.assertEqual(len(agree), 2, "the per-epoch cross-rank check")
        self.assertIn("pseudo-labels, memory, bank, weights", agree[0])
        self.assertFalse([line for line in log_lines(self.one) if "identical on all" in line])
        with open(os.path.join(run_dir(self.one), "results.json")) as f:
            res_one = json.load(f)["synthetic"]
        with open(os.path.join(run_dir(self.two), "results.json")) as f:
            res_two = json.load(f)["synthetic"]
        self.assertAlmostEqual(res_one["mAP"], res_two["mAP"], places=4)  # sharded evaluation, same model

    def test_stopped_run_resumes_to_the_same_state(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            common = [a for a in self.COMMON if a != "2"]
            common.remove("--epochs")
            run_ok(self, 2, mprd_args(exp, "--epochs", "1", *common))
            self.assertEqual(int(checkpoint(exp)["epoch"]), 1)
            p = run_ok(self, 2, mprd_args(exp, "--epochs", "2", "--resume", "auto", *common))
            self.assertIn("resumed from", p.stdout + p.stderr)
            ref, got = checkpoint(self.two), checkpoint(exp)
            self.assertEqual(int(got["epoch"]), 2)
            diff, key = max_difference(ref["state_dict"], got["state_dict"])
            self.assertLess(diff, 1e-6, key)
            self.assertTrue(torch.equal(ref["idx2labels"], got["idx2labels"]))
            self.assertLess((ref["memory"] - got["memory"]).abs().max().item(), 1e-6)
            self.assertEqual(ref["scheduler"], got["scheduler"])

    def test_resuming_two_processes_alone_is_a_clear_error(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            shutil.copytree(self.two, exp, dirs_exist_ok=True)
            p = run(1, mprd_args(exp, "--epochs", "3", "--resume", "auto", "--eval-step", "1", *EXACT))
            self.assertEqual(p.returncode, 2, p.stderr[-3000:])
            self.assertIn("written by 2 process(es), this run has 1", p.stderr)
            self.assertIn("--nproc_per_node 2", p.stderr)
            self.assertNotIn("Traceback", p.stderr)
            self.assertEqual(int(checkpoint(exp)["epoch"]), 2)

    def test_rank_one_writes_nothing(self):
        folder = run_dir(self.two)
        files = sorted(os.path.relpath(f, folder) for f in glob.glob(os.path.join(folder, "**"), recursive=True)
                       if os.path.isfile(f))
        self.assertEqual([f for f in files if not f.startswith("tb/")],
                         ["args.json", "checkpoint.pth", "log.txt", "metrics.jsonl", "results.json"])
        self.assertEqual(len([f for f in files if f.startswith("tb/")]), 1)  # one TensorBoard writer
        lines = log_lines(self.two)
        for text in ("run folder:", "epoch 1: loss", "epoch2: mAP", "epoch 1: pseudo-labels, memory"):
            self.assertEqual(sum(text in line for line in lines), 1, text)
        stamped = [line for line in lines if line.startswith("[")]
        self.assertEqual(len(stamped), len(set(stamped)))
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            records = [line for line in f if line.strip()]
        self.assertEqual(len(records), len(set(records)))
        self.assertEqual(sum('"train/loss"' in r for r in records), 2)
        with open(os.path.join(folder, "args.json")) as f:
            self.assertEqual(json.load(f)["world_size"], 2)
        state = checkpoint(self.two)
        self.assertEqual(state["world_size"], 2)
        self.assertEqual(len(state["rng_ranks"]), 2)  # each rank's own random state
        self.assertFalse(torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"]))

    def test_evaluate_under_torchrun(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            shutil.copytree(self.two, exp, dirs_exist_ok=True)
            run_ok(self, 2, mprd_args(exp, "--evaluate", *EXACT))
            with open(os.path.join(run_dir(exp), "results.json")) as f:
                two = json.load(f)["test/synthetic"]
            os.remove(os.path.join(run_dir(exp), "results.json"))
            run_ok(self, 1, mprd_args(exp, "--evaluate", *EXACT))
            with open(os.path.join(run_dir(exp), "results.json")) as f:
                one = json.load(f)["test/synthetic"]
            self.assertEqual(two, one)  # sharded extraction is bit-identical, rank 0 scores
            with open(os.path.join(run_dir(self.two), "results.json")) as f:
                trained = json.load(f)["synthetic"]
            self.assertAlmostEqual(two["mAP"], trained["mAP"], places=6)  # the run's own last evaluation
            self.assertGreater(two["mAP"], 0.0)


class TestGcn(unittest.TestCase):
    def test_gcn_pretraining_refuses_torchrun(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            env = dict(clean_env(), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")  # as torchrun sets, without its start
            p = subprocess.run(launch_command(os.path.join(ROOT, "mprd", "gcn_pretrain.py"), mprd_args(exp)),
                               cwd=WORK, env=env, capture_output=True, text=True, timeout=600)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("mprd/gcn_pretrain.py runs as one process (WORLD_SIZE=2)", p.stderr)
            self.assertEqual(os.listdir(exp), [])  # stopped before any folder

    def test_gcn_identical_on_every_rank(self):
        """``--use-gcn`` (a small pre-trained GCN, Reptile kept across epochs): the link filter and the Reptile
        update leave bitwise the same GCN on both ranks (the run's own per-epoch check), and Reptile moved it.
        Not compared with one process: a barely pre-trained GCN gives probabilities at 0.5, where 1e-7 rounding
        of the bank already flips which hard pairs are kept."""
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            p = subprocess.run(launch_command(os.path.join(ROOT, "mprd", "gcn_pretrain.py"), mprd_args(
                exp, "--gcn-width", "small", "--max-batches", "1", "--auc-pairs", "10", "--epochs", "1")),
                cwd=WORK, env=clean_env(), capture_output=True, text=True, timeout=600)
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            run_ok(self, 2, mprd_args(exp, "--epochs", "1", "--iters", "8", "--eval-step", "0", "--use-gcn",
                                      "--keep-gcn-updates"))   # 8 x 8 images x 2 pairs = one Reptile batch of 128
            lines = log_lines(exp)
            self.assertEqual(sum("GCN Reptile on 128 pairs" in line for line in lines), 1)
            self.assertEqual(sum("weights, gcn identical on all 2 processes" in line for line in lines), 1)
            pre = load_checkpoint(os.path.join(exp, "mprd_gcn", "synthetic", "gcn.pth"))["state_dict"]
            got = checkpoint(exp)["gcn"]["state_dict"]
            moved = max((got[k] - v).abs().max().item() for k, v in pre.items() if v.is_floating_point())
            self.assertGreater(moved, 100 * TOL)


if __name__ == "__main__":
    unittest.main()
