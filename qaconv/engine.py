"""Train / evaluate flow shared by ``qaconv/main.py`` (QAConv 1.x, class memory) and ``qaconv/main_gs.py``
(QAConv 2.x, graph sampling). Every object is built here, in view; the paper's pieces live in ``model.py``,
``loss.py``, ``graph_sampler.py``, ``trainer.py``, ``evaluate.py``; what a run reports in ``reports.py``; the
torchrun pieces in ``ddp.py`` (one process per GPU, a step equal to one process on the global batch).

Run folder ``<exp-dir>/qaconv/<dataset>/<run-name>/``: ``args.json``, ``log.txt``, ``metrics.jsonl``,
``results.json``, ``checkpoint.pth`` (atomic; keys ``model``, ``criterion``, ``optim``, ``epoch`` as the
original's ``checkpoint.pth.tar``, plus schedule / sampler / augmentation state for an exact resume), ``tb/``,
optional ``<testset>_score.mat``, ``gs<epoch>.npz`` and ``matches/``.
"""
from __future__ import annotations

import copy
import os
import random
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.cli import adopt_stored_args
from common.data.dataset import ImageDataset
from common.data.loaders import EpochDataLoader, EpochWorkerSeeder, build_train_loader
from common.data.samplers import mix_seed
from common.datasets import build_dataset
from common.distributed import (barrier, destroy_distributed, gather_rng_states, get_world_size, rank_seed, unwrap,
                                wrap_ddp)
from common.eval.rank import IS_CYTHON_AVAILABLE
from common.eval.report import results_table
from common.errors import ReidError
from common.guard import DivergenceGuard, check_finite_parameters
from common.preflight import check_images, check_pretrained, check_resume_file, dataset_images, load_datasets
from common.run import Run, run_dir_for, setup_run
from qaconv import transforms as QT
from qaconv.config import CLASS_MEMORY_VERSIONS
from qaconv.ddp import broadcast_state, check_batch_split, restore_resume_state, sharded_loader
from qaconv.evaluate import score_to_distance, sharded_feature_maps, sharded_pairwise_scores
from qaconv.graph_sampler import GraphSampler, random_pk_length
from qaconv.loss import ClassMemoryLoss, PairwiseMatchingLoss, TripletLoss
from qaconv.model import (QAConv, ResMap, load_original_checkpoint, matcher_state_from_criterion,
                          optimizer_param_groups)
from qaconv.reports import evaluate_sets, histogram_reference, matching_dtype, result_rows, visualize_matches
from qaconv.trainer import AdaptiveSchedule, StepSchedule, pretrain_trials, train_one_epoch

METHOD = "qaconv"
#: what --evaluate takes from the checkpoint's training args (an explicit flag that disagrees is an error)
MODEL_KEYS = ("arch", "ibn", "final_layer", "neck", "height", "width", "version")


# ----------------------------------------------------------------------------------------------- building
def load_dataset(args, key: str, verbose: bool = True):
    kwargs = {"num_ids": args.synthetic_ids} if key == "synthetic" and args.synthetic_ids else {}
    return build_dataset(key, args.data_dir, combine_all=args.combine_all and key == args.dataset, verbose=verbose,
                         **kwargs)


def is_class_memory(args) -> bool:
    return args.version in CLASS_MEMORY_VERSIONS


def build_model(args, pretrained: Optional[bool] = None) -> ResMap:
    """ResMap with the neck of the version: conv + BN up to 2.0, conv with bias from 2.1 on."""
    new_neck = args.version == "2.1"
    return ResMap(args.arch, final_layer=args.final_layer, neck=args.neck, ibn=args.ibn, neck_bias=new_neck,
                  neck_bn=not new_neck, pretrained=args.pretrained if pretrained is None else pretrained,
                  pretrained_path=args.pretrained_path)


def build_matcher(args, model: ResMap) -> QAConv:
    h, w = model.feature_size(args.height, args.width)
    return QAConv(model.num_features, h, w, version="2.1" if args.version == "2.1" else "1")


def build_criterion(args, matcher: QAConv, num_classes: int) -> torch.nn.Module:
    if args.loss == "class_memory":
        return ClassMemoryLoss(matcher, num_classes, matcher.num_features, matcher.height, matcher.width,
                               args.mem_batch_size, version=args.version)
    if args.loss == "pairwise":
        return PairwiseMatchingLoss(matcher)
    return TripletLoss(matcher, args.margin)


def build_optimizer(args, model: ResMap, criterion: torch.nn.Module) -> torch.optim.SGD:
    """SGD, momentum 0.9, Nesterov, weight decay 5e-4; backbone at 0.1 lr, neck and matcher at lr."""
    return torch.optim.SGD(optimizer_param_groups(model, criterion, args.lr), lr=args.lr, momentum=0.9,
                           weight_decay=5e-4, nesterov=True)


def build_schedule(args):
    if args.version == "2.1":
        return AdaptiveSchedule(args.step_factor, args.epochs)
    return StepSchedule(args.step_size, args.epochs)


def class_distance_fn(args, model: ResMap, matcher: QAConv, records, device: torch.device):
    """``fn(indices) -> (n, n)`` class distance for the graph sampler: test-transform maps of those images,
    QAConv scores with both modules in eval mode (fp16 on CUDA with AMP), distance as at test time. Under
    torchrun the images and the gallery blocks are shared out and gathered: the same matrix on every rank."""
    def distance(indices: List[int]) -> np.ndarray:
        chosen = [records[i] for i in indices]
        maps = sharded_feature_maps(model, chosen, args.height, args.width, device, args.test_fea_batch,
                                    args.workers, amp=args.amp, progress=False, desc="graph")
        score = sharded_pairwise_scores(matcher, maps.feats, maps.feats, args.test_prob_batch, args.test_gal_batch,
                                        device=device, dtype=matching_dtype(device, args.amp))
        return score_to_distance(score, "neg" if args.version == "2.1" else "sigmoid").numpy()
    return distance


def build_loader(args, records, regime: str, sampler=None) -> EpochDataLoader:
    """Training loader: a seeded shuffle with ``drop_last`` (1.x) or the graph sampler (2.x); ``--train-aug``
    other than ``auto`` replaces the release's ``regime``. Under torchrun: this rank's share of every global batch
    (:func:`qaconv.ddp.sharded_loader`)."""
    regime = regime if getattr(args, "train_aug", "auto") == "auto" else args.train_aug
    transform = QT.build_train_transform(args.height, args.width, regime, args.min_size, args.max_size)
    if get_world_size() > 1:
        return sharded_loader(records, transform, args.batch_size, args.workers, args.seed, sampler,
                              args.num_instance if sampler is not None else 1)
    if sampler is None:
        return build_train_loader(records, args.height, args.width, args.batch_size, num_instances=0,
                                  workers=args.workers, seed=args.seed, transform=transform)
    return EpochDataLoader(ImageDataset(records, transform), batch_size=args.batch_size, sampler=sampler,
                           num_workers=args.workers, drop_last=False, pin_memory=torch.cuda.is_available(),
                           worker_init_fn=EpochWorkerSeeder(args.seed) if args.workers > 0 else None,
                           generator=torch.Generator(), seed=args.seed)


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed random / NumPy / torch from (seed, epoch) so a resumed run replays the epoch's augmentation (under
    torchrun from the rank's seed, :func:`common.distributed.rank_seed`; rank 0 keeps ``seed``)."""
    s = mix_seed(rank_seed(seed), epoch, 7)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)


# ----------------------------------------------------------------------------------------------- checkpoints
def resume_path(args, run) -> Optional[str]:
    """The checkpoint to resume / evaluate; ``run`` is a :class:`Run` or a run folder."""
    own = os.path.join(getattr(run, "dir", run), "checkpoint.pth")
    if args.resume and args.resume != "auto":
        return args.resume
    if (args.resume == "auto" or args.auto_resume or args.evaluate) and os.path.isfile(own):
        return own
    if args.resume == "auto":
        raise ReidError(f"--resume auto: no checkpoint at {own}",
                        fix="train first with the same --dataset/--run-name (or --sub_method), or pass --resume PATH")
    return None


def weights_name(args) -> str:
    """The ImageNet / IBN-Net file the backbone loads (see common.weights)."""
    depth = "".join(ch for ch in args.arch if ch.isdigit())
    ibn = None if args.ibn in (None, "none") else args.ibn
    return f"resnet{depth}" + (f"_ibn_{ibn}" if ibn else "")


def preflight(args) -> Dict:
    """Checked before the run folder exists: every dataset, every image (``--check-images``), the ImageNet file
    (training), the checkpoint (``--evaluate``, ``--resume``). Returns {key: dataset}."""
    check_resume_file(args.resume)
    keys = ([] if args.evaluate else [args.dataset]) + list(args.testset)
    datasets = load_datasets(keys, lambda key: load_dataset(args, key))
    if args.evaluate:
        if resume_path(args, run_dir_for(args, METHOD)) is None:
            raise ReidError(f"--evaluate: no checkpoint at {os.path.join(run_dir_for(args, METHOD), 'checkpoint.pth')}",
                            fix="train first with the same --dataset/--run-name, or pass --resume PATH (ours or "
                                "the original's checkpoint.pth.tar)")
    else:
        check_pretrained(weights_name(args), args.pretrained, args.pretrained_path)
    if args.check_images:
        check_images(dataset_images(datasets.values()), args.progress)
    return datasets


def read_checkpoint(path: str, device) -> Tuple[Dict, Dict, Dict]:
    """(model state, criterion state, rest) of our ``checkpoint.pth`` or of the original's ``checkpoint.pth.tar``."""
    if path.endswith(".pth.tar"):
        return load_original_checkpoint(path)
    state = load_checkpoint(path, map_location=device)
    rest = {k: v for k, v in state.items() if k not in ("model", "criterion")}
    return state["model"], state["criterion"], rest


# ----------------------------------------------------------------------------------------------- flows
def setup(args) -> Run:
    backend = "cython" if IS_CYTHON_AVAILABLE and not args.no_cython else "numpy"
    return setup_run(args, METHOD, extra_info={"evaluator_backend": backend}, distributed=True)


def reset_for_trial(model: ResMap, criterion: torch.nn.Module, base_state: Dict) -> None:
    """Start of a pre-training trial: ImageNet backbone back, fresh neck, matcher and class memory."""
    model.base.load_state_dict(base_state)
    for name, module in model.named_children():
        if name != "base":
            for m in module.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    criterion.matcher.reset_parameters()
    criterion.matcher.reset_running_stats()
    if hasattr(criterion, "reset"):
        criterion.reset()


def train(args, run: Run, datasets: Optional[Dict] = None) -> Dict[str, Dict]:
    device = run.device
    datasets = dict(datasets or {})
    train_set = datasets.pop(args.dataset) if args.dataset in datasets else load_dataset(args, args.dataset)
    if not args.combine_all:
        datasets[args.dataset] = train_set
    # torchrun: DDP over backbone + neck (rank 0's weights; --sync-bn), the criterion copied from rank 0 and fed
    # the gathered global batch (qaconv/ddp.py); alone `net` is `model` and --sync-bn does nothing
    net = wrap_ddp(build_model(args).to(device), device, sync_bn=args.sync_bn, find_unused_parameters=True)
    model = unwrap(net)
    matcher = build_matcher(args, model).to(device)
    criterion = build_criterion(args, matcher, train_set.num_train_pids).to(device)
    broadcast_state(criterion)
    optimizer = build_optimizer(args, model, criterion)
    schedule = build_schedule(args)
    sampler = None
    if not is_class_memory(args):
        sampler = GraphSampler(train_set.train, class_distance_fn(args, model, matcher, train_set.train, device),
                               args.batch_size, args.num_instance, seed=args.seed, verbose=args.gs_verbose,
                               log=run.log, rerank=args.gs_rerank, pre_epochs=args.gs_pre_epochs)
        tail = random_pk_length(sampler.index_dic, args.num_instance, args.batch_size) % args.batch_size
        check_batch_split(args.batch_size, args.num_instance, tail if args.gs_pre_epochs else 0)
    else:  # torchrun: -b a multiple of the processes (2.x: whole classes, also in a 2.0 pre-epoch's last batch)
        check_batch_split(args.batch_size, 1)
    aug_switched, start_epoch, rows, global_step = False, 0, [], None
    epoch_kwargs = dict(freeze_bn=args.freeze_bn, amp=args.amp, clip_value=args.clip_value)

    ckpt = resume_path(args, run)
    if ckpt:
        model_state, crit_state, rest = read_checkpoint(ckpt, device)
        restore_resume_state(rest, ckpt)  # same world size, else a clear error; each rank's RNG state
        model.load_state_dict(model_state)
        criterion.load_state_dict(crit_state)
        optimizer.load_state_dict(rest["optim"])
        start_epoch = int(rest["epoch"])
        if "schedule" in rest:
            schedule.load_state_dict(rest["schedule"])
        elif isinstance(schedule, AdaptiveSchedule) and "final_epochs" in rest:  # an original 2.1 checkpoint
            schedule.load_state_dict({k: rest[k] for k in ("base_loss", "final_epochs", "lr_stepped")})
        if sampler is not None and "sampler" in rest:
            sampler.load_state_dict(rest["sampler"])
        aug_switched = bool(rest.get("aug_switched", False))
        global_step = rest.get("global_step")
        run.log(f"resumed from {ckpt} (epoch {start_epoch})")
        if start_epoch >= min(args.epochs, schedule.final_epochs):
            return run.report_finished(start_epoch, args.testset, lambda res: results_table(
                result_rows(f"trained {args.arch}", res), title=f"{args.dataset} -> {','.join(args.testset)}  "
                                                               f"(percent; stored results)"))
    else:
        if args.compare_histogram:
            for key, res in evaluate_sets(args, run, model, matcher, "untrained", datasets).items():
                rows.append((f"untrained {args.arch} / {key}", res))
            for key in (args.testset if run.is_main else []):
                res = histogram_reference(datasets[key], not args.no_cython)
                run.write_results(f"histogram/{key}", res)
                rows.append((f"colour histogram / {key}", res))
        if is_class_memory(args) and args.pre_epochs > 0:
            seed_epoch(args.seed, -1)
            base_state = copy.deepcopy(model.base.state_dict())
            loader = build_loader(args, train_set.train, QT.regime_for(args.version, False))
            best = pretrain_trials(net, criterion, optimizer, loader, device,
                                   lambda: (reset_for_trial(model, criterion, base_state),
                                            broadcast_state(model, criterion)), args.num_trials,
                                   args.pre_epochs, args.max_steps, log=run.log, progress=args.progress,
                                   **epoch_kwargs)
            run.write_results("pretrain", best)

    loader = build_loader(args, train_set.train, QT.regime_for(args.version, aug_switched), sampler)
    run.log(f"augmentation: {QT.describe(loader.dataset.transform)}")
    stats, epoch, guard = {}, start_epoch, DivergenceGuard(args.nonfinite_patience)
    global_step = start_epoch * len(loader) if global_step is None else int(global_step)
    for epoch in range(start_epoch, args.epochs):
        seed_epoch(args.seed, epoch)
        loader.set_epoch(epoch)
        stats = train_one_epoch(net, criterion, optimizer, loader, device, epoch, max_batches=args.max_batches,
                                progress=args.progress, print_freq=args.print_freq, log=run.log,
                                on_step=lambda step, s: run.log_metrics(step, prefix="iter", **s), guard=guard,
                                step_offset=global_step, num_epochs=args.epochs, **epoch_kwargs)
        global_step += stats["iterations"] + stats["skipped"]
        check_finite_parameters(model, criterion, where=f"after epoch {epoch + 1}")
        lrs = [g["lr"] for g in optimizer.param_groups]
        stop = schedule.step(epoch + 1, stats["loss"], optimizer)
        run.log(f"epoch {epoch + 1}: loss {stats['loss']:.4g} acc {stats['acc']:.2%} lr "
                f"[{', '.join(f'{x:g}' for x in lrs)}] {stats['images_per_s']:.1f} img/s"
                + (f" ({stats['skipped']} batches without a finite loss)" if stats["skipped"] else ""))
        run.log_metrics(epoch + 1, prefix="train", **stats)
        if sampler is not None and args.gs_save and sampler.dist is not None and run.is_main:
            sampler.save_graph(os.path.join(run.dir, f"gs{epoch + 1}.npz"))
        if is_class_memory(args) and not aug_switched and epoch < args.epochs - 1 and stats["acc"] > args.acc_thr:
            aug_switched = True
            if QT.regime_for(args.version, True) != QT.regime_for(args.version, False):
                loader = build_loader(args, train_set.train, QT.regime_for(args.version, True))
                run.log(f"acc {stats['acc']:.2%} > {args.acc_thr:.0%}: augmentation now "
                        f"{QT.describe(loader.dataset.transform)}")
        state = {"model": model.state_dict(), "criterion": criterion.state_dict(), "optim": optimizer.state_dict(),
                 "epoch": epoch + 1, "schedule": schedule.state_dict(), "aug_switched": aug_switched,
                 "version": args.version, "num_classes": train_set.num_train_pids, "global_step": global_step}
        if isinstance(schedule, AdaptiveSchedule):  # the original's own keys, for its --resume
            state.update(final_epochs=schedule.final_epochs, base_loss=schedule.base_loss,
                         lr_stepped=schedule.lr_stepped)
        if sampler is not None:
            state["sampler"] = sampler.state_dict()
        state["rng_states"] = gather_rng_states()  # collective: every rank, before rank 0 writes
        save_checkpoint(run.checkpoint_path, state, args=vars(args))
        if stop:
            converged = isinstance(schedule, AdaptiveSchedule) and schedule.lr_stepped
            run.log(f"the learning converges at epoch {epoch + 1}" if converged else
                    f"training finished: epoch {epoch + 1} is the schedule's last")
            break
    if stats:
        run.write_results("train", {"loss": stats["loss"], "acc": stats["acc"], "epochs": epoch + 1})

    results = evaluate_sets(args, run, model, matcher, "final", datasets)
    for key, res in results.items():
        run.write_results(key, res)
    rows += result_rows(f"trained {args.arch}", results)
    run.log("\n" + results_table(rows, title=f"{args.dataset} -> {','.join(args.testset)}  (percent; shared "
                                               f"evaluator; open-reid figures in results.json)"))
    if args.visualize_pairs and run.is_main:
        visualize_matches(args, run, model, matcher, datasets)
    return results


def evaluate_only(args, run: Run, datasets: Optional[Dict] = None) -> Dict[str, Dict]:
    """``--evaluate``: load ``--resume PATH`` (ours or the original's ``checkpoint.pth.tar``) or the run's own."""
    ckpt = resume_path(args, run)
    if ckpt is None:
        raise ReidError(f"--evaluate: no checkpoint at {run.checkpoint_path}",
                        fix="train first with the same --dataset/--run-name, or pass --resume PATH (ours or the "
                            "original's checkpoint.pth.tar)")
    model_state, crit_state, rest = read_checkpoint(ckpt, run.device)
    taken = adopt_stored_args(args, rest.get("args") or {}, MODEL_KEYS, ckpt)
    if taken:
        run.log("from the checkpoint's training args: " + ", ".join(f"{k}={getattr(args, k)}" for k in taken))
    model = build_model(args, pretrained=False).to(run.device)
    model.load_state_dict(model_state)
    matcher = build_matcher(args, model).to(run.device)
    matcher.load_state_dict(matcher_state_from_criterion(crit_state))
    run.log(f"loaded {ckpt} (epoch {rest.get('epoch')})")
    datasets = dict(datasets or {})
    results = evaluate_sets(args, run, model, matcher, f"evaluate_epoch{rest.get('epoch')}", datasets)
    run.log("\n" + results_table(result_rows(f"{args.dataset}", results), title="evaluation (percent)"))
    if args.visualize_pairs and run.is_main:
        visualize_matches(args, run, model, matcher, datasets)
    return results


def run_main(args) -> Dict[str, Dict]:
    datasets = preflight(args)
    run = setup(args)
    try:
        results = evaluate_only(args, run, datasets) if args.evaluate else train(args, run, datasets)
        barrier()  # torchrun: the others wait for rank 0's pictures and files
        return results
    finally:
        run.close()
        destroy_distributed()
