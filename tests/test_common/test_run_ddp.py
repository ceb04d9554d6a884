"""The run layer under torchrun (2 gloo processes on the CPU): only rank 0 writes, failures reach every rank.

The module launches itself under ``torchrun --standalone --nproc_per_node 2``:

* ``ok``: every rank calls ``setup_run``, logs, writes metrics and results and saves a checkpoint; rank 0's files
  are the only ones (one args file, log lines once, one metrics record per step, one checkpoint with
  ``world_size`` 2), rank 1 gets its own seed and device, and ``run.is_main`` / ``run.world_size`` say so.
* ``refused``: a method that does not declare torchrun support stops on every rank before any folder exists.
* ``locked``: the run folder is locked by a live process; rank 0 prints the error block, rank 1 exits quietly
  with code 2 (``PeerError``) instead of waiting forever.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from common.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from common.errors import run_main  # noqa: E402
from common.run import setup_run  # noqa: E402


def make_args(exp_dir: str) -> argparse.Namespace:
    return argparse.Namespace(exp_dir=exp_dir, dataset="d", run_name="r", seed=5, device="cpu", tensorboard=False,
                              testset=["d"], arch="a", height=8, width=4, batch_size=2, lr=0.1, epochs=1,
                              auto_resume=True, resume="")


def rank_main(case: str, exp_dir: str, out_dir: str) -> None:
    """What each rank runs (under torchrun)."""
    def main(argv=None):
        run = setup_run(make_args(exp_dir), "m", distributed=case != "refused")
        rank = run.dist.rank
        run.log("hello from rank %d", rank)
        run.log_metrics(1, "train", loss=float(rank + 1))
        run.write_results("d", {"mAP": 0.5 + rank})
        save_checkpoint(os.path.join(run.dir, "checkpoint.pth"), {"w": torch.full((2,), float(rank))})
        torch.save({"rank": rank, "is_main": run.is_main, "world": run.world_size, "device": str(run.device),
                    "draw": torch.rand(3)}, os.path.join(out_dir, f"rank{rank}.pt"))
        run.close()
    run_main(main)


def torchrun(case: str, exp_dir: str, out_dir: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.abspath(__file__), case, exp_dir, out_dir],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


class TestRunUnderTorchrun(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.exp, self.out = os.path.join(self.tmp.name, "exp"), os.path.join(self.tmp.name, "out")
        os.makedirs(self.out)
        self.run_dir = os.path.join(self.exp, "m", "d", "r")

    def tearDown(self):
        self.tmp.cleanup()

    def test_only_rank0_writes(self):
        p = torchrun("ok", self.exp, self.out)
        self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-2000:])
        r0, r1 = (torch.load(os.path.join(self.out, f"rank{r}.pt"), weights_only=False) for r in (0, 1))
        self.assertEqual((r0["is_main"], r1["is_main"], r0["world"], r1["world"]), (True, False, 2, 2))
        self.assertFalse(torch.equal(r0["draw"], r1["draw"]), "ranks must be seeded apart")
        torch.manual_seed(5)
        self.assertTrue(torch.equal(r0["draw"], torch.rand(3)), "rank 0 keeps the single-process seed")
        self.assertEqual(sorted(os.listdir(self.run_dir)), ["args.json", "checkpoint.pth", "log.txt",
                                                            "metrics.jsonl", "results.json"])
        with open(os.path.join(self.run_dir, "log.txt")) as f:
            log = f.read()
        self.assertIn("hello from rank 0", log)
        self.assertNotIn("hello from rank 1", log)
        self.assertEqual(log.count("run folder:"), 1)
        self.assertIn("torchrun: 2 processes (gloo)", log)
        with open(os.path.join(self.run_dir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        self.assertEqual([r["train/loss"] for r in records], [1.0])
        with open(os.path.join(self.run_dir, "results.json")) as f:
            self.assertEqual(json.load(f)["d"], {"mAP": 0.5})
        with open(os.path.join(self.run_dir, "args.json")) as f:
            self.assertEqual(json.load(f)["world_size"], 2)
        ckpt = load_checkpoint(os.path.join(self.run_dir, "checkpoint.pth"))
        self.assertEqual(ckpt["world_size"], 2)
        self.assertTrue(torch.equal(ckpt["w"], torch.zeros(2)), "the checkpoint is rank 0's")
        self.assertFalse(os.path.exists(os.path.join(self.run_dir, ".lock")), "the lock is released")

    def test_rank0_failure_stops_every_rank(self):
        os.makedirs(self.run_dir)
        with open(os.path.join(self.run_dir, ".lock"), "w") as f:  # held by this (live) test process
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        p = torchrun("locked", self.exp, self.out)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(p.stderr.count("error: "), 1, p.stderr[-3000:])  # rank 0's block only, no traceback
        self.assertNotIn(os.path.join(ROOT, "common"), p.stderr, "no traceback from our code")  # torchrun's own
        self.assertIn("another run (pid", p.stderr)
        self.assertEqual(os.listdir(self.out), [])

    def test_method_without_ddp_refuses_torchrun(self):
        p = torchrun("refused", self.exp, self.out)
        self.assertNotEqual(p.returncode, 0)
        script = os.path.relpath(os.path.abspath(__file__), ROOT)  # the script torchrun ran (from cwd ROOT)
        self.assertIn(f"error: {script} (m) runs as one process: it has no torchrun / DDP support (WORLD_SIZE=2)",
                      p.stderr)
        self.assertIn(f"run it without torchrun (python {script} ...)", p.stderr)
        self.assertNotIn(os.path.join(ROOT, "common"), p.stderr, "no traceback from our code")
        self.assertFalse(os.path.exists(self.run_dir), "refused before the run folder exists")
        self.assertEqual(os.listdir(self.out), [])

    def test_alone_unchanged(self):
        env = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK") if k in os.environ}
        try:
            run = setup_run(make_args(self.exp), "m")
            self.assertEqual((run.is_main, run.world_size, run.dist.backend), (True, 1, None))
            save_checkpoint(os.path.join(run.dir, "checkpoint.pth"), {"w": torch.ones(1)})
            self.assertNotIn("world_size", load_checkpoint(os.path.join(run.dir, "checkpoint.pth")),
                             "a single process writes the same file as before")
            run.close()
        finally:
            os.environ.update(env)


if __name__ == "__main__":
    rank_main(*sys.argv[1:4])
