"""Run directory and logging: ``setup_run(args, method)`` does what detectron2's ``default_setup`` does.

Layout of ``<exp-dir>/<method>/<dataset>/<run-name>/``::

    args.json        resolved args + argv + git sha + environment
    log.txt          human-readable log (also printed)
    metrics.jsonl    one JSON object per logged step / epoch
    results.json     final figures per test set
    checkpoint.pth   last checkpoint (atomic), plus args.json beside it
    tb/              TensorBoard event files (tensorboardX; created lazily, only if --tensorboard)
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, Optional

from common.checkpoint import atomic_write_json
from common.env import collect_env, git_sha, seed_everything, select_device

LOGGER_NAME = "reid"


def setup_logger(log_file: Optional[str] = None, name: str = LOGGER_NAME) -> logging.Logger:
    """A logger printing to stdout and (optionally) appending to ``log_file``; handlers reset on each call."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


class MetricWriter:
    """JSON-lines metrics file plus a lazily created tensorboardX ``SummaryWriter``."""

    def __init__(self, run_dir: str, tensorboard: bool = True):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb_dir = os.path.join(run_dir, "tb")
        self.tensorboard = tensorboard
        self._tb = None

    @property
    def tb(self):
        if self._tb is None and self.tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(self.tb_dir)
        return self._tb

    def write(self, step: int, prefix: str = "", **scalars: float) -> None:
        """Append ``{"step": step, **scalars}``; scalars also go to TensorBoard under ``prefix/name``."""
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({(f"{prefix}/{k}" if prefix else k): _plain(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                v = _plain(v)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}" if prefix else k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v


class Run:
    """Handles of one run: folder, logger, device, metrics and results writers."""

    def __init__(self, run_dir: str, args, device, logger: logging.Logger, writer: MetricWriter):
        self.dir, self.args, self.device, self.logger, self.writer = run_dir, args, device, logger, writer
        self.checkpoint_path = os.path.join(run_dir, "checkpoint.pth")
        self.results_path = os.path.join(run_dir, "results.json")
        self.start_time = time.time()

    def log(self, msg: str, *fmt_args) -> None:
        self.logger.info(msg, *fmt_args)

    def log_metrics(self, step: int, prefix: str = "", **scalars: float) -> None:
        self.writer.write(step, prefix, **scalars)

    def write_results(self, name: str, results: Dict[str, Any]) -> None:
        """Merge ``results`` under key ``name`` into results.json (atomic)."""
        data = {}
        if os.path.exists(self.results_path):
            with open(self.results_path) as f:
                data = json.load(f)
        clean = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in results.items()}
        data[name] = clean
        data.setdefault("_meta", {})["hours"] = round((time.time() - self.start_time) / 3600, 4)
        atomic_write_json(self.results_path, data)

    def close(self) -> None:
        self.writer.close()
        for h in list(self.logger.handlers):
            h.flush()


def run_dir_for(args, method: str) -> str:
    """``<exp_dir>/<method>/<dataset>/<run_name>``, or ``args.output_path`` where a method offers that flag."""
    if getattr(args, "output_path", ""):
        return args.output_path
    return os.path.join(args.exp_dir, method, args.dataset, args.run_name)


def setup_run(args, method: str, extra_info: Optional[Dict[str, Any]] = None) -> Run:
    """Create the run folder, logger and metrics writer; seed; pick the device; write ``args.json``.

    Args:
        args: resolved ``argparse.Namespace`` (see :func:`common.cli.resolve_common`).
        method: the method folder name, e.g. ``crossmodal_bot``.
        extra_info: more facts for args.json (e.g. the evaluator backend).
    Returns:
        the :class:`Run`.
    """
    run_dir = run_dir_for(args, method)
    os.makedirs(run_dir, exist_ok=True)
    logger = setup_logger(os.path.join(run_dir, "log.txt"))
    seed_everything(args.seed, getattr(args, "deterministic", False))
    device = select_device(getattr(args, "device", "auto"))
    info = {"args": vars(args), "argv": sys.argv, "method": method, "git": git_sha(), "env": collect_env(),
            "device": str(device), **(extra_info or {})}
    atomic_write_json(os.path.join(run_dir, "args.json"), info)
    logger.info("run folder: %s", run_dir)
    logger.info("git %s%s | torch %s | device %s", info["git"].get("sha"),
                " (dirty)" if info["git"].get("dirty") else "", info["env"]["torch"], device)
    logger.info("args: %s", json.dumps(vars(args), sort_keys=True, default=str))
    return Run(run_dir, args, device, logger, MetricWriter(run_dir, getattr(args, "tensorboard", True)))
