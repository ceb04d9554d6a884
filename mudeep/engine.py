"""MuDeep v2 train / test flow. Every object is built here, in view; the paper's pieces are in ``model.py``,
``loss.py``, ``sampler.py``, ``trainer.py`` and ``evaluate.py``.

Run folder ``<exp-dir>/mudeep/<dataset>/<NAME>/``: ``args.json``, ``log.txt``, ``metrics.jsonl``, ``results.json``,
``tb/`` (TensorBoard: ``epoch_rank1``, ``epoch_map``, ``epoch_loss`` as the original, plus per-iteration losses),
``opt.txt`` (the original's options block and one accuracy line per evaluation), ``checkpoint.pth`` (ours, atomic,
every epoch: model, optimizer, epoch, RNG, args; a killed run resumes from it) and ``NAME_<epoch>.pkl`` every
``--TRAIN.CHECKPOINT`` epochs in the original's format (``epoch``, ``state_dict`` with ``module.`` keys,
``optimizer``), which ``--resume`` / ``--evaluate`` (and the original's ``test()``) read.

Under torchrun (``torchrun --nproc_per_node N mudeep/main.py ...``) every rank builds the same global sampler and
takes P / N whole K-blocks of each global batch (``data.py``), the model is wrapped in DDP (``--sync-bn``:
SyncBatchNorm), the triplet terms see the gathered global batch (``loss.py``), augmentation and dropout are
seeded per rank, rank 0 alone writes the folder (log, metrics, TensorBoard, opt.txt, checkpoints, results), and
``checkpoint.pth`` also holds every rank's random state (``rng_ranks``) and ``world_size``: resuming it with
another number of processes is an error naming both. Evaluation is sharded (``evaluate.py``). Alone nothing
changes: the same files with the same keys.
"""
from __future__ import annotations

import glob
import io
import os
import random
import re
from typing import Dict, List, Optional

import numpy as np
import torch

from common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from common.data.samplers import mix_seed
from common.datasets import build_dataset
from common.distributed import (broadcast_module, broadcast_object, check_world_size, gather_rng_states, is_main,
                                rank_seed, restore_rng_states, unwrap, wrap_ddp)
from common.errors import PeerError, ReidError
from common.eval.rank import IS_CYTHON_AVAILABLE
from common.eval.report import results_table
from common.run import Run, setup_run
from mudeep.config import cfg_from_args
from mudeep.data import build_train_loader, folder_dataset
from mudeep.evaluate import accuracy_line, evaluate_histogram, evaluate_model
from mudeep.loss import MuDeepLoss
from mudeep.model import MuDeepV2, load_original_state_dict, parameter_groups, strip_module_prefix
from mudeep.trainer import set_epoch_lr, train_one_epoch

METHOD = "mudeep"


def setup(args) -> Run:
    """The run (torchrun: joins the process group). A P that the processes cannot share stops every rank before
    any folder exists (rank 0 prints the message)."""
    if not args.evaluate:
        try:
            check_identities_per_rank(args, int(os.environ.get("WORLD_SIZE", "1") or 1))
        except ReidError as e:
            if int(os.environ.get("RANK", "0") or 0):
                raise PeerError(e.what, e.fix, e.where) from e
            raise
    backend = "cython" if IS_CYTHON_AVAILABLE and not args.no_cython else "numpy"
    return setup_run(args, METHOD, extra_info={"evaluator_backend": backend}, distributed=True)


# ----------------------------------------------------------------------------------------------- building
def load_dataset(args, key: str):
    kwargs = {"num_ids": args.synthetic_ids} if key.startswith("synthetic") and args.synthetic_ids else {}
    return build_dataset(key, args.data_dir, combine_all=args.combine_all and key == args.dataset,
                         verbose=is_main(), **kwargs)  # torchrun: one statistics table, rank 0's


def training_set(args):
    """``--TRAIN.ROOT`` (a Market-named folder, as the original) or the ``--dataset`` split."""
    if args.train_root:
        return folder_dataset(args.train_root, args.query_root, args.gallery_root, args.name)
    return load_dataset(args, args.dataset)


def test_sets(args, datasets: Dict) -> Dict:
    """``--TEST.QUERY`` + ``--TEST.GALLERY`` (one folder test set, as the original) or the ``--testset`` keys."""
    if args.query_root or args.gallery_root:
        if not (args.query_root and args.gallery_root):
            raise ReidError("--TEST.QUERY and --TEST.GALLERY go together", fix="give both folders")
        if "folders" not in datasets:
            datasets["folders"] = folder_dataset("", args.query_root, args.gallery_root, "folders")
        return {"folders": datasets["folders"]}
    for key in args.testset:
        if key not in datasets:
            datasets[key] = load_dataset(args, key)
    return {k: datasets[k] for k in args.testset}


def build_model(args, num_classes: int, pretrained: Optional[bool] = None) -> MuDeepV2:
    return MuDeepV2(num_classes, arch=args.arch, pretrained=args.pretrained if pretrained is None else pretrained,
                    pretrained_path=args.pretrained_path, guidance=args.guidance, embed_dim=args.embed_dim,
                    dropout=args.dropout)


def build_optimizer(args, model: MuDeepV2) -> torch.optim.SGD:
    """SGD over the original's 16 groups, momentum 0.9, Nesterov, weight decay 5e-4 on every parameter."""
    return torch.optim.SGD(parameter_groups(model, args.lr, args.base_lr_factor), lr=args.lr,
                           momentum=args.momentum, weight_decay=args.weight_decay, nesterov=True)


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed random / NumPy / torch from (seed, epoch): augmentation and dropout of an epoch replay on resume.

    Under torchrun each rank seeds from :func:`common.distributed.rank_seed` (rank 0, and a single process, keep
    ``seed``), so the ranks' augmentation and dropout differ.
    """
    s = mix_seed(rank_seed(seed), epoch, 11)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)


# ----------------------------------------------------------------------------------------------- checkpoints
def read_weights(path: str, device) -> Dict:
    """A checkpoint of ours (``checkpoint.pth``) or of the original (``NAME_<epoch>.pkl``), as a dict with
    ``state_dict`` (no ``module.`` prefix), ``epoch`` and, when present, ``optimizer`` / ``rng``."""
    state = load_checkpoint(path, map_location=device)
    if "state_dict" not in state:  # a bare state dict
        state = {"state_dict": state}
    state["state_dict"] = strip_module_prefix(state["state_dict"])
    return state


def num_classes_of(state_dict: Dict) -> int:
    return int(state_dict["scale1.classifier.fc.weight"].shape[0])


def resume_path(args, run: Run) -> Optional[str]:
    if args.resume and args.resume != "auto":
        return args.resume
    if (args.resume == "auto" or args.auto_resume) and os.path.isfile(run.checkpoint_path):
        return run.checkpoint_path
    if args.resume == "auto":
        raise ReidError(f"--resume auto: no checkpoint at {run.checkpoint_path}",
                        fix="train first with the same --dataset / --NAME, or pass --resume PATH")
    return None


def restore_random_state(state: Dict, ckpt: str) -> None:
    """The random state of a checkpoint of ours: every rank's (written under torchrun; the same world size
    needed), or the single process's (then this run must be one process too). An original ``.pkl`` has none."""
    if "rng_ranks" in state:
        restore_rng_states(state["rng_ranks"], what=f"checkpoint {ckpt}")
    elif "rng" in state:
        check_world_size(state.get("world_size"), what=f"checkpoint {ckpt}")
        set_rng_state(state["rng"])


def check_identities_per_rank(args, world_size: int) -> None:
    """Under torchrun each rank takes P / W whole K-blocks of every global P x K batch."""
    if world_size > 1 and args.P % world_size:
        raise ReidError(f"--P {args.P} identities per batch cannot be shared by {world_size} processes as whole "
                        f"identities", fix=f"make --P a multiple of --nproc_per_node {world_size}")


def original_state(model: MuDeepV2, optimizer, epoch: int) -> Dict:
    """The original's checkpoint dict (DataParallel key names)."""
    return {"epoch": epoch, "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict()}


# ----------------------------------------------------------------------------------------------- opt.txt
def open_opt_file(args, run: Run, append: bool):
    """``opt.txt``: the options block (sorted, nested entries indented) and the Accuracy header, as the original;
    a resumed run appends. Ranks other than 0 get a file that goes nowhere."""
    if not run.is_main:
        return io.StringIO()
    f = open(os.path.join(run.dir, "opt.txt"), "a" if append else "w")
    if not append:
        f.write("------------------------ Options -------------------------\n")
        for k, v in sorted(cfg_from_args(args).items()):
            if isinstance(v, dict):
                f.write(f"{k}: \n" + "".join(f"    {kk}: {vv} \n" for kk, vv in sorted(v.items())))
            else:
                f.write(f"{k}: {v} \n")
        f.write("-------------------------- End ----------------------------\n")
        f.write("\n------------------------ Accuracy -------------------------\n")
        f.flush()
    return f


# ----------------------------------------------------------------------------------------------- flows
def evaluate_all(args, run: Run, model, label: str, datasets: Dict) -> Dict[str, Dict]:
    out = {}
    for key, ds in test_sets(args, datasets).items():
        res, _ = evaluate_model(model, ds, args, run.device)
        out[key] = res
        run.write_results(f"{label}/{key}", res)
    return out


def train(args, run: Run) -> Dict[str, Dict]:
    train_set = training_set(args)
    num_classes = train_set.num_train_pids
    if args.num_class is not None and args.num_class != num_classes:
        raise ReidError(f"--NUM_CLASS {args.num_class} but the training set has {num_classes} identities",
                        fix=f"pass --NUM_CLASS {num_classes} or leave it out")
    datasets = {args.dataset: train_set} if not (args.train_root or args.combine_all) else {}
    loader = build_train_loader(train_set.train, args)
    short = loader.identity_sampler.num_short
    if short:
        run.log(f"{short} identities have fewer than K={args.K} images (sampled with replacement)")
    model = build_model(args, num_classes).to(run.device)
    criterion = MuDeepLoss(args.margin, args.K, args.mining, args.ce_weight, args.tri_weight)
    ckpt = resume_path(args, run)  # every rank (same files, nothing written yet): the same answer
    state = read_weights(ckpt, run.device) if ckpt else None
    if state is not None:
        load_original_state_dict(model, state["state_dict"])
    net = wrap_ddp(model, run.device, sync_bn=args.sync_bn)  # torchrun: DDP (+ SyncBN); alone: ``model`` itself
    model = unwrap(net)  # what checkpoints save; after the SyncBN conversion (new modules), before the optimizer
    optimizer = build_optimizer(args, model)

    start, rows = 0, []
    if state is not None:
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
            for g, lr in zip(optimizer.param_groups, [g["lr"] for g in parameter_groups(model, args.lr,
                                                                                         args.base_lr_factor)]):
                g["initial_lr"] = lr  # the original's optimizer state has no initial_lr
        restore_random_state(state, ckpt)
        start = int(state.get("epoch", 0))
        run.log(f"resumed from {ckpt} (epoch {start})")
    elif args.compare_histogram:
        for key, res in evaluate_all(args, run, model, "untrained", datasets).items():
            rows.append((f"untrained {args.arch} / {key}", res))
        for key, ds in test_sets(args, datasets).items():
            res = evaluate_histogram(ds, not args.no_cython)
            run.write_results(f"histogram/{key}", res)
            rows.append((f"colour histogram / {key}", res))
    if start >= args.epochs:  # a re-run of a finished run trains nothing and shows what it stored
        return run.report_finished(start, list(args.testset), lambda r: results_table(
            [(f"trained {args.arch} / {k}", v) for k, v in r.items()]))
    opt_file = open_opt_file(args, run, append=bool(ckpt))
    results = {}
    try:
        for epoch in range(start + 1, args.epochs + 1):
            set_epoch_lr(optimizer, epoch, args.step_size, args.gamma)
            loader.set_epoch(epoch)
            seed_epoch(args.seed, epoch)
            stats = train_one_epoch(net, loader, criterion, optimizer, run.device, epoch, args.epochs,
                                    args.max_batches, args.print_freq, run.log,
                                    on_step=lambda step, s: run.log_metrics(step, prefix="iter", **s))
            run.log(f"epoch {epoch}/{args.epochs} " + " ".join(f"{k} {v:.4g}" for k, v in stats.items()))
            run.log_metrics(epoch, prefix="train", **stats)
            if args.snapshot and epoch % args.snapshot == 0:  # the original: only every SNAPSHOT epochs
                broadcast_module(model)  # torchrun: rank 0's BN statistics on every rank (each updated its own)
                results = evaluate_all(args, run, model, f"epoch{epoch}", datasets)
                first = next(iter(results.values()))
                opt_file.write(accuracy_line(epoch, first))
                opt_file.flush()
                run.log_metrics(epoch, epoch_rank1=first["rank1"], epoch_map=first["mAP_orig"],
                                epoch_loss=stats["loss"])
                for key, res in results.items():
                    run.log_metrics(epoch, prefix=f"test/{key}",
                                    **{k: v for k, v in res.items() if isinstance(v, float)})
            state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "rng": rng_state(), "num_classes": num_classes}
            if run.world_size > 1:  # only under torchrun: a single process keeps exactly the keys above
                state["rng_ranks"] = gather_rng_states()  # collective: every rank, before rank 0 saves
            save_checkpoint(run.checkpoint_path, state, args=vars(args))
            if args.checkpoint and epoch % args.checkpoint == 0:
                save_checkpoint(os.path.join(run.dir, f"{args.name}_{epoch}.pkl"),
                                original_state(model, optimizer, epoch))
    finally:
        opt_file.close()
    for key, res in results.items():
        run.write_results(key, res)
    rows += [(f"trained {args.arch} / {k}", r) for k, r in results.items()]
    if rows:
        run.log("\n" + results_table(rows, title=f"{args.dataset} -> {','.join(results)}  (percent)"))
    return results


def checkpoint_epoch(path: str) -> int:
    """The original's rule: the integer after the last '_' of the file stem's part before the first '-'."""
    stem = os.path.splitext(os.path.basename(path))[0].split("-")[0]
    m = re.search(r"_(\d+)$", stem)
    return int(m.group(1)) if m else -1


def checkpoint_list(path: str) -> List[str]:
    """A file as is; a folder: its ``.pkl`` files sorted by epoch (the original's ``test()``)."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.pkl")), key=checkpoint_epoch)
        if not files:
            raise ReidError(f"no .pkl checkpoint in {path}", where=path, fix="pass a checkpoint file or its folder")
        return files
    if not os.path.isfile(path):
        raise ReidError(f"checkpoint {path} does not exist", where=path,
                        fix="pass --resume PATH of a NAME_<epoch>.pkl or checkpoint.pth (or their folder)")
    return [path]


def test(args, run: Run, model_path: str = "", out_name: str = "", overwrite: bool = False) -> Dict[str, Dict]:
    """Evaluate a checkpoint (or every ``.pkl`` of a folder) on the test sets; with ``out_name``, write
    ``<folder>/<out_name>.txt`` with one 6-decimal accuracy line per checkpoint, as the original's ``test()``."""
    path = model_path or args.resume or (run.checkpoint_path if os.path.isfile(run.checkpoint_path) else "")
    if not path:
        raise ReidError("--evaluate needs a checkpoint", fix="pass --resume PATH (ours or the original's .pkl), "
                                                            "or train first with the same --dataset / --NAME")
    files = checkpoint_list(path)
    out_name, overwrite = out_name or args.out_name, overwrite or args.overwrite
    out_file = None
    if out_name:
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        target = os.path.join(folder, out_name + ".txt")
        exists = broadcast_object(os.path.exists(target) if run.is_main else None)  # asked before rank 0 opens it
        if exists and not overwrite:
            raise ReidError(f"{target} exists", where=target, fix="pick another --out-name or pass --overwrite")
        out_file = open(target, "w") if run.is_main else io.StringIO()  # torchrun: rank 0 writes the report
        out_file.write("------------------------ Accuracy -------------------------\n")
    datasets, results, rows = {}, {}, []
    try:
        for f in files:
            state = read_weights(f, run.device)
            model = build_model(args, num_classes_of(state["state_dict"]), pretrained=False).to(run.device)
            load_original_state_dict(model, state["state_dict"])
            epoch = int(state.get("epoch", checkpoint_epoch(f)))
            run.log(f"loaded {f} (epoch {epoch})")
            results = evaluate_all(args, run, model, f"test_epoch{epoch}", datasets)
            rows += [(f"{os.path.basename(f)} -> {k}", r) for k, r in results.items()]
            if out_file:
                out_file.write(accuracy_line(epoch, next(iter(results.values())), decimals=6))
                out_file.flush()
    finally:
        if out_file:
            out_file.close()
    run.log("\n" + results_table(rows, title=f"{args.dataset} -> {','.join(results)}  (percent)"))
    return results
