"""Builds everything for ``san/main.py`` and runs the train / test flow (spec §7).

Schedule (global epoch g = 0 .. warm_up + max_epoch - 1): warm-up epochs g < warm_up use a plain Adam at
``--warm-up-lr`` (8e-6) with ExponentialLR(1.259) per epoch; then a fresh ``--optim`` (AMSGrad in the README
command) at ``--lr`` with MultiStepLR(``--stepsize``, ``--gamma`` 0.5) counted from the end of warm-up. The encoder
Adam and decoder Adam (``--dec-lr`` 1e-5, beta1 0.5) run throughout with one state. One checkpoint per epoch
(``<run>/checkpoint.pth``, atomic) holds encoder, decoder, all optimiser and scheduler states, the phase, the epoch
and the RNG states, so a resumed run (``--resume auto`` or a path; automatic when the run folder has one) continues
exactly: no warm-up re-run, no dropped decoder.

Under torchrun (``san/ddp.py``): rank 0's weights on every rank, optional ``--sync-bn``, each rank its share of the
global P x K batch, gradients averaged over ranks; the checkpoint also holds every rank's RNG state
(``rng_ranks``) and the world size, so a resume needs the same number of processes. Evaluation is sharded.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import torch

from common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from common.datasets import build_dataset
from common.distributed import (broadcast_object, check_world_size, gather_rng_states, get_world_size,
                                is_main, restore_rng_states)
from common.errors import PeerError, ReidError
from common.eval.rank import IS_CYTHON_AVAILABLE
from common.eval.report import results_table
from common.run import Run, setup_run
from san.data import build_san_train_loader
from san.ddp import prepare_models, sync_buffers
from san.decoder import SADecoder
from san.evaluate import evaluate_histogram, evaluate_model, visualize_ranks
from san.loss import ReidCriterion
from san.model import SAEncoder
from san.textures import pair_textures, true_synthetic_textures
from san.trainer import SANStep, train_one_epoch

METHOD = "san"


def setup(args) -> Run:
    backend = "cython" if IS_CYTHON_AVAILABLE and not args.no_cython else "numpy"
    return setup_run(args, METHOD, extra_info={"evaluator_backend": backend}, distributed=True)


def load_dataset(args, key: str, verbose: bool = True):
    kwargs = {}
    if key == "cuhk03":
        kwargs = dict(label_type="labeled" if args.cuhk03_labeled else "detected",
                      classic_split=args.cuhk03_classic_split, split_id=args.split_id)
    elif key in ("synthetic", "synthetic_sysu"):
        kwargs = {"textures": True}
        if args.synthetic_ids:
            kwargs["num_ids"] = args.synthetic_ids
        if args.synthetic_seed is not None:
            kwargs["seed"] = args.synthetic_seed
    def build():
        return build_dataset(key, args.data_dir, combine_all=args.combine_all and key == args.dataset,
                             verbose=verbose and is_main(), **kwargs)
    if get_world_size() == 1:
        return build()
    # torchrun (collective): rank 0 first (it may generate the synthetic data, and prints the table), then the rest
    if not is_main():
        failure = broadcast_object(None)
        if failure is not None:
            raise PeerError(*failure)
        return build()
    try:
        ds = build()
    except ReidError as e:
        broadcast_object((e.what, e.fix, e.where))
        raise
    except BaseException as e:
        broadcast_object((f"rank 0 failed to load {key} ({type(e).__name__}: {e})", "", ""))
        raise
    broadcast_object(None)
    return ds


def build_models(args, num_classes: int, device, pretrained: bool = None) -> Tuple[SAEncoder, SADecoder]:
    pretrained = args.pretrained if pretrained is None else pretrained
    enc = SAEncoder(num_classes, args.arch, pretrained=pretrained,
                    pretrained_path=args.pretrained_path if pretrained else "")
    dec = SADecoder(enc.skip_channels)
    return enc.to(device), dec.to(device)


def reid_optimizer(args, params, warm: bool):
    """The warm-up Adam (lr ``--warm-up-lr``) or the main ``--optim`` optimiser, with its scheduler."""
    if warm:
        opt = torch.optim.Adam(params, lr=args.warm_up_lr, weight_decay=args.weight_decay, betas=(0.9, 0.999))
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=args.warm_up_gamma)
    name = args.optim
    if name in ("adam", "amsgrad"):
        opt = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay,
                               betas=(args.adam_beta1, args.adam_beta2), amsgrad=name == "amsgrad")
    elif name == "sgd":
        opt = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                              dampening=args.sgd_dampening, nesterov=args.sgd_nesterov)
    elif name == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                  alpha=args.rmsprop_alpha)
    else:
        raise ReidError(f"--optim {name} is not supported", fix="use adam, amsgrad, sgd or rmsprop")
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(args.stepsize), gamma=args.gamma)


def train_textures(args, dataset) -> List[str]:
    if args.baseline:
        return None
    if args.texture_source == "true":
        return true_synthetic_textures(dataset, dataset.train)
    return pair_textures(dataset, dataset.train, args.texture_dir)


def should_eval(args, main_epoch: int) -> bool:
    """The release's rule on the main-loop epoch counter (0-based): after ``--start-eval``, every ``--eval-freq``
    epochs, and at the last epoch."""
    e = main_epoch + 1
    return (e > args.start_eval and args.eval_freq > 0 and e % args.eval_freq == 0) or e == args.max_epoch


def evaluate_all(args, run: Run, enc, label: str, datasets: Dict) -> List[Tuple[str, Dict]]:
    rows = []
    for key in args.testset:
        if key not in datasets:
            datasets[key] = load_dataset(args, key)
        res = evaluate_model(enc, datasets[key], args, run.device)
        run.write_results(f"{label}/{key}", res)
        rows.append((f"{label} / {key}", res))
    return rows


def resume_file(args, run: Run) -> str:
    """The checkpoint to resume from ('' for none); under torchrun rank 0's answer on every rank."""
    if args.resume and args.resume != "auto":
        return args.resume
    found = (args.resume == "auto" or args.auto_resume) and os.path.isfile(run.checkpoint_path)
    return run.checkpoint_path if broadcast_object(found if run.is_main else None) else ""


def restore_rng(state: Dict, what: str) -> None:
    """Every rank's own random state (a torchrun checkpoint), or the single process's (same world size needed)."""
    if "rng_ranks" in state:
        restore_rng_states(state["rng_ranks"], what=what)
    else:
        check_world_size(state.get("world_size"), what=what)
        set_rng_state(state["rng"])


def train(args, run: Run) -> Dict:
    dataset = load_dataset(args, args.dataset)
    datasets = {args.dataset: dataset} if not args.combine_all else {}
    textures = train_textures(args, dataset)
    loader = build_san_train_loader(dataset.train, textures, args.height, args.width, args.batch_size,
                                    args.num_instances, args.train_sampler == "RandomIdentitySampler",
                                    args.workers, args.seed, args.random_erase, args.translate_p, args.flip_p)
    enc, dec = build_models(args, dataset.num_train_pids, run.device)
    enc, dec = prepare_models([enc, dec], run.device, sync_bn=args.sync_bn)  # torchrun: SyncBN, rank 0's weights
    criterion = ReidCriterion(dataset.num_train_pids, epsilon=0.1 if args.label_smooth else 0.0, margin=args.margin,
                              lambda_xent=args.lambda_xent, lambda_htri=args.lambda_htri, htri_only=args.htri_only)
    opt_enc = torch.optim.Adam(enc.parameters(), lr=args.dec_lr, betas=(args.dec_beta1, 0.999))
    opt_dec = torch.optim.Adam(dec.parameters(), lr=args.dec_lr, betas=(args.dec_beta1, 0.999))
    total = args.warm_up_epoch + args.max_epoch
    start, rows = 0, []
    warm = args.warm_up_epoch > 0
    opt_reid, sched = reid_optimizer(args, enc.parameters(), warm)
    ckpt = resume_file(args, run)
    if ckpt:
        state = load_checkpoint(ckpt, map_location=run.device)
        enc.load_state_dict(state["encoder"])
        dec.load_state_dict(state["decoder"])
        start = int(state["epoch"])
        if start > args.warm_up_epoch:  # saved in the main phase (at start == warm-up the loop makes a fresh one)
            opt_reid, sched = reid_optimizer(args, enc.parameters(), warm=False)
        opt_reid.load_state_dict(state["opt_reid"])
        sched.load_state_dict(state["sched_reid"])
        opt_enc.load_state_dict(state["opt_enc"])
        opt_dec.load_state_dict(state["opt_dec"])
        restore_rng(state, what=f"checkpoint {ckpt}")
        phase = "warm-up" if start < args.warm_up_epoch else "main"
        run.log(f"resumed from {ckpt} at epoch {start} of {total} ({phase})")
    elif args.compare_histogram:
        rows += evaluate_all(args, run, enc, f"untrained {args.arch}", datasets)
        for key in args.testset:
            res = evaluate_histogram(datasets[key], args)
            run.write_results(f"histogram/{key}", res)
            rows.append((f"colour histogram / {key}", res))
    step = SANStep(enc, dec, criterion, opt_reid, opt_enc, opt_dec, use_rec=not args.baseline and args.rec_loss,
                   use_tr=not args.baseline and args.tr_loss, lambda_rec=args.lambda_rec, lambda_tr=args.lambda_tr,
                   num_instances=args.num_instances)
    if step.use_tr and args.train_sampler != "RandomIdentitySampler":
        raise ReidError("L_TR needs identity-grouped batches", fix="pass --train-sampler RandomIdentitySampler "
                        "(as the README command) or --no-tr-loss")
    run.log(f"train: {len(dataset.train)} images, {dataset.num_train_pids} ids; {args.warm_up_epoch} warm-up + "
            f"{args.max_epoch} epochs; decoder losses: rec={step.use_rec} tr={step.use_tr}")
    trained = {}
    for epoch in range(start, total):
        if epoch == args.warm_up_epoch and warm:  # end of warm-up: a fresh main optimiser (the release)
            opt_reid, sched = reid_optimizer(args, enc.parameters(), warm=False)
            step.opt_reid = opt_reid
        loader.set_epoch(epoch)
        stats = train_one_epoch(step, loader, run.device, epoch, args.max_batches, args.print_freq, run.log,
                                args.progress, on_step=lambda it, p: run.log_metrics(it, "train", **p))
        sched.step()
        sync_buffers(enc, dec)  # torchrun: rank 0's BN statistics everywhere (what it saves; for the sharded test)
        run.log(f"epoch {epoch + 1}/{total} " + " ".join(f"{k} {v:.4g}" for k, v in stats.items()))
        run.log_metrics(epoch + 1, "epoch", **stats)
        state = {"encoder": enc.state_dict(), "decoder": dec.state_dict(), "opt_reid": opt_reid.state_dict(),
                 "sched_reid": sched.state_dict(), "opt_enc": opt_enc.state_dict(), "opt_dec": opt_dec.state_dict(),
                 "epoch": epoch + 1, "rng": rng_state(), "arch": args.arch, "num_classes": dataset.num_train_pids}
        if run.world_size > 1:
            state["rng_ranks"] = gather_rng_states()  # collective: every rank, before rank 0 saves
        save_checkpoint(run.checkpoint_path, state, args=vars(args))
        main_epoch = epoch - args.warm_up_epoch
        if main_epoch >= 0 and should_eval(args, main_epoch):
            r = evaluate_all(args, run, enc, f"trained {args.arch}", datasets)
            trained = dict(r)
            for label, res in r:
                run.log(f"epoch {epoch + 1}: {label}: rank-1 {100 * res['rank1']:.1f} mAP {100 * res['mAP']:.1f}")
                run.log_metrics(epoch + 1, f"test/{label.split(' / ')[-1]}", rank1=res["rank1"], mAP=res["mAP"])
    if not trained:  # resumed after the last epoch, or max_epoch 0
        trained = dict(evaluate_all(args, run, enc, f"trained {args.arch}", datasets))
    for label, res in trained.items():  # the final figures under the bare test-set key (python -m common.results)
        run.write_results(label.split(" / ")[-1], res)
    rows += list(trained.items())
    run.log("\n" + results_table(rows, title=f"{args.dataset} -> {','.join(args.testset)}  (percent)"))
    return {label: res for label, res in rows}


def test(args, run: Run) -> Dict:
    """``--evaluate``: load the encoder (and decoder) from ``--load-weights`` / ``--resume`` and evaluate."""
    path = args.load_weights or resume_file(args, run)
    if not path:
        raise ReidError("--evaluate needs weights", fix="pass --load-weights <checkpoint.pth> or --resume auto with "
                        "the run folder of a training run")
    state = load_checkpoint(path, map_location=run.device)
    enc, _ = build_models(args, int(state["num_classes"]), run.device, pretrained=False)
    enc.load_state_dict(state["encoder"])
    datasets: Dict = {}
    rows = evaluate_all(args, run, enc, f"{args.arch} ({os.path.basename(path)})", datasets)
    run.log("\n" + results_table(rows, title=f"{','.join(args.testset)}  (percent)"))
    if args.visualize_ranks:
        for key in args.testset:
            out = os.path.join(run.dir, "ranked_results", key)
            files = visualize_ranks(enc, datasets[key], args, run.device, out)
            run.log(f"wrote {len(files)} ranked lists (top-10) under {out}")
    return dict(rows)
