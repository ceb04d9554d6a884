"""Scaffolding shared by the end-to-end tests: a temporary workspace holding one synthetic dataset, generated once
per test module, and a runner of a method's script in a subprocess from that workspace.

Usage in a test module::

    WS = Workspace("bot-test-", "synthetic", num_ids=120)
    setUpModule, tearDownModule = WS.generate, WS.cleanup
    p = WS.run("crossmodal_bot/main.py", ["--dataset", "synthetic", "--data-dir", WS.data, ...])
"""
import os
import subprocess
import sys
import tempfile

from common.datasets import build_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launch_command(script: str, args, nproc: int = 1) -> list:
    """``python script *args`` alone, under ``torchrun --standalone --nproc_per_node nproc`` when nproc > 1."""
    if nproc == 1:
        return [sys.executable, script, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *args]


def clean_env() -> dict:
    """This environment with one torch thread, the repository importable and no torchrun variables."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    for key in TORCHRUN_VARS:
        env.pop(key, None)
    return env


class Workspace:
    """A temporary folder (``path``) with ``data/`` for one synthetic dataset.

    Args:
        prefix: temporary folder name prefix.
        key: dataset key to generate (``synthetic`` or ``synthetic_sysu``).
        num_ids: identities of the generated dataset.
    """

    def __init__(self, prefix: str, key: str, num_ids: int):
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.path = self._tmp.name
        self.data = os.path.join(self.path, "data")
        self.key, self.num_ids = key, num_ids

    def generate(self) -> None:
        build_dataset(self.key, self.data, num_ids=self.num_ids, verbose=False)

    def cleanup(self) -> None:
        self._tmp.cleanup()

    def command(self, script: str, args) -> list:
        """``[python, <repo>/<script>, *args]``."""
        return [sys.executable, os.path.join(ROOT, script), *args]

    def run(self, script: str, args, timeout: int = 900) -> subprocess.CompletedProcess:
        """Run ``script`` (path relative to the repository root) with ``args`` from the workspace folder."""
        return subprocess.run(self.command(script, args), cwd=self.path, capture_output=True, text=True,
                              timeout=timeout)
