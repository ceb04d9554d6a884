"""Seeding, device selection and environment facts recorded with every run."""
from __future__ import annotations

import os
import platform
import random
import subprocess
import warnings
from typing import Dict

import numpy as np
import torch

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA).

    Args:
        seed: the seed.
        deterministic: also set ``cudnn.deterministic=True`` / ``benchmark=False`` and ask torch for
            deterministic algorithms where it can (slower on GPU; MoCo warns the same).
    """
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        warnings.warn("--deterministic: cudnn.deterministic=True, benchmark=False; this can slow training.")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def select_device(name: str = "auto") -> torch.device:
    """Resolve ``--device``.

    Args:
        name: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:i``.
    Returns:
        the device; raises a ValueError naming the fix when CUDA is asked for but absent.
    """
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}). Fix: pass --device cpu, or install a CUDA build of torch.")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device torch knows ({e}); use auto, cpu, cuda or cuda:N.")


def git_sha() -> Dict[str, object]:
    """The repository's commit and whether the tree has uncommitted changes (``{'sha': None}`` outside git)."""
    def run(*args):
        return subprocess.run(["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10)
    try:
        sha = run("rev-parse", "HEAD")
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def collect_env() -> Dict[str, object]:
    """Versions that matter for reproducing a number."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "numpy": np.__version__, "cuda_available": torch.cuda.is_available(), "num_threads": torch.get_num_threads()}
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
