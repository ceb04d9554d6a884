"""san/main.py under ``torchrun --nproc_per_node 2`` (gloo on the CPU) against one process.

The real script runs in a subprocess on tiny synthetic data (resnet18_fc512, random init, 32x16 images, P x K =
4 x 4, 2 identities per rank, oracle textures):

* the ranks' loaders: the shares of ranks 0 and 1 concatenate to the single-process batches (whole identities);
* equal to one process on the same global batch (SyncBatchNorm on, augmentation off, SGD for the re-ID optimiser):
  in float64 (``--float64``), encoder and decoder weights after 3 steps agree to 1e-9, and the encoder / decoder
  Adams' first moments (running means of the decoder-loss gradients, linear in them) to 1e-8 of their scale, while
  training moves the weights by far more; the sharded evaluation gives the same mAP;
* a 2-process run killed after its first checkpoint and resumed with 2 processes ends with the weights of an
  uninterrupted 2-process run (augmentation on, across the warm-up / main switch);
* resuming that 2-process checkpoint alone is a clear error (exit 2, both world sizes named);
* rank 1 writes nothing: one log line per epoch, one TensorBoard file, no repeated metrics line;
* ``--evaluate --visualize-ranks`` under torchrun: the training run's figures, one picture per query, drawn once.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import torch

from common.checkpoint import load_checkpoint
from common.datasets import build_dataset
from tests.e2e import ROOT, Workspace, clean_env, launch_command

IDS = 24  # 12 training identities
WS = Workspace("san-ddp-test-", "synthetic", IDS)
SCRIPT = os.path.join(ROOT, "san", "main.py")
# augmentation off (it is drawn per rank), SyncBN, float64: in float32 the encoder / decoder Adams turn the ~1e-7
# rounding differences of a gradient whose size is near Adam's eps into O(lr) steps (3 steps: 6e-5 apart; in float64
# 1e-14 apart, measured), so the comparison runs in double precision, far below the 1e-5
EXACT = ("--random-erase", "0", "--translate-p", "0", "--flip-p", "0", "--optim", "sgd", "--lr", "1e-4",
         "--warm-up-epoch", "0", "--sync-bn", "--float64")
TOL = 1e-9


def setUpModule():
    build_dataset("synthetic", WS.data, num_ids=IDS, textures=True, verbose=False)


tearDownModule = WS.cleanup


def san_args(exp, *extra):
    return ["-s", "synthetic", "-t", "synthetic", "--root", WS.data, "--synthetic-ids", str(IDS), "-a",
            "resnet18_fc512", "--no-pretrained", "--height", "32", "--width", "16", "--train-batch-size", "16",
            "--test-batch-size", "32", "--device", "cpu", "-j", "0", "--exp-dir", exp, "--no-progress",
            "--texture-source", "true", "--stepsize", "1", "--eval-freq", "0", *extra]


def command(nproc, argv):
    return launch_command(SCRIPT, argv, nproc)


def run(nproc, argv, timeout=600):
    return subprocess.run(command(nproc, argv), cwd=WS.path, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def run_dir(exp, name="resnet18_fc512-s1"):
    return os.path.join(exp, "san", "synthetic", name)


def checkpoint(exp):
    return load_checkpoint(os.path.join(run_dir(exp), "checkpoint.pth"))


def max_difference(a, b):
    """(largest |a - b| over the float tensors of two state dicts, its key); other entries must be equal."""
    assert sorted(a) == sorted(b)
    worst = (0.0, "")
    for key, v in a.items():
        if v.is_floating_point():
            worst = max(worst, ((v.double() - b[key].double()).abs().max().item(), key))
        else:
            assert torch.equal(v, b[key]), key
    return worst


def first_moments(opt_state):
    """The Adam ``exp_avg`` tensors of an optimiser state dict, by parameter index."""
    return {i: s["exp_avg"] for i, s in opt_state["state"].items()}


def kill_tree(proc):
    """SIGKILL the torchrun agent ``proc`` and its workers (each worker runs in its own session), then wait until
    the workers are gone."""
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


class TestBatchShares(unittest.TestCase):
    def test_rank_shares_concatenate_to_the_global_batch(self):
        from san.data import build_san_train_loader
        from san.textures import true_synthetic_textures
        ds = build_dataset("synthetic", WS.data, num_ids=IDS, textures=True, verbose=False)
        tex = true_synthetic_textures(ds, ds.train)
        out = {}
        for world, ranks in ((1, (0,)), (2, (0, 1))):
            for rank in ranks:
                loader = build_san_train_loader(ds.train, tex, 32, 16, 16, 4, True, 0, 5, 0.0, 0.0, 0.0,
                                                rank=rank, world_size=world)
                for epoch in (0, 1):
                    loader.set_epoch(epoch)
                    out[world, rank, epoch] = [b for _, b in zip(range(2), loader)]
        self.assertNotEqual(out[1, 0, 0][0][3].tolist(), out[1, 0, 1][0][3].tolist())  # epochs differ
        for epoch in (0, 1):
            for one, r0, r1 in zip(out[1, 0, epoch], out[2, 0, epoch], out[2, 1, epoch]):
                self.assertEqual(len(r0[3]), 8)
                self.assertEqual(r0[3].tolist() + r1[3].tolist(), one[3].tolist())  # the single-process order
                for part in (0, 4):  # images and textures
                    self.assertTrue(torch.equal(torch.cat([r0[part], r1[part]]), one[part]))
                self.assertFalse(set(r0[1].tolist()) & set(r1[1].tolist()))  # whole identities per rank
                for share in (r0, r1):
                    pids = share[1].tolist()
                    self.assertEqual(sorted(pids.count(p) for p in set(pids)), [4, 4])


class TestEqualsOneProcess(unittest.TestCase):
    def test_three_steps_equal_one_process(self):
        with tempfile.TemporaryDirectory(dir=WS.path) as one, tempfile.TemporaryDirectory(dir=WS.path) as two:
            common = ("--max-epoch", "1", "--max-batches", "3", "--no-tensorboard", *EXACT)
            p = run(1, san_args(one, *common))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            p = run(2, san_args(two, *common))
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            ref, ddp = checkpoint(one), checkpoint(two)
            self.assertEqual((ref.get("world_size", 1), ddp["world_size"]), (1, 2))
            for part in ("encoder", "decoder"):
                diff, key = max_difference(ref[part], ddp[part])
                self.assertLess(diff, TOL, (part, key))
            for opt in ("opt_enc", "opt_dec"):  # the decoder-loss gradients (L_Rec + L_TR) themselves
                a, b = first_moments(ref[opt]), first_moments(ddp[opt])
                self.assertEqual(sorted(a), sorted(b))
                scale = max(v.abs().max().item() for v in a.values())
                self.assertGreater(scale, 0.0)
                worst = max((a[i] - b[i]).abs().max().item() for i in a)
                self.assertLess(worst, 1e-8 * scale, opt)
            self.assertEqual(int(ref["encoder"]["fc.1.num_batches_tracked"]), 3)
            # SGD moved the re-ID weights by lr x momentum buffer per step, far beyond the tolerance; the Adams
            # (lr --dec-lr 1e-5) took 3 steps of about 1e-5 per weight
            buffers = [s["momentum_buffer"] for s in ref["opt_reid"]["state"].values()]
            self.assertGreater(1e-4 * max(b.abs().max().item() for b in buffers), 100 * TOL)
            self.assertEqual({int(s["step"]) for s in ref["opt_dec"]["state"].values()}, {3})
            res = [json.load(open(os.path.join(run_dir(e), "results.json")))["synthetic"] for e in (one, two)]
            self.assertAlmostEqual(res[0]["mAP"], res[1]["mAP"], places=4)  # sharded evaluation, same model


class TestResumeAndFolder(unittest.TestCase):
    """One uninterrupted 2-process run (augmentation on, TensorBoard on) and the checks against it."""

    COMMON = ("--warm-up-epoch", "1", "--max-epoch", "2", "--max-batches", "2")

    @classmethod
    def setUpClass(cls):
        cls.exp = tempfile.mkdtemp(dir=WS.path)
        p = run(2, san_args(cls.exp, *cls.COMMON))
        if p.returncode != 0:
            raise AssertionError(p.stdout[-2000:] + p.stderr[-3000:])

    def test_killed_run_resumes_to_the_same_weights(self):
        with tempfile.TemporaryDirectory(dir=WS.path) as exp:
            argv = san_args(exp, *self.COMMON)
            proc = subprocess.Popen(command(2, argv), cwd=WS.path, env=clean_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            ck = os.path.join(run_dir(exp), "checkpoint.pth")
            deadline = time.time() + 600
            while not os.path.exists(ck) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            kill_tree(proc)
            self.assertLess(load_checkpoint(ck)["epoch"], 3, "the run finished before it could be killed")
            p = run(2, argv)  # auto-resumes; both ranks' random states restored
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            self.assertIn("resumed from", p.stdout)
            ref, got = checkpoint(self.exp), checkpoint(exp)
            self.assertEqual((ref["epoch"], got["epoch"]), (3, 3))
            for part in ("encoder", "decoder"):
                diff, key = max_difference(ref[part], got[part])
                self.assertLess(diff, 1e-6, (part, key))
            self.assertEqual(ref["sched_reid"], got["sched_reid"])

    def test_resuming_two_processes_alone_is_a_clear_error(self):
        with tempfile.TemporaryDirectory(dir=WS.path) as exp:
            shutil.copytree(self.exp, exp, dirs_exist_ok=True)
            before = os.path.getmtime(os.path.join(run_dir(exp), "checkpoint.pth"))
            p = run(1, san_args(exp, *self.COMMON))
            self.assertEqual(p.returncode, 2, p.stderr[-3000:])
            self.assertIn("written by 2 process(es), this run has 1", p.stderr)
            self.assertIn("--nproc_per_node 2", p.stderr)
            self.assertNotIn("Traceback", p.stderr)
            self.assertEqual(os.path.getmtime(os.path.join(run_dir(exp), "checkpoint.pth")), before)

    def test_rank_one_writes_nothing(self):
        folder = run_dir(self.exp)
        files = sorted(os.path.relpath(f, folder) for f in glob.glob(os.path.join(folder, "**"), recursive=True)
                       if os.path.isfile(f))
        self.assertEqual([f for f in files if not f.startswith("tb/")],
                         ["args.json", "checkpoint.pth", "log.txt", "metrics.jsonl", "results.json"])
        self.assertEqual(len([f for f in files if f.startswith("tb/")]), 1)  # one TensorBoard writer
        with open(os.path.join(folder, "log.txt")) as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        for text in ("run folder:", "epoch 1/3 ", "epoch 3/3 ", "train: "):
            self.assertEqual(sum(text in line for line in lines), 1, text)
        stamped = [line for line in lines if line.startswith("[")]
        self.assertEqual(len(stamped), len(set(stamped)))
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            records = [line for line in f if line.strip()]
        self.assertEqual(len(records), len(set(records)))
        self.assertEqual(sum('"epoch/loss_reid"' in r for r in records), 3)
        with open(os.path.join(folder, "args.json")) as f:
            self.assertEqual(json.load(f)["world_size"], 2)
        state = checkpoint(self.exp)
        self.assertEqual(state["world_size"], 2)
        self.assertEqual(len(state["rng_ranks"]), 2)  # each rank's own random state
        self.assertFalse(torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"]))

    def test_evaluate_under_torchrun(self):
        ck = os.path.join(run_dir(self.exp), "checkpoint.pth")
        p = run(2, san_args(self.exp, "--evaluate", "--load-weights", ck, "--run-name", "eval", "--visualize-ranks"))
        self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
        ev = json.load(open(os.path.join(run_dir(self.exp, "eval"), "results.json")))
        ev = [v for k, v in ev.items() if k != "_meta"][0]
        trained = json.load(open(os.path.join(run_dir(self.exp), "results.json")))["synthetic"]
        self.assertAlmostEqual(ev["mAP"], trained["mAP"], places=6)
        pictures = glob.glob(os.path.join(run_dir(self.exp, "eval"), "ranked_results", "synthetic", "*.png"))
        num_query = len(build_dataset("synthetic", WS.data, num_ids=IDS, verbose=False).query)
        self.assertEqual(len(pictures), num_query)
        self.assertEqual(p.stdout.count(f"wrote {num_query} ranked lists"), 1)


if __name__ == "__main__":
    unittest.main()
