"""Atomic checkpoint save, safe load (``weights_only=True``) and RNG state capture for exact resume.

A checkpoint is a dict such as ``{"state_dict", "optimizer", "scheduler", "epoch", "args", "rng", ...}``.
It is written to ``<path>.tmp`` in the same folder, flushed to disk and renamed over ``path``, so a run killed
mid-save never leaves a truncated file in place of the last good checkpoint. ``args.json`` is written beside it.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, write_fn) -> None:
    """Call ``write_fn(file_object)`` on ``path + '.tmp'`` then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write_fn(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": list(_listify(random.getstate())),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _world():
    """(world size, rank) of torch.distributed, (1, 0) when it is not in use."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def save_checkpoint(path: str, state: Dict[str, Any], args: Optional[Dict[str, Any]] = None) -> str:
    """Save ``state`` (plus ``args``) atomically and write the resolved args as ``args.json`` beside it.

    Args:
        path: target file, e.g. ``<run_dir>/checkpoint.pth``.
        state: tensors, state dicts and plain Python values only (so it loads with ``weights_only=True``).
        args: resolved arguments (``vars(args)``); stored inside the checkpoint and as ``{"args": ...}`` in the
            ``args.json`` beside it (the run's own args.json keeps its argv / git / environment entries).
    Under torchrun only rank 0 writes (the others return at once), and ``state["world_size"]`` records the number of
    processes for :func:`common.distributed.check_world_size` on resume (absent alone, which means 1). Anything collective (e.g.
    ``gather_rng_states``) must be computed on every rank *before* this call.

    Returns:
        path.
    """
    world, rank = _world()
    if rank != 0:
        return path
    state = dict(state)
    if world > 1:  # alone the file is as before (no key: one process, for check_world_size)
        state.setdefault("world_size", world)
    if args is not None:
        state["args"] = json.loads(json.dumps(args, default=str))
        side = os.path.join(os.path.dirname(os.path.abspath(path)), "args.json")
        info = {}
        if os.path.isfile(side):  # the run's own args.json (argv, git, env): keep it, refresh the args
            try:
                with open(side) as f:
                    info = json.load(f)
            except (OSError, ValueError):
                info = {}
        info = info if isinstance(info, dict) and "args" in info else {}
        info["args"] = state["args"]
        atomic_write_json(side, info)
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    return path


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or unreadable file gets a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist. Fix: pass the path of a checkpoint.pth written "
                                f"by a training run (see the run folder under --exp-dir).")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(f"could not load checkpoint {path}: {e}. If it was interrupted while writing, the "
                           f"previous checkpoint is intact; a file from another tool may need converting.") from e
