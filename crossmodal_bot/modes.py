"""The three modes of ``crossmodal_bot/main.py``: train, test and visualize. Every object is built here, in view."""
from __future__ import annotations

import glob
import os
import re
from typing import Dict, List, Optional

import numpy as np
import torch

from common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from common.distributed import (broadcast_module, broadcast_object, check_world_size, gather_rng_states,
                                rank_seed, restore_rng_states, unwrap, wrap_ddp)
from common.cli import adopt_stored_args
from common.datasets import build_dataset
from common.datasets.base import records_arrays
from common.env import seed_everything
from common.errors import ReidError
from common.eval.distance import compute_distmat
from common.eval.rank import IS_CYTHON_AVAILABLE
from common.eval.report import results_table
from common.guard import DivergenceGuard, check_finite_parameters
from common.meters import format_stats
from common.preflight import check_images, check_pretrained, check_resume_file, dataset_images, load_datasets
from common.run import Run, run_dir_for, setup_run
from crossmodal_bot.data import build_bot_train_loader
from crossmodal_bot.evaluate import evaluate_histogram, evaluate_model, extract_query_gallery
from crossmodal_bot.evaluate_sysu import sysu_trial_view
from crossmodal_bot.loss import build_loss
from crossmodal_bot.model import Baseline
from crossmodal_bot.solver import WarmupMultiStepLR, build_optimizer
from crossmodal_bot.trainer import epoch_seed, train_one_epoch

METHOD = "crossmodal_bot"
SYNTHETIC_KEYS = ("synthetic", "synthetic_sysu")  # generated on first use; ``--synthetic-ids`` sets their size


#: what test / visualize take from the checkpoint's training args (an explicit flag that disagrees is an error)
MODEL_KEYS = ("arch", "height", "width", "last_stride", "neck", "neck_feat", "stem")


def setup(args) -> Run:
    backend = "cython" if IS_CYTHON_AVAILABLE and not args.no_cython else "numpy"
    return setup_run(args, METHOD, extra_info={"evaluator_backend": backend}, distributed=True)


def preflight(args) -> Dict:
    """Everything the run needs, checked before its folder exists: every dataset (training and test sets), every
    image (``--check-images``), the ImageNet file (training), the checkpoint (test / visualize, ``--resume``).

    Returns:
        {key: dataset} for the training set (training mode) and every test set.
    """
    check_resume_file(args.resume)
    keys = ([args.dataset] if args.mode == "train" else []) + list(args.testset)
    datasets = load_datasets(keys, lambda key: load_dataset(args, key))
    if args.mode == "train":
        check_pretrained(args.arch, args.pretrained, args.pretrained_path)
    else:
        ckpt = find_checkpoint_in(run_dir_for(args, METHOD), epoch_for_mode(args), args.resume)
        if ckpt is None:
            raise ReidError(f"--mode {args.mode}: no checkpoint in {run_dir_for(args, METHOD)}/checkpoints",
                            fix="train first with the same --dataset/--run-name (or --output_path), or pass "
                                "--resume PATH")
    if args.check_images:
        check_images(dataset_images(datasets.values()), args.progress)
    return datasets


def epoch_for_mode(args) -> int:
    return {"test": args.resume_test_epoch, "visualize": args.resume_visualize_epoch}.get(args.mode,
                                                                                         args.resume_train_epoch)


def load_dataset(args, key: str, verbose: bool = True):
    """Build dataset ``key``; ``--market_path`` / ``--duke_path`` point at a dataset folder directly."""
    root, kwargs = args.data_dir, {}
    direct = {"market": args.market_path, "duke": args.duke_path}.get(key)
    if direct:
        root = direct
    if key in SYNTHETIC_KEYS and args.synthetic_ids:
        kwargs["num_ids"] = args.synthetic_ids
    return build_dataset(key, root, combine_all=args.combine_all and key == args.dataset, verbose=verbose, **kwargs)


def build_model(args, num_classes: int, pretrained: Optional[bool] = None) -> Baseline:
    return Baseline(num_classes, arch=args.arch, last_stride=args.last_stride, neck=args.neck,
                    neck_feat=args.neck_feat, pretrained=args.pretrained if pretrained is None else pretrained,
                    pretrained_path=args.pretrained_path, stem_relu=getattr(args, "stem_relu", False))


# ----------------------------------------------------------------------------------------------- checkpoints
def checkpoint_path(run, epoch: int) -> str:
    """``<run>/checkpoints/ckpt_ep<epoch>.pth``; ``run`` is a :class:`Run` or a run folder."""
    return os.path.join(getattr(run, "dir", run), "checkpoints", f"ckpt_ep{epoch:03d}.pth")


def saved_epochs(run) -> List[int]:
    files = glob.glob(os.path.join(getattr(run, "dir", run), "checkpoints", "ckpt_ep*.pth"))
    return sorted(int(re.search(r"ckpt_ep(\d+)\.pth$", f).group(1)) for f in files)


def find_checkpoint_in(run_dir: str, epoch: int, explicit: str = "") -> Optional[str]:
    """``explicit`` if given, else the checkpoint of ``epoch`` (>= 0), else the latest one (None if none)."""
    if explicit and explicit != "auto":
        return explicit
    epochs = saved_epochs(run_dir)
    if epoch >= 0:
        if epoch not in epochs:
            raise ReidError(f"no checkpoint for epoch {epoch} in {run_dir}/checkpoints (saved: {epochs})",
                            fix="pick one of the saved epochs, or keep more with --max_save_model_num 0")
        return checkpoint_path(run_dir, epoch)
    return checkpoint_path(run_dir, epochs[-1]) if epochs else None


def find_checkpoint(run: Run, epoch: int, explicit: str = "") -> Optional[str]:
    """:func:`find_checkpoint_in` on rank 0, the same answer on every rank (torchrun)."""
    return broadcast_object(find_checkpoint_in(run.dir, epoch, explicit) if run.is_main else None)


def prune_checkpoints(run: Run, keep: int) -> None:
    if keep > 0 and run.is_main:
        for e in saved_epochs(run)[:-keep]:
            os.remove(checkpoint_path(run, e))


def check_identities_per_rank(args, world_size: int) -> None:
    """Under torchrun each rank takes P / W whole identities of every global P x K batch."""
    p = args.batch_size // args.num_instances
    if world_size > 1 and p % world_size:
        raise ReidError(f"--batch-size {args.batch_size} with --k {args.num_instances} is P = {p} identities per "
                        f"batch, which {world_size} processes cannot share as whole identities",
                        fix=f"make P (--p, or --batch-size / --k) a multiple of --nproc_per_node {world_size}")


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_all(args, run: Run, model, label: str, datasets: Dict) -> Dict[str, Dict]:
    """Evaluate ``model`` on every test set (torchrun: sharded extraction, rank 0 scores, all get the results)."""
    out = {}
    for key in args.testset:
        if key not in datasets:
            datasets[key] = load_dataset(args, key)
        res, _ = evaluate_model(model, datasets[key], args, run.device)
        out[key] = res
        run.write_results(f"{label}/{key}", res)
    return out


def report(args, run: Run, rows) -> None:
    """Log the results table; the title names the SYSU protocol setting when a row used it."""
    protocols = sorted({res["protocol"] for _, res in rows if "protocol" in res})
    title = f"{args.dataset} -> {','.join(args.testset)}  (percent)" + "".join(f"  [{p}]" for p in protocols)
    run.log("\n" + results_table(rows, title=title))


# ----------------------------------------------------------------------------------------------- modes
def train(args, run: Run, datasets: Optional[Dict] = None) -> Dict[str, Dict]:
    datasets = dict(datasets or {})
    train_set = datasets.pop(args.dataset) if args.dataset in datasets else load_dataset(args, args.dataset)
    if not args.combine_all:  # with --combine-all the training set's test split is in training: test a fresh one
        datasets[args.dataset] = train_set
    check_identities_per_rank(args, run.world_size)
    loader = build_bot_train_loader(train_set, args)
    model = build_model(args, train_set.num_train_pids).to(run.device)
    criterion = build_loss(train_set.num_train_pids, args.margin, args.label_smooth, args.center_loss_weight,
                           model.feat_dim).to(run.device)
    broadcast_module(criterion)  # torchrun: rank 0's centers everywhere (DDP does the same for the model)
    ckpt = find_checkpoint(run, args.resume_train_epoch, args.resume) if (
        args.resume or args.resume_train_epoch >= 0 or args.auto_resume) else None
    state = load_checkpoint(ckpt, map_location=run.device) if ckpt else None
    if state is not None:
        model.load_state_dict(state["state_dict"])
    net = wrap_ddp(model, run.device, sync_bn=args.sync_bn)  # torchrun: DDP (+ SyncBN); alone: ``model`` itself
    model = unwrap(net)  # the module checkpoints save; after the SyncBN conversion, which makes new parameters
    optimizer = build_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, weight_decay_bias=args.weight_decay,
                                optimizer=getattr(args, "optimizer", "adam"), momentum=getattr(args, "momentum", 0.9))
    scheduler = WarmupMultiStepLR(optimizer, milestones=args.milestones, gamma=args.gamma,
                                  warmup_factor=args.warmup_factor, warmup_iters=args.warmup_epochs)
    center = criterion.center  # the original's optional center loss: its centers have their own SGD
    center_opt = torch.optim.SGD(center.parameters(), lr=args.center_lr) if center is not None else None
    scaler = torch.amp.GradScaler("cuda") if args.amp and run.device.type == "cuda" else None

    start_epoch, rows = 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if center is not None and "center" in state:
            center.load_state_dict(state["center"])
            center_opt.load_state_dict(state["center_optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if "rng_ranks" in state:  # written under torchrun: every rank's own state (the same world size needed)
            restore_rng_states(state["rng_ranks"], what=f"checkpoint {ckpt}")
        else:  # one process (or an older checkpoint)
            check_world_size(state.get("world_size"), what=f"checkpoint {ckpt}")
            set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        run.log(f"resumed from {ckpt} (epoch {start_epoch})")
        if start_epoch >= args.epochs:
            return run.report_finished(start_epoch, args.testset, lambda res: results_table(
                [(f"trained {args.arch} / {k}", r) for k, r in res.items()], title=f"{args.dataset} -> "
                f"{','.join(args.testset)}  (percent; stored results)"))
    elif args.compare_histogram:  # the reference rows, measured before any training step
        for key, res in evaluate_all(args, run, model, "untrained", datasets).items():
            rows.append((f"untrained {args.arch} / {key}", res))
        for key in args.testset:
            res = broadcast_object(evaluate_histogram(
                datasets[key], not args.no_cython, sysu_mode=args.sysu_mode, sysu_shots=args.sysu_shots,
                sysu_trials=args.sysu_trials) if run.is_main else None)
            run.write_results(f"histogram/{key}", res)
            rows.append((f"colour histogram / {key}", res))
        seed_everything(rank_seed(args.seed))

    results, guard = {}, DivergenceGuard(args.nonfinite_patience)
    for epoch in range(start_epoch, args.epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(rank_seed(epoch_seed(args.seed, epoch)))  # rank 0 (alone) keeps the epoch's seed
        stats = train_one_epoch(net, loader, criterion, optimizer, run.device, epoch, center_opt,
                                args.center_loss_weight, args.amp, scaler, args.max_batches, args.print_freq,
                                run.log, args.progress,
                                on_step=lambda step, s: run.log_metrics(step, prefix="iter", **s), guard=guard,
                                num_epochs=args.epochs)
        check_finite_parameters(model, where=f"after epoch {epoch + 1}")
        scheduler.step()
        run.log(f"epoch {epoch + 1}/{args.epochs} " + format_stats(stats))
        run.log_metrics(epoch + 1, prefix="train", **stats)
        state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "rng": rng_state(),
                 "num_classes": train_set.num_train_pids}
        if run.world_size > 1:
            state["rng_ranks"] = gather_rng_states()  # collective: every rank, before rank 0 saves
        if center is not None:
            state.update(center=center.state_dict(), center_optimizer=center_opt.state_dict())
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        save_checkpoint(checkpoint_path(run, epoch + 1), state, args=vars(args))
        prune_checkpoints(run, args.keep_checkpoints)
        if (args.eval_period and (epoch + 1) % args.eval_period == 0) or epoch + 1 == args.epochs:
            results = evaluate_all(args, run, model, f"epoch{epoch + 1}", datasets)
            for key, res in results.items():
                run.log_metrics(epoch + 1, prefix=f"test/{key}", **{k: v for k, v in res.items() if
                                                                    isinstance(v, float)})
            if epoch + 1 == args.epochs:
                for key, res in results.items():
                    run.write_results(key, res)
    rows += [(f"trained {args.arch} / {k}", r) for k, r in results.items()]
    if rows:
        report(args, run, rows)
    if args.visualize_queries > 0 and results:  # a few ranked lists of the trained model (make demo)
        write_ranked_lists(args, run, model, datasets)
    return results


def _load_for_eval(args, run: Run, epoch: int):
    ckpt = find_checkpoint(run, epoch, args.resume)
    if ckpt is None:
        raise ReidError(f"no checkpoint in {run.dir}/checkpoints",
                        fix="train first with the same --dataset/--run-name (or --output_path), or pass --resume PATH")
    state = load_checkpoint(ckpt, map_location=run.device)
    taken = adopt_stored_args(args, state.get("args") or {}, MODEL_KEYS, ckpt)
    if taken:
        run.log("from the checkpoint's training args: " + ", ".join(f"{k}={getattr(args, k)}" for k in taken))
    model = build_model(args, state["num_classes"], pretrained=False).to(run.device)
    model.load_state_dict(state["state_dict"])
    run.log(f"loaded {ckpt} (epoch {state['epoch']})")
    return model, state["epoch"]


def test(args, run: Run, datasets: Optional[Dict] = None) -> Dict[str, Dict]:
    model, epoch = _load_for_eval(args, run, args.resume_test_epoch)
    results = evaluate_all(args, run, model, f"test_epoch{epoch}", dict(datasets or {}))
    report(args, run, [(f"{args.dataset} -> {k}", r) for k, r in results.items()])
    return results


def visualize(args, run: Run, datasets: Optional[Dict] = None) -> List[str]:
    model, _ = _load_for_eval(args, run, args.resume_visualize_epoch)
    return write_ranked_lists(args, run, model, datasets or {})


def write_ranked_lists(args, run: Run, model, datasets: Dict) -> List[str]:
    """Ranked-list pictures (query, then the top-k with rank, id and camera drawn; green = true match) of the first
    ``--visualize-queries`` queries of every test set, under ``<run>/ranked_images/<testset>/``."""
    from common.eval.visualize import visualize_ranked_results
    written = []
    for key in args.testset:
        ds = datasets[key] if key in datasets else load_dataset(args, key)
        qf, gf = extract_query_gallery(model, ds, args.height, args.width, run.device, args.test_batch_size,
                                       args.workers, args.flip_test, args.amp, args.progress)  # every rank
        if not run.is_main:  # torchrun: rank 0 draws
            continue
        distmat, gallery, topk, what = ranking_to_show(args, ds, compute_distmat(qf.feats, gf.feats,
                                                                                 metric=args.test_metric))
        n = min(args.visualize_queries or len(ds.query), len(ds.query))
        out = os.path.join(run.dir, "ranked_images", key)
        written += visualize_ranked_results(distmat, ds.query, gallery, out, topk=topk,
                                            query_indices=list(range(n)), write_folders=True)
        run.log(f"wrote {n} ranked lists ({what}, top-{topk}) under {out}")
    return broadcast_object(written)


def ranking_to_show(args, ds, distmat: np.ndarray):
    """The distances, gallery and top-k a ranked-list picture shows.

    Market-style protocols: the full gallery. SYSU (``ds.protocol == 'sysu'``): the gallery of trial 0 of the
    evaluated setting (``--sysu-mode``, ``--sysu-shots``), camera-3 queries without camera-2 entries, i.e.
    exactly what the first trial of the test ranks; top-k is cut to the fewest entries a query may see.

    Args:
        distmat: (num_query, num_gallery) distances to the full gallery.
    Returns:
        (distances (num_query, G'), gallery records (G'), top-k, description for the log).
    """
    if ds.protocol != "sysu":
        return distmat, ds.gallery, args.visualize_topk, "full gallery"
    _, q_camids, _ = records_arrays(ds.query)
    g_pids, g_camids, _ = records_arrays(ds.gallery)
    view, cols = sysu_trial_view(distmat, q_camids, g_pids, g_camids, args.sysu_mode, args.sysu_shots, seed=0)
    topk = min(args.visualize_topk, int(np.isfinite(view).sum(axis=1).min()))
    shots = "single" if args.sysu_shots == 1 else "multi"
    return view, [ds.gallery[i] for i in cols], topk, f"SYSU {args.sysu_mode}-search {shots}-shot, trial 0 gallery"
