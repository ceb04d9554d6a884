"""Run directory and logging: ``setup_run(args, method)`` does what detectron2's ``default_setup`` does.

Layout of ``<exp-dir>/<method>/<dataset>/<run-name>/``::

    args.json        resolved args + argv + git sha + environment of the training run (one file per mode:
                     args_test.json, args_visualize.json for the other modes, so they never overwrite it)
    .lock            pid of the process writing the folder (one writer per run folder)
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
from common.errors import PeerError, ReidError, report_error

LOGGER_NAME = "reid"


def torch_device(device):
    import torch
    return device if isinstance(device, torch.device) else torch.device(str(device))


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

    def __init__(self, run_dir: str, tensorboard: bool = True, enabled: bool = True):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb_dir = os.path.join(run_dir, "tb")
        self.tensorboard = tensorboard and enabled
        self.enabled = enabled  # False on ranks other than 0: nothing is written
        self._tb = None

    @property
    def tb(self):
        if self._tb is None and self.tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(self.tb_dir)
        return self._tb

    def write(self, step: int, prefix: str = "", **scalars: float) -> None:
        """Append ``{"step": step, **scalars}``; scalars also go to TensorBoard under ``prefix/name``."""
        if not self.enabled:
            return
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
    """Handles of one run: folder, logger, device, metrics and results writers.

    Under torchrun only rank 0 writes (``is_main``): on the other ranks the folder is not touched, ``log`` prints
    nothing, metrics and results are dropped; ``dist`` is the :class:`common.distributed.DistContext`.
    """

    def __init__(self, run_dir: str, args, device, logger: logging.Logger, writer: MetricWriter,
                 lock: Optional["RunLock"] = None, mode: str = "train", dist=None):
        self.dir, self.args, self.device, self.logger, self.writer = run_dir, args, device, logger, writer
        self.lock, self.mode = lock, mode
        if dist is None:
            from common.distributed import DistContext
            dist = DistContext(device=torch_device(device))
        self.dist = dist
        self.is_main = dist.rank == 0
        self.world_size = dist.world_size
        self.checkpoint_path = os.path.join(run_dir, "checkpoint.pth")
        self.results_path = os.path.join(run_dir, "results.json")
        self.start_time = time.time()

    def stored_results(self) -> Dict[str, Any]:
        """results.json as written so far ({} when none)."""
        if not os.path.exists(self.results_path):
            return {}
        with open(self.results_path) as f:
            return json.load(f)

    def report_finished(self, epoch: int, keys, table) -> Dict[str, Any]:
        """A re-run of a finished run: say so and log its stored results (nothing is trained or overwritten).

        Args:
            epoch: the epoch the run finished at.
            keys: the test sets whose stored results to show.
            table: ``table({key: results}) -> str``, the method's results table.
        Returns:
            {key: stored results} for the keys that have them.
        """
        stored = self.stored_results()
        results = {k: stored[k] for k in keys if k in stored}
        self.log(f"this run is finished (epoch {epoch}); its results ({self.results_path}):")
        if results:
            self.log("\n" + table(results))
        self.log("to train longer pass a larger --epochs; to start again pass --run-name NAME or --no-auto-resume")
        return results

    def log(self, msg: str, *fmt_args) -> None:
        self.logger.info(msg, *fmt_args)

    def log_metrics(self, step: int, prefix: str = "", **scalars: float) -> None:
        self.writer.write(step, prefix, **scalars)

    def write_results(self, name: str, results: Dict[str, Any]) -> None:
        """Merge ``results`` under key ``name`` into results.json (atomic; rank 0 only)."""
        if not self.is_main:
            return
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
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# ----------------------------------------------------------------------------------------------- one writer
class RunLock:
    """``<run>/.lock`` holding ``pid host``: one process writes a run folder at a time.

    A lock whose process is gone (killed run) is taken over; a live one stops the second run with a message.
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, ".lock")
        self.taken_over: Optional[str] = None
        self._held = False

    def acquire(self) -> "RunLock":
        import socket
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(*owner):
                    raise ReidError(f"another run (pid {owner[0]} on {owner[1]}) is writing this run folder",
                                    fix="wait for it to finish, or pass another --run-name; if that process is "
                                        "really gone, delete the .lock file", where=self.path)
                self.taken_over = "unreadable lock" if owner is None else f"pid {owner[0]}"
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self._held = True
            return self
        raise ReidError("could not take the run folder's lock", where=self.path)

    def _owner(self):
        try:
            with open(self.path) as f:
                pid, host = f.read().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._held:
            owner = self._owner()
            if owner is not None and owner[0] == os.getpid():
                os.remove(self.path)
            self._held = False


def _alive(pid: int, host: str) -> bool:
    import socket
    if host != socket.gethostname():
        return True  # another machine's process: cannot tell, so respect it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temporary_files(run_dir: str) -> list:
    """Delete ``*.tmp`` / ``*.tmp.*`` leftovers of an interrupted atomic write (under the run folder's lock)."""
    removed = []
    for dirpath, _, files in os.walk(run_dir):
        for name in files:
            if name.endswith(".tmp") or ".tmp." in name:
                os.remove(os.path.join(dirpath, name))
                removed.append(os.path.join(dirpath, name))
    return removed


# ----------------------------------------------------------------------------------------------- resume checks
#: flags that may change between a run and its resume: they do not change what the weights become.
RESUME_ALLOWED = frozenset({
    "epochs", "workers", "progress", "print_freq", "tensorboard", "resume", "auto_resume", "evaluate", "mode",
    "data_dir", "exp_dir", "device", "no_cython", "test_batch_size", "eval_period", "testset", "compare_histogram",
    "explicit", "output_path", "market_path", "duke_path", "keep_checkpoints", "resume_train_epoch",
    "resume_test_epoch", "resume_visualize_epoch", "visualize_queries", "visualize_topk", "visualize_pairs",
    "save_score", "check_images", "nonfinite_patience", "gs_verbose", "gs_save", "do_rerank", "do_tlift",
    "test_fea_batch", "test_gal_batch", "test_prob_batch", "test_dtype", "tau", "sigma", "tlift_k", "alpha",
    "distance", "flip_test", "test_metric", "sysu_mode", "sysu_shots", "sysu_trials", "run_name",
})


def has_checkpoint(run_dir: str) -> bool:
    for _, _, files in os.walk(run_dir):
        if any(f.endswith((".pth", ".pth.tar")) for f in files):
            return True
    return False


def check_resume_args(run_dir: str, args, allowed=RESUME_ALLOWED) -> None:
    """Stop when a run folder that will be resumed was trained with other args.

    Compares ``args.json`` (the stored training args) with ``vars(args)`` on every key both have, except
    ``allowed``; a difference is a :class:`ReidError` naming each flag, both values and the two ways out.
    """
    path = os.path.join(run_dir, "args.json")
    if not os.path.isfile(path) or not has_checkpoint(run_dir):
        return
    with open(path) as f:
        stored = json.load(f)
    stored = stored.get("args", stored)
    now = json.loads(json.dumps(vars(args), default=str))
    diffs = [(k, stored[k], now[k]) for k in sorted(stored) if k in now and k not in allowed and stored[k] != now[k]]
    if diffs:
        lines = "; ".join(f"--{k.replace('_', '-')}: {a!r} in the run, {b!r} now" for k, a, b in diffs)
        raise ReidError(f"this run folder holds a run trained with other settings ({lines})",
                        fix="pass --run-name NAME to start a new run beside it, or --no-auto-resume to train "
                            "this folder from scratch (its checkpoints are overwritten); or repeat the stored "
                            "values to resume it", where=run_dir)


def resume_wanted(args) -> bool:
    return bool(getattr(args, "resume", "")) or bool(getattr(args, "auto_resume", True))


def args_file_name(mode: str) -> str:
    return "args.json" if mode == "train" else f"args_{mode}.json"


def summary_line(args) -> str:
    """The few args a reader checks first; everything else is in the args file."""
    a = vars(args)
    parts = [f"{a.get('dataset')} -> {','.join(a.get('testset') or [])}", f"arch {a.get('arch')}",
             f"input {a.get('height')}x{a.get('width')}", f"batch {a.get('batch_size')}", f"lr {a.get('lr'):g}"
             if isinstance(a.get("lr"), (int, float)) else "", f"epochs {a.get('epochs')}", f"seed {a.get('seed')}"]
    return " | ".join(p for p in parts if p)


def run_dir_for(args, method: str) -> str:
    """``<exp_dir>/<method>/<dataset>/<run_name>``, or ``args.output_path`` where a method offers that flag."""
    if getattr(args, "output_path", ""):
        return args.output_path
    return os.path.join(args.exp_dir, method, args.dataset, args.run_name)


def run_mode(args) -> str:
    mode = getattr(args, "mode", None)
    if mode:
        return mode
    return "test" if getattr(args, "evaluate", False) else "train"


def setup_run(args, method: str, extra_info: Optional[Dict[str, Any]] = None, mode: Optional[str] = None,
              resume_allowed=RESUME_ALLOWED, distributed: bool = False) -> Run:
    """Create (or re-open) the run folder under its lock, check a resume, set up logging, seed, pick the device and
    write the mode's args file.

    Everything that can be checked without the folder (datasets, weight files, flags) should be checked by the
    method *before* this call, so that a failed start leaves no folder behind.

    Args:
        args: resolved ``argparse.Namespace`` (see :func:`common.cli.resolve_common`).
        method: the method folder name, e.g. ``crossmodal_bot``.
        extra_info: more facts for the args file (e.g. the evaluator backend).
        mode: ``train`` (args.json), ``test`` (args_test.json), ``visualize``; default from ``args.mode`` /
            ``args.evaluate``.
        resume_allowed: args that may differ from a stored training run that is resumed.
        distributed: the method supports torchrun (DDP, sharded batches); without it a launch with more than one
            process is refused with a clear error (each process would otherwise train the whole model alone).
    Under torchrun (``WORLD_SIZE`` > 1) this also joins the process group (:func:`common.distributed.init_distributed`):
    rank 0 does all of the above; the other ranks get a :class:`Run` that writes nothing, the rank's device and its
    own seed (:func:`common.distributed.rank_seed`), and raise :class:`common.errors.PeerError` when rank 0 fails.

    Returns:
        the :class:`Run`.
    Raises:
        ReidError: the folder is locked by a live process, or a resume would use other args (see
            :func:`check_resume_args`).
    """
    from common.distributed import broadcast_object, init_distributed, rank_seed
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and not distributed:
        script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else f"{method}/main.py"
        raise ReidError(f"{script} ({method}) runs as one process: it has no torchrun / DDP support "
                        f"(WORLD_SIZE={world})",
                        fix=f"run it without torchrun (python {script} ...); torchrun works for the training "
                            "entry points (<method>/main.py of every method, and qaconv/main_gs.py)")
    ctx = init_distributed(getattr(args, "device", "auto"))
    if not ctx.distributed:
        return _setup_main(args, method, extra_info, mode, resume_allowed, ctx)
    run, failure = None, None
    if ctx.rank == 0:  # rank 0 makes the folder and checks the resume; the others learn the outcome
        try:
            run = _setup_main(args, method, extra_info, mode, resume_allowed, ctx)
        except ReidError as e:  # reported before the others are told, so they cannot end the job first
            report_error(e)
            broadcast_object((e.what, e.fix, e.where))
            raise
        except BaseException as e:
            broadcast_object((f"rank 0 failed to set up the run ({type(e).__name__}: {e})", "", ""))
            raise
    failure = broadcast_object(failure)
    if ctx.rank != 0:
        if failure is not None:
            raise PeerError(*failure)
        seed_everything(rank_seed(args.seed, ctx.rank), getattr(args, "deterministic", False))
        logger = logging.getLogger(f"{LOGGER_NAME}.rank{ctx.rank}")
        logger.propagate, logger.disabled = False, True
        run = Run(run_dir_for(args, method), args, ctx.device, logger,
                  MetricWriter(run_dir_for(args, method), enabled=False), None, mode or run_mode(args), ctx)
    return run


def _setup_main(args, method: str, extra_info, mode, resume_allowed, ctx) -> Run:
    """:func:`setup_run` on rank 0 (or alone): the folder, lock, resume check, logger, seed and args file."""
    mode = mode or run_mode(args)
    run_dir = run_dir_for(args, method)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ReidError(f"cannot create the run folder ({e.strerror})", where=run_dir,
                        fix="pass an --exp-dir you can write to")
    if not os.access(run_dir, os.W_OK):
        raise ReidError("the run folder is not writable", where=run_dir, fix="pass an --exp-dir you can write to")
    lock = RunLock(run_dir).acquire()
    try:
        removed = clean_temporary_files(run_dir)
        logger = setup_logger(os.path.join(run_dir, "log.txt"))  # from here on an error also lands in log.txt
        if mode == "train" and resume_wanted(args):
            check_resume_args(run_dir, args, resume_allowed)
        seed_everything(args.seed, getattr(args, "deterministic", False))
        device = ctx.device if ctx.distributed else select_device(getattr(args, "device", "auto"))
    except BaseException:
        lock.release()
        raise
    info = {"args": vars(args), "argv": sys.argv, "method": method, "mode": mode, "git": git_sha(),
            "env": collect_env(), "device": str(device), "world_size": ctx.world_size, **(extra_info or {})}
    args_file = os.path.join(run_dir, args_file_name(mode))
    atomic_write_json(args_file, info)
    logger.info("run folder: %s (%s)", run_dir, mode)
    if lock.taken_over:
        logger.info("took over the lock of a run that is gone (%s)", lock.taken_over)
    for path in removed:
        logger.info("removed an interrupted write: %s", path)
    logger.info("git %s%s | torch %s | device %s", info["git"].get("sha"),
                " (dirty)" if info["git"].get("dirty") else "", info["env"]["torch"], device)
    if ctx.distributed:
        logger.info("torchrun: %d processes (%s); rank 0 writes the folder", ctx.world_size, ctx.backend)
    logger.info("%s (all args: %s)", summary_line(args), args_file)
    return Run(run_dir, args, device, logger, MetricWriter(run_dir, getattr(args, "tensorboard", True)), lock, mode,
               ctx)
