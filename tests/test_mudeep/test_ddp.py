"""mudeep/main.py under ``torchrun --nproc_per_node 2`` (gloo on the CPU) against one process.

Each end-to-end case runs the real script in a subprocess on tiny synthetic data (the ``tiny`` ResNet, random init,
48x16 images, P x K = 4 x 4, so each rank holds 2 whole identities of every global batch):

* equal to one process on the same global batch: SyncBatchNorm on, augmentation and dropout off (they are drawn
  per rank), 4 SGD steps: parameters agree to 1e-5 and BN statistics to 1e-5 relative, while the last 2 steps
  moved the weights by ~1e-3 (measured: 1.2e-7 / 1.9e-6 relative; the triplet on the local share instead of the
  gathered batch gives 1.3e-3, per-rank sampler seeds 3.8e-3); sharded evaluation gives the same mAP;
* the ranks' loaders (built here for ``world_size=2``): the shares concatenate to the one-process batches; a P
  the 2 ranks cannot share stops with one message before any folder exists;
* a 2-process run SIGKILLed after its first checkpoint and resumed with 2 processes ends with the weights of an
  uninterrupted 2-process run (augmentation and dropout on);
* resuming that 2-process checkpoint alone is a clear error (exit 2, both world sizes named, nothing trained);
* rank 1 writes nothing: one log without repeated lines, one TensorBoard file, one opt.txt block;
* ``--evaluate`` under torchrun (sharded extraction, rank 0 scores and writes the original's report).
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from argparse import Namespace

import torch

from common.checkpoint import load_checkpoint
from common.datasets import build_dataset
from tests.e2e import ROOT, clean_env, launch_command

SYNTH_IDS = 24  # 12 training identities, 32 queries, 76 gallery images
_TMP = tempfile.TemporaryDirectory(prefix="mudeep-ddp-test-")
WORK = _TMP.name
DATA = os.path.join(WORK, "data")
SCRIPT = os.path.join(ROOT, "mudeep", "main.py")
# augmentation and dropout off (drawn per rank), a small lr (4 steps of a random-init net stay well conditioned)
EXACT = ("--erasing-p", "0", "--flip-p", "0", "--dropout", "0", "--lr", "0.001", "--sync-bn")
TOL = 1e-5


def setUpModule():
    build_dataset("synthetic", DATA, num_ids=SYNTH_IDS, verbose=False)


def tearDownModule():
    _TMP.cleanup()


def mudeep_args(exp_dir, *extra):
    return ["--dataset", "synthetic", "--data-dir", DATA, "--synthetic-ids", str(SYNTH_IDS), "-a", "tiny",
            "--no-pretrained", "--height", "48", "--width", "16", "--P", "4", "--K", "4", "--guidance", "16",
            "--embed-dim", "16", "--device", "cpu", "--workers", "0", "--exp-dir", exp_dir, "--no-progress",
            "--test-batch-size", "32", *extra]


def run(nproc, argv, timeout=600):
    return subprocess.run(launch_command(SCRIPT, argv, nproc), cwd=WORK, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_dir(exp_dir, name="synthetic"):
    return os.path.join(exp_dir, "mudeep", "synthetic", name)


def last_checkpoint(exp_dir):
    return load_checkpoint(os.path.join(run_dir(exp_dir), "checkpoint.pth"))


def worst(a, b, relative=False):
    """(largest |a - b| over the float entries, divided by 1 + max |a| when ``relative``; its key). Integer
    entries (``num_batches_tracked``) must be equal."""
    assert sorted(a) == sorted(b)
    out = (0.0, "")
    for key, v in a.items():
        if not v.is_floating_point():
            assert torch.equal(v, b[key]), key
            continue
        d = (v.double() - b[key].double()).abs().max().item()
        out = max(out, (d / (1.0 + v.abs().max().item()) if relative else d, key))
    return out


def kill_job(proc):
    """SIGKILL the torchrun agent ``proc`` and its workers, and wait until the workers are gone."""
    workers = []
    for task in glob.glob(f"/proc/{proc.pid}/task/*/children"):
        with open(task) as f:
            workers += [int(pid) for pid in f.read().split()]
    for pid in workers + [proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for pid in workers:
        deadline = time.time() + 30
        while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
            time.sleep(0.05)


class TestEqualsOneProcess(unittest.TestCase):
    def test_four_steps_alone_and_as_two_processes(self):
        with tempfile.TemporaryDirectory(dir=WORK) as one, tempfile.TemporaryDirectory(dir=WORK) as two:
            common = ("--epochs", "2", "--max-batches", "2", "--snapshot", "2", "--checkpoint", "1",
                      "--no-tensorboard", *EXACT)
            p = run(1, mudeep_args(one, *common))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            p = run(2, mudeep_args(two, *common))
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            ref, ddp = last_checkpoint(one), last_checkpoint(two)
            # one process: exactly the keys of before torchrun support; torchrun adds the ranks' states
            self.assertEqual(sorted(ref), ["args", "epoch", "num_classes", "optimizer", "rng", "state_dict"])
            self.assertEqual(sorted(set(ddp) - set(ref)), ["rng_ranks", "world_size"])
            self.assertEqual(ddp["world_size"], 2)
            pkl = load_checkpoint(os.path.join(run_dir(one), "synthetic_2.pkl"))
            self.assertEqual(sorted(pkl), ["epoch", "optimizer", "state_dict"])
            sd = ref["state_dict"]
            params = {k: v for k, v in sd.items() if v.is_floating_point() and "running_" not in k}
            stats = {k: v for k, v in sd.items() if "running_" in k or not v.is_floating_point()}
            diff, key = worst(params, {k: ddp["state_dict"][k] for k in params})
            self.assertLess(diff, TOL, key)
            diff, key = worst(stats, {k: ddp["state_dict"][k] for k in stats}, relative=True)
            self.assertLess(diff, TOL, key)
            self.assertEqual(int(ref["state_dict"]["scale1.feature.bn.num_batches_tracked"]), 4)
            start = load_checkpoint(os.path.join(run_dir(one), "synthetic_1.pkl"))["state_dict"]
            moved, key = worst(params, {k: start["module." + k] for k in params})  # the last 2 steps
            self.assertGreater(moved, 50 * TOL, key)
            res = [json.load(open(os.path.join(run_dir(d), "results.json")))["synthetic"] for d in (one, two)]
            self.assertAlmostEqual(res[0]["mAP"], res[1]["mAP"], places=4)
            self.assertAlmostEqual(res[0]["mAP_orig"], res[1]["mAP_orig"], places=4)


class TestBatchShares(unittest.TestCase):
    def test_rank_shares_concatenate_to_the_global_batches(self):
        from mudeep.data import build_train_loader
        ds = build_dataset("synthetic", DATA, num_ids=SYNTH_IDS, verbose=False)
        args = Namespace(height=48, width=16, flip_p=0.0, erasing_p=0.0, P=4, K=4, repeat=3, seed=7, workers=0)
        batches = {}
        for world, ranks in ((1, (0,)), (2, (0, 1))):
            for rank in ranks:
                loader = build_train_loader(ds.train, args, rank=rank, world_size=world)
                for epoch in (1, 2):
                    loader.set_epoch(epoch)
                    batches[world, rank, epoch] = [(imgs, pids.tolist(), idx.tolist()) for imgs, pids, _, idx in
                                                   loader]
        self.assertNotEqual([b[2] for b in batches[1, 0, 1]], [b[2] for b in batches[1, 0, 2]])
        for epoch in (1, 2):
            one = batches[1, 0, epoch]
            self.assertEqual(len(one), 3 * 12 * 4 // 16)
            self.assertEqual(len(batches[2, 0, epoch]), len(one))
            for full, r0, r1 in zip(one, batches[2, 0, epoch], batches[2, 1, epoch]):
                self.assertEqual(r0[2] + r1[2], full[2])  # the global batch in the single-process order
                self.assertTrue(torch.equal(torch.cat([r0[0], r1[0]]), full[0]))
                for share in (r0, r1):  # 2 whole K-blocks of one identity each
                    self.assertEqual(len(share[1]), 8)
                    self.assertEqual(len(set(share[1][:4])), 1)
                    self.assertEqual(len(set(share[1][4:])), 1)


    def test_a_batch_the_ranks_cannot_share_stops_before_any_folder(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            p = run(2, mudeep_args(exp, "--P", "3", "--epochs", "1", "--max-batches", "1"))
            self.assertNotEqual(p.returncode, 0)
            self.assertEqual(p.stderr.count("error: --P 3 identities per batch cannot be shared by 2 processes"), 1)
            self.assertIn("multiple of --nproc_per_node 2", p.stderr)
            self.assertRegex(p.stderr, r"exitcode\s*: 2 ")  # the worker exits 2; the other may be stopped first
            self.assertNotIn("mudeep/engine.py", p.stderr)  # (torchrun's agent prints its own ChildFailedError)
            self.assertFalse(os.path.exists(os.path.join(exp, "mudeep")))


class TestResumeFolderEvaluate(unittest.TestCase):
    """One uninterrupted 2-process run (augmentation, dropout and TensorBoard on) and checks against it."""

    COMMON = ("--epochs", "3", "--max-batches", "2", "--snapshot", "3", "--checkpoint", "1", "--lr", "0.01")

    @classmethod
    def setUpClass(cls):
        cls.exp = tempfile.mkdtemp(dir=WORK)
        p = run(2, mudeep_args(cls.exp, *cls.COMMON))
        if p.returncode != 0:
            raise AssertionError(p.stdout[-2000:] + p.stderr[-3000:])

    def test_killed_run_resumes_to_the_same_weights(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            argv = mudeep_args(exp, *self.COMMON)
            proc = subprocess.Popen(launch_command(SCRIPT, argv, 2), cwd=WORK, env=clean_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            first = os.path.join(run_dir(exp), "synthetic_1.pkl")  # written after checkpoint.pth of epoch 1
            deadline = time.time() + 600
            while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            kill_job(proc)
            self.assertTrue(os.path.exists(first))
            self.assertFalse(os.path.exists(os.path.join(run_dir(exp), "synthetic_3.pkl")),
                             "the run finished before it could be killed")
            p = run(2, argv)
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            self.assertIn("resumed from", p.stdout)
            ref, got = last_checkpoint(self.exp), last_checkpoint(exp)
            self.assertEqual((ref["epoch"], got["epoch"]), (3, 3))
            diff, key = worst(ref["state_dict"], got["state_dict"])
            self.assertLess(diff, 1e-6, key)

    def test_resuming_two_processes_alone_is_a_clear_error(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            shutil.copytree(self.exp, exp, dirs_exist_ok=True)
            p = run(1, mudeep_args(exp, *self.COMMON[:1], "4", *self.COMMON[2:]))
            self.assertEqual(p.returncode, 2, p.stderr[-3000:])
            self.assertIn("written by 2 process(es), this run has 1", p.stderr)
            self.assertIn("--nproc_per_node 2", p.stderr)
            self.assertNotIn("Traceback", p.stderr)
            self.assertEqual(last_checkpoint(exp)["epoch"], 3)
            self.assertFalse(os.path.exists(os.path.join(run_dir(exp), "synthetic_4.pkl")))

    def test_rank_one_writes_nothing(self):
        folder = run_dir(self.exp)
        files = sorted(os.path.relpath(f, folder) for f in glob.glob(os.path.join(folder, "**"), recursive=True)
                       if os.path.isfile(f))
        self.assertEqual([f for f in files if not f.startswith("tb/")],
                         ["args.json", "checkpoint.pth", "log.txt", "metrics.jsonl", "opt.txt", "results.json",
                          "synthetic_1.pkl", "synthetic_2.pkl", "synthetic_3.pkl"])
        self.assertEqual(len([f for f in files if f.startswith("tb/")]), 1)  # one TensorBoard writer
        with open(os.path.join(folder, "log.txt")) as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        self.assertEqual(sum("epoch 3/3 loss" in line for line in lines), 1)
        self.assertEqual(sum("run folder:" in line for line in lines), 1)
        stamped = [line for line in lines if line.startswith("[")]
        self.assertEqual(len(stamped), len(set(stamped)))
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            records = [line for line in f if line.strip()]
        self.assertEqual(len(records), len(set(records)))
        self.assertEqual(sum('"train/loss"' in r for r in records), 3)
        with open(os.path.join(folder, "opt.txt")) as f:
            opt = f.read()
        self.assertEqual(opt.count("---- Options ----"), 1)
        self.assertEqual(len([x for x in opt.splitlines() if x.startswith("Epoch:")]), 1)
        with open(os.path.join(folder, "args.json")) as f:
            self.assertEqual(json.load(f)["world_size"], 2)
        state = last_checkpoint(self.exp)
        self.assertEqual(len(state["rng_ranks"]), 2)  # each rank's own random state
        self.assertFalse(torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"]))

    def test_evaluate_under_torchrun(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            shutil.copytree(self.exp, exp, dirs_exist_ok=True)
            pkl = os.path.join(run_dir(exp), "synthetic_3.pkl")
            p = run(2, mudeep_args(exp, "--evaluate", "--resume", pkl, "--run-name", "ev", "--out-name", "ev"))
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            trained = json.load(open(os.path.join(run_dir(exp), "results.json")))["synthetic"]
            tested = json.load(open(os.path.join(run_dir(exp, "ev"), "results.json")))["test_epoch3/synthetic"]
            self.assertAlmostEqual(tested["mAP"], trained["mAP"], places=6)
            self.assertAlmostEqual(tested["mAP_orig"], trained["mAP_orig"], places=6)
            with open(os.path.join(run_dir(exp), "ev.txt")) as f:
                report = f.read().splitlines()
            self.assertEqual(len([x for x in report if x.startswith("Epoch:3, ")]), 1)
            self.assertEqual(p.stdout.count("loaded " + pkl), 1)


if __name__ == "__main__":
    unittest.main()
