"""The three modes of ``crossmodal_bot/main.py``: train, test and visualize. Every object is built here, in view."""
from __future__ import annotations

import glob
import os
import re
from typing import Dict, List, Optional

import numpy as np
import torch

from common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from common.datasets import build_dataset
from common.datasets.base import records_arrays
from common.env import seed_everything
from common.eval.distance import compute_distmat
from common.eval.rank import IS_CYTHON_AVAILABLE
from common.eval.report import results_table
from common.run import Run, setup_run
from crossmodal_bot.data import build_bot_train_loader
from crossmodal_bot.evaluate import evaluate_histogram, evaluate_model, extract_query_gallery
from crossmodal_bot.evaluate_sysu import sysu_trial_view
from crossmodal_bot.loss import build_loss
from crossmodal_bot.model import Baseline
from crossmodal_bot.solver import WarmupMultiStepLR, build_optimizer
from crossmodal_bot.trainer import epoch_seed, train_one_epoch

METHOD = "crossmodal_bot"
SYNTHETIC_KEYS = ("synthetic", "synthetic_sysu")  # generated on first use; ``--synthetic-ids`` sets their size


def setup(args) -> Run:
    backend = "cython" if IS_CYTHON_AVAILABLE and not args.no_cython else "numpy"
    return setup_run(args, METHOD, extra_info={"evaluator_backend": backend})


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
def checkpoint_path(run: Run, epoch: int) -> str:
    return os.path.join(run.dir, "checkpoints", f"ckpt_ep{epoch:03d}.pth")


def saved_epochs(run: Run) -> List[int]:
    files = glob.glob(os.path.join(run.dir, "checkpoints", "ckpt_ep*.pth"))
    return sorted(int(re.search(r"ckpt_ep(\d+)\.pth$", f).group(1)) for f in files)


def find_checkpoint(run: Run, epoch: int, explicit: str = "") -> Optional[str]:
    """``explicit`` if given, else the checkpoint of ``epoch`` (>= 0), else the latest one (None if none)."""
    if explicit and explicit != "auto":
        return explicit
    epochs = saved_epochs(run)
    if epoch >= 0:
        if epoch not in epochs:
            raise FileNotFoundError(f"no checkpoint for epoch {epoch} in {run.dir}/checkpoints (saved: {epochs}). "
                                    f"Fix: pick one of the saved epochs, or keep more with --max_save_model_num 0.")
        return checkpoint_path(run, epoch)
    return checkpoint_path(run, epochs[-1]) if epochs else None


def prune_checkpoints(run: Run, keep: int) -> None:
    if keep > 0:
        for e in saved_epochs(run)[:-keep]:
            os.remove(checkpoint_path(run, e))


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_all(args, run: Run, model, label: str, datasets: Dict) -> Dict[str, Dict]:
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
def train(args, run: Run) -> Dict[str, Dict]:
    train_set = load_dataset(args, args.dataset)
    datasets = {args.dataset: train_set} if not args.combine_all else {}
    loader = build_bot_train_loader(train_set, args)
    model = build_model(args, train_set.num_train_pids).to(run.device)
    criterion = build_loss(train_set.num_train_pids, args.margin, args.label_smooth, args.center_loss_weight,
                           model.feat_dim).to(run.device)
    optimizer = build_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, weight_decay_bias=args.weight_decay)
    scheduler = WarmupMultiStepLR(optimizer, milestones=args.milestones, gamma=args.gamma,
                                  warmup_factor=args.warmup_factor, warmup_iters=args.warmup_epochs)
    center = criterion.center  # the original's optional center loss: its centers have their own SGD
    center_opt = torch.optim.SGD(center.parameters(), lr=args.center_lr) if center is not None else None
    scaler = torch.amp.GradScaler("cuda") if args.amp and run.device.type == "cuda" else None

    start_epoch, rows = 0, []
    ckpt = find_checkpoint(run, args.resume_train_epoch, args.resume) if (
        args.resume or args.resume_train_epoch >= 0 or args.auto_resume) else None
    if ckpt:
        state = load_checkpoint(ckpt, map_location=run.device)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if center is not None and "center" in state:
            center.load_state_dict(state["center"])
            center_opt.load_state_dict(state["center_optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        run.log(f"resumed from {ckpt} (epoch {start_epoch})")
    elif args.compare_histogram:  # the reference rows, measured before any training step
        for key, res in evaluate_all(args, run, model, "untrained", datasets).items():
            rows.append((f"untrained {args.arch} / {key}", res))
        for key in args.testset:
            res = evaluate_histogram(datasets[key], not args.no_cython, sysu_mode=args.sysu_mode,
                                     sysu_shots=args.sysu_shots, sysu_trials=args.sysu_trials)
            run.write_results(f"histogram/{key}", res)
            rows.append((f"colour histogram / {key}", res))
        seed_everything(args.seed)

    results = {}
    for epoch in range(start_epoch, args.epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(epoch_seed(args.seed, epoch))
        stats = train_one_epoch(model, loader, criterion, optimizer, run.device, epoch, center_opt,
                                args.center_loss_weight, args.amp, scaler, args.max_batches, args.print_freq,
                                run.log, args.progress,
                                on_step=lambda step, s: run.log_metrics(step, prefix="iter", **s))
        scheduler.step()
        run.log(f"epoch {epoch + 1}/{args.epochs} " + " ".join(f"{k} {v:.4g}" for k, v in stats.items()))
        run.log_metrics(epoch + 1, prefix="train", **stats)
        state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "rng": rng_state(),
                 "num_classes": train_set.num_train_pids}
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
    return results


def _load_for_eval(args, run: Run, epoch: int):
    ckpt = find_checkpoint(run, epoch, args.resume)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {run.dir}/checkpoints. Fix: train first with the same "
                                f"--dataset/--arch/--seed (or --output_path), or pass --resume PATH.")
    state = load_checkpoint(ckpt, map_location=run.device)
    model = build_model(args, state["num_classes"], pretrained=False).to(run.device)
    model.load_state_dict(state["state_dict"])
    run.log(f"loaded {ckpt} (epoch {state['epoch']})")
    return model, state["epoch"]


def test(args, run: Run) -> Dict[str, Dict]:
    model, epoch = _load_for_eval(args, run, args.resume_test_epoch)
    results = evaluate_all(args, run, model, f"test_epoch{epoch}", {})
    report(args, run, [(f"{args.dataset} -> {k}", r) for k, r in results.items()])
    return results


def visualize(args, run: Run) -> List[str]:
    from common.eval.visualize import visualize_ranked_results
    model, _ = _load_for_eval(args, run, args.resume_visualize_epoch)
    written = []
    for key in args.testset:
        ds = load_dataset(args, key)
        qf, gf = extract_query_gallery(model, ds, args.height, args.width, run.device, args.test_batch_size,
                                       args.workers, args.flip_test, args.amp, args.progress)
        distmat, gallery, topk, what = ranking_to_show(args, ds, compute_distmat(qf.feats, gf.feats,
                                                                                 metric=args.test_metric))
        n = min(args.visualize_queries or len(ds.query), len(ds.query))
        out = os.path.join(run.dir, "ranked_images", key)
        written += visualize_ranked_results(distmat, ds.query, gallery, out, topk=topk,
                                            query_indices=list(range(n)), write_folders=True)
        run.log(f"wrote {n} ranked lists ({what}, top-{topk}) under {out}")
    return written


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
