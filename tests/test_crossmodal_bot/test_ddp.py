"""crossmodal_bot/main.py under ``torchrun --nproc_per_node 2`` (gloo on the CPU) against one process.

Each case runs the real script in a subprocess on tiny synthetic data (ResNet-18, random init, 32x16 images):

* equal to one process on the same global batch (``synthetic``, P x K), SyncBatchNorm on, deterministic
  augmentation, SGD, center loss on: the weights, BN statistics and centers after 4 steps agree to 1e-5 while
  training moves them by far more (a triplet on the local share instead of the global batch differs by ~0.07);
* the ranks' loaders: shares of ranks 0 and 1 concatenate to the single-process batches, P x K and
  modality-balanced (``synthetic_sysu``), whole identities, the RGB / IR balance kept on each rank;
* a 2-process run killed after its first checkpoint and resumed with 2 processes ends with the weights of an
  uninterrupted 2-process run (augmentation on: each rank's random state is restored);
* resuming that 2-process checkpoint alone is a clear error (exit 2, both world sizes named);
* rank 1 writes nothing: the run folder holds one log, one TensorBoard file, no repeated log or metrics line;
* ``--mode test`` and ``--mode visualize`` under torchrun (sharded extraction, rank 0 scores and draws).
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import torch

from common.checkpoint import load_checkpoint
from common.datasets import build_dataset
from tests.e2e import ROOT, clean_env, launch_command

SYNTH_IDS = 24  # 12 training identities; P x K = 4 x 4, 2 identities per rank
_TMP = tempfile.TemporaryDirectory(prefix="bot-ddp-test-")
WORK = _TMP.name
DATA = os.path.join(WORK, "data")
SCRIPT = os.path.join(ROOT, "crossmodal_bot", "main.py")
# augmentation off (it is drawn per rank), SGD (Adam's first steps are sign-like and amplify rounding), SyncBN
EXACT = ("--random-erase", "0", "--pad", "0", "--flip-p", "0", "--optimizer", "sgd", "--lr", "1e-4",
         "--warmup-epochs", "0", "--sync-bn")
TOL = 1e-5


def setUpModule():
    for key in ("synthetic", "synthetic_sysu"):
        build_dataset(key, DATA, num_ids=SYNTH_IDS, verbose=False)


def tearDownModule():
    _TMP.cleanup()


def bot_args(dataset, exp_dir, *extra):
    return ["--dataset", dataset, "--data-dir", DATA, "--synthetic-ids", str(SYNTH_IDS), "-a", "resnet18",
            "--no-pretrained", "--height", "32", "--width", "16", "--device", "cpu", "--workers", "0",
            "--exp-dir", exp_dir, "--no-progress", "-b", "16", "--k", "4", "--eval-period", "0",
            "--max_save_model_num", "0", *extra]


def command(nproc, argv):
    return launch_command(SCRIPT, argv, nproc)


environment = clean_env


def run(nproc, argv, timeout=600):
    return subprocess.run(command(nproc, argv), cwd=WORK, env=environment(), capture_output=True, text=True,
                          timeout=timeout)


def run_dir(exp_dir, dataset):
    return os.path.join(exp_dir, "crossmodal_bot", dataset, "resnet18-s0")


def checkpoint(exp_dir, dataset, epoch):
    return load_checkpoint(os.path.join(run_dir(exp_dir, dataset), "checkpoints", f"ckpt_ep{epoch:03d}.pth"))


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


def kill_all(proc):
    """SIGKILL the torchrun agent ``proc`` and its workers (torchrun starts each worker in its own session)."""
    children = []
    for task in glob.glob(f"/proc/{proc.pid}/task/*/children"):
        with open(task) as f:
            children += [int(pid) for pid in f.read().split()]
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for pid in children:  # reaped by init once the agent is gone; wait until they have stopped writing
        deadline = time.time() + 30
        while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
            time.sleep(0.05)


class TestEqualsOneProcess(unittest.TestCase):
    """The same 4 steps alone and as 2 processes on halves of each global batch."""

    def check(self, dataset, epochs, batches, *extra):
        with tempfile.TemporaryDirectory(dir=WORK) as one, tempfile.TemporaryDirectory(dir=WORK) as two:
            common = ("--epochs", str(epochs), "--max-batches", str(batches), "--no-tensorboard", *EXACT, *extra)
            p = run(1, bot_args(dataset, one, *common))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            p = run(2, bot_args(dataset, two, *common))
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            ref, ddp = checkpoint(one, dataset, epochs), checkpoint(two, dataset, epochs)
            self.assertEqual((ref.get("world_size", 1), ddp["world_size"]), (1, 2))
            diff, key = max_difference(ref["state_dict"], ddp["state_dict"])
            self.assertLess(diff, TOL, key)
            if "center" in ref:  # the centers outside DDP: same start (rank 0's), same global gradient
                diff, key = max_difference(ref["center"], ddp["center"])
                self.assertLess(diff, TOL, key)
                moved = (ref["center"]["centers"] - checkpoint(one, dataset, 1)["center"]["centers"]).abs().max()
                self.assertGreater(moved.item(), 100 * TOL)
            # the steps moved the trainable weights (not only the BN statistics) far beyond the tolerance
            start = checkpoint(one, dataset, 1)["state_dict"] if epochs > 1 else None
            if start is not None:
                moved = max((ref["state_dict"][k] - start[k]).abs().max().item()
                            for k in ("base.conv1.weight", "base.layer4.1.conv2.weight", "classifier.weight"))
                self.assertGreater(moved, 100 * TOL)
            self.assertEqual(int(ref["state_dict"]["bottleneck.num_batches_tracked"]), epochs * batches)
            with open(os.path.join(run_dir(one, dataset), "results.json")) as f:
                res_one = json.load(f)[dataset]
            with open(os.path.join(run_dir(two, dataset), "results.json")) as f:
                res_two = json.load(f)[dataset]
            self.assertAlmostEqual(res_one["mAP"], res_two["mAP"], places=4)  # sharded evaluation, same model

    def test_pk_batches_with_center_loss(self):
        self.check("synthetic", 2, 2, "--center-loss-weight", "5e-4")


class TestBatchShares(unittest.TestCase):
    """The training loaders of ranks 0 and 1 (built here for ``world_size=2``) against the one-process loader.

    Not end to end for SYSU: on the 12-identity synthetic SYSU set at random init the training is ill-conditioned
    (a 1e-7 relative perturbation of the initial weights of a *single* process already moves a BN running
    variance by 0.02 after 3 steps), so only the batches are compared there; the P x K case above end to end.
    """

    def shares(self, dataset):
        from argparse import Namespace
        from crossmodal_bot.data import build_bot_train_loader
        ds = build_dataset(dataset, DATA, num_ids=SYNTH_IDS, verbose=False)
        args = Namespace(height=32, width=16, batch_size=16, num_instances=4, workers=0, seed=3, pad=0,
                         random_erase=0.0, flip_p=0.0, sysu_epoch="images")
        out = {}
        for world, ranks in ((1, (0,)), (2, (0, 1))):
            for rank in ranks:
                loader = build_bot_train_loader(ds, args, rank=rank, world_size=world)
                for epoch in (0, 1):
                    loader.set_epoch(epoch)
                    batches = []
                    for i, (images, pids, camids, indices) in enumerate(loader):
                        if i == 3:
                            break
                        batches.append((images, pids.tolist(), camids.tolist(), indices.tolist()))
                    out[world, rank, epoch] = batches
        return ds, out

    def check(self, dataset):
        ds, out = self.shares(dataset)
        self.assertNotEqual([b[3] for b in out[1, 0, 0]], [b[3] for b in out[1, 0, 1]])  # epochs differ
        for epoch in (0, 1):
            for one, r0, r1 in zip(out[1, 0, epoch], out[2, 0, epoch], out[2, 1, epoch]):
                self.assertEqual(len(r0[3]), 8)
                self.assertEqual(r0[3] + r1[3], one[3])  # the global batch, in the single-process order
                self.assertTrue(torch.equal(torch.cat([r0[0], r1[0]]), one[0]))
                self.assertFalse(set(r0[1]) & set(r1[1]))  # whole identities: 2 per rank, 4 images each
                for share in (r0, r1):
                    self.assertEqual(sorted(share[1].count(p) for p in set(share[1])), [4, 4])
        return ds, out

    def test_pk_shares(self):
        self.check("synthetic")

    def test_modality_balanced_shares(self):
        ds, out = self.check("synthetic_sysu")
        ir = {2, 5}
        for r in (0, 1):  # each rank keeps the balance: 2 RGB then 2 IR per identity that has both
            for _, pids, camids, _ in out[2, r, 0]:
                for start in range(0, 8, 4):
                    cams = camids[start:start + 4]
                    kinds = [c in ir for c in cams]
                    if any(kinds) and not all(kinds):
                        self.assertEqual(kinds, [False, False, True, True])


class TestResumeAndFolder(unittest.TestCase):
    """One uninterrupted 2-process run (augmentation on, TensorBoard on) and checks against it."""

    DATASET = "synthetic_sysu"
    COMMON = ("--epochs", "2", "--max-batches", "3", "--warmup-epochs", "1")

    @classmethod
    def setUpClass(cls):
        cls.exp = tempfile.mkdtemp(dir=WORK)
        p = run(2, bot_args(cls.DATASET, cls.exp, *cls.COMMON))
        if p.returncode != 0:
            raise AssertionError(p.stdout[-2000:] + p.stderr[-3000:])
        cls.stdout = p.stdout

    def test_killed_run_resumes_to_the_same_weights(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            argv = bot_args(self.DATASET, exp, *self.COMMON)
            proc = subprocess.Popen(command(2, argv), cwd=WORK, env=environment(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            ck1 = os.path.join(run_dir(exp, self.DATASET), "checkpoints", "ckpt_ep001.pth")
            deadline = time.time() + 600
            while not os.path.exists(ck1) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            kill_all(proc)
            saved = sorted(os.listdir(os.path.dirname(ck1)))
            self.assertIn("ckpt_ep001.pth", saved)
            self.assertNotIn("ckpt_ep002.pth", saved, "the run finished before it could be killed")
            p = run(2, argv)  # auto-resumes from epoch 1, both ranks' random states restored
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            self.assertIn("resumed from", p.stdout)
            ref, got = checkpoint(self.exp, self.DATASET, 2), checkpoint(exp, self.DATASET, 2)
            diff, key = max_difference(ref["state_dict"], got["state_dict"])
            self.assertLess(diff, 1e-6, key)
            self.assertEqual(ref["scheduler"], got["scheduler"])

    def test_resuming_two_processes_alone_is_a_clear_error(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            shutil.copytree(self.exp, exp, dirs_exist_ok=True)
            p = run(1, bot_args(self.DATASET, exp, "--epochs", "3", "--max-batches", "3", "--warmup-epochs", "1"))
            self.assertEqual(p.returncode, 2, p.stderr[-3000:])
            self.assertIn("written by 2 process(es), this run has 1", p.stderr)
            self.assertIn("--nproc_per_node 2", p.stderr)
            self.assertNotIn("Traceback", p.stderr)
            self.assertFalse(os.path.exists(os.path.join(run_dir(exp, self.DATASET), "checkpoints",
                                                         "ckpt_ep003.pth")))

    def test_rank_one_writes_nothing(self):
        folder = run_dir(self.exp, self.DATASET)
        files = sorted(os.path.relpath(f, folder) for f in glob.glob(os.path.join(folder, "**"), recursive=True)
                       if os.path.isfile(f))
        self.assertEqual([f for f in files if not f.startswith("tb/")],
                         ["args.json", "checkpoints/args.json", "checkpoints/ckpt_ep001.pth",
                          "checkpoints/ckpt_ep002.pth", "log.txt", "metrics.jsonl", "results.json"])
        self.assertEqual(len([f for f in files if f.startswith("tb/")]), 1)  # one TensorBoard writer
        with open(os.path.join(folder, "log.txt")) as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        self.assertEqual(sum("epoch 2/2 loss" in line for line in lines), 1)
        self.assertEqual(sum("run folder:" in line for line in lines), 1)
        stamped = [line for line in lines if line.startswith("[")]
        self.assertEqual(len(stamped), len(set(stamped)))
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            records = [line for line in f if line.strip()]
        self.assertEqual(len(records), len(set(records)))
        self.assertEqual(sum('"train/loss"' in r for r in records), 2)
        with open(os.path.join(folder, "args.json")) as f:
            self.assertEqual(json.load(f)["world_size"], 2)
        state = checkpoint(self.exp, self.DATASET, 2)
        self.assertEqual(state["world_size"], 2)
        self.assertEqual(len(state["rng_ranks"]), 2)  # each rank's own random state
        self.assertFalse(torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"]))

    def test_test_and_visualize_modes(self):
        with tempfile.TemporaryDirectory(dir=WORK) as exp:
            shutil.copytree(self.exp, exp, dirs_exist_ok=True)
            p = run(2, bot_args(self.DATASET, exp, "--mode", "test"))
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            with open(os.path.join(run_dir(exp, self.DATASET), "results.json")) as f:
                res = json.load(f)
            self.assertAlmostEqual(res["test_epoch2/" + self.DATASET]["mAP"], res[self.DATASET]["mAP"], places=6)
            p = run(2, bot_args(self.DATASET, exp, "--mode", "visualize", "--visualize-queries", "3"))
            self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-3000:])
            grids = glob.glob(os.path.join(run_dir(exp, self.DATASET), "ranked_images", self.DATASET, "*.png"))
            self.assertEqual(len(grids), 3)
            self.assertEqual(p.stdout.count("wrote 3 ranked lists"), 1)


if __name__ == "__main__":
    unittest.main()
