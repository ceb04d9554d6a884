"""Builds everything for ``mprd/main.py`` and runs the unsupervised train / test flow (spec §4, §9).

Ground truth: the training records are stripped of their identities as soon as they are loaded
(:func:`unlabelled_train`); the hidden identities are kept apart and used only by :func:`log_clustering` for the
NMI / ARI diagnostics. Training never reads them (tested: permuted or blanked identities give identical weights).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from common.data.dataset import ImageDataset
from common.data.loaders import EpochWorkerSeeder
from common.data.samplers import mix_seed
from common.data.transforms import build_transforms
from common.datasets import build_dataset
from common.datasets.base import Record
from common.distributed import (DistributedBatchSampler, check_world_size, gather_rng_states, get_world_size,
                                rank_seed, restore_rng_states, unwrap, wrap_ddp)
from common.env import seed_everything
from common.errors import ReidError
from common.eval.report import results_table
from common.run import Run
from mprd.cluster import cluster_quality, distance_summary, pseudo_labels_with_core
from mprd.ddp import TwoViews, check_ranks_agree, on_rank0, rank0_link_fn, sync_gcn
from mprd.evaluate import evaluate_histogram, evaluate_model, extract
from mprd.memory import ClusterMemory
from mprd.model import MPRDNet
from mprd.sampler import IterBatchSampler, RandomMultipleGallerySampler
from mprd.trainer import EpochState, train_epoch

METHOD = "mprd"


def load_dataset(args):
    kwargs = {}
    if args.dataset == "synthetic":
        if args.synthetic_ids:
            kwargs["num_ids"] = args.synthetic_ids
        if getattr(args, "synthetic_seed", None) is not None:
            kwargs["seed"] = args.synthetic_seed
    return build_dataset(args.dataset, args.data_dir, combine_all=args.combine_all, verbose=False, **kwargs)


def unlabelled_train(dataset) -> Tuple[List[Record], np.ndarray]:
    """``sorted(train)`` by path with every pid set to -1, and the hidden pids (diagnostics only)."""
    train = sorted(dataset.train, key=lambda r: r.img_path)
    hidden = np.asarray([r.pid for r in train], dtype=np.int64)
    return [Record(r.img_path, -1, r.camid, r.frame) for r in train], hidden


def build_model(args) -> MPRDNet:
    model = MPRDNet(args.arch, pretrained=args.pretrained and not args.init_weights,
                    pretrained_path=args.pretrained_path, pooling=args.pooling_type)
    if args.init_weights:
        state = load_checkpoint(args.init_weights)
        state = state.get("state_dict", state)
        missing = model.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")},
                                        strict=False)
        if missing.missing_keys:
            raise ReidError(f"--init-weights {args.init_weights} lacks {missing.missing_keys[:3]}",
                            fix="pass a file written by mprd/warmstart.py or a mprd checkpoint of the same --arch")
    return model


def build_optimizer(model, args):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=args.step_size, gamma=0.1)


def epoch_loader(train: List[Record], idx2labels: np.ndarray, num_cluster: int, args, epoch: int):
    """DataLoader of the clustered images with their pseudo-labels: ``iters`` batches of the original sampler
    (under torchrun: this rank's share of each)."""
    nidx = np.nonzero(idx2labels < num_cluster)[0]
    records = [(train[n].img_path, int(idx2labels[n]), train[n].camid) for n in nidx]
    sampler = RandomMultipleGallerySampler([r[1] for r in records], [r[2] for r in records], args.num_instances)
    iters = args.iters if not args.max_batches else min(args.iters, args.max_batches)
    batches = IterBatchSampler(sampler, args.batch_size, iters, args.seed, epoch)  # the global order everywhere
    if get_world_size() > 1:  # torchrun: this rank's share, whole runs of K (pseudo-identities); mprd/ddp.py
        batches = DistributedBatchSampler(batches, group_size=args.num_instances)
    loader = DataLoader(ImageDataset(records, train_transform(args)), batch_sampler=batches, num_workers=args.workers,
                        worker_init_fn=EpochWorkerSeeder(rank_seed(args.seed), epoch) if args.workers > 0 else None,
                        pin_memory=torch.cuda.is_available())
    return loader, nidx


def train_transform(args):
    """The original's training augmentation (flip 0.5, pad 10 + crop, erasing 0.5; the flags exist for tests)."""
    return build_transforms(args.height, args.width, is_train=True, flip_p=args.flip_p, pad=args.pad,
                            random_erase_p=args.random_erase)


def partner_loader(train: List[Record], args):
    """Partner images for the alignment loss, loaded in the main process with the training augmentation."""
    ds = ImageDataset(train, train_transform(args))
    return lambda idx: torch.stack([ds[int(i)][0] for i in idx])


def log_clustering(run: Run, epoch: int, idx2labels, num_cluster, hidden, core=None) -> Dict:
    """Logs clusters / outliers / NMI / ARI (and, given the (N,) core distances, their percentiles) to log.txt,
    metrics.jsonl and TensorBoard (``cluster/*``)."""
    q = cluster_quality(idx2labels, num_cluster, hidden)
    run.log(f"epoch {epoch}: {q['clusters']} clusters, {q['outliers']} outliers; pseudo-labels vs hidden ids: "
            f"NMI {q['nmi']:.3f} ARI {q['ari']:.3f} (clustered only: NMI {q.get('nmi_clustered', 0):.3f} "
            f"ARI {q.get('ari_clustered', 0):.3f})")
    if core is not None:
        summ = distance_summary(core)
        run.log(f"epoch {epoch}: Jaccard core distances (inf: beyond eps) " +
                " ".join(f"{k[5:]}% {v:.3f}" for k, v in summ.items()))
        q.update({k: v for k, v in summ.items() if np.isfinite(v)})
    run.log_metrics(epoch, prefix="cluster", **q)
    return q


def _eval(args, run, model, dataset, label: str, epoch: int) -> Dict:
    res = evaluate_model(model, dataset, args, run.device)
    run.log(f"{label}: mAP {100 * res['mAP']:.1f} R1 {100 * res['rank1']:.1f}")
    run.log_metrics(epoch, prefix=f"test/{args.dataset}", **{k: v for k, v in res.items() if isinstance(v, float)})
    run.write_results(label, res)
    return res


def train(args, run: Run, dataset=None) -> Dict:
    """The unsupervised loop; ``dataset`` (optional) replaces the one named by ``--dataset`` (tests)."""
    dataset = dataset or load_dataset(args)
    train_recs, hidden = unlabelled_train(dataset)
    n_train = len(train_recs)
    net = wrap_ddp(TwoViews(build_model(args).to(run.device)), run.device, sync_bn=args.sync_bn)
    model = unwrap(net).model  # alone: net is TwoViews(model); torchrun: DDP (after the SyncBN conversion)
    optimizer, scheduler = build_optimizer(model, args)
    gcn = None
    if args.use_gcn:
        from mprd.gcn.relation import PairRelation
        gcn = PairRelation.from_args(args, model.feat_dim, run.device)
    start, prior, rows, best = 0, np.arange(n_train), [], 0.0
    ckpt = run.checkpoint_path if args.resume == "auto" else args.resume
    if ckpt and (args.resume != "auto" or os.path.isfile(ckpt)):
        state = load_checkpoint(ckpt, map_location=run.device)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        prior, start, best = state["idx2labels"].numpy(), int(state["epoch"]), float(state.get("best_mAP", 0.0))
        if gcn is not None and "gcn" in state:
            gcn.load_state(state["gcn"])
        if "rng_ranks" in state:  # written under torchrun: every rank's own state (the same world size needed)
            restore_rng_states(state["rng_ranks"], what=f"checkpoint {ckpt}")
        else:
            check_world_size(state.get("world_size"), what=f"checkpoint {ckpt}")
            set_rng_state(state["rng"])
        run.log(f"resumed from {ckpt} at epoch {start} ({int(state['num_cluster'])} clusters)")
    elif args.compare_histogram and not args.evaluate:
        rows.append((f"start {args.arch} / {args.dataset}", _eval(args, run, model, dataset, "start", 0)))
        hist = on_rank0(evaluate_histogram, dataset, args)
        run.write_results("histogram", hist)
        rows.append((f"colour histogram / {args.dataset}", hist))
    res = {}
    for epoch in range(start, args.epochs):
        seed_everything(rank_seed(mix_seed(args.seed, epoch) % (2 ** 31)) % (2 ** 31))  # rank 0: the plain seed
        feats = extract(model, train_recs, args, run.device, "train features")  # torchrun: sharded, gathered
        idx2labels, num_cluster, centres, core = on_rank0(pseudo_labels_with_core, feats, args.eps, args.k1,
                                                          args.k2, args.min_samples)  # torchrun: broadcast
        quality = log_clustering(run, epoch, idx2labels, num_cluster, hidden, core)
        if num_cluster == 0:
            raise ReidError(f"epoch {epoch}: DBSCAN (eps {args.eps}) found no cluster among {n_train} images",
                            fix="raise --eps, or start from better features (--pretrained / --init-weights)")
        memory = ClusterMemory(model.feat_dim, num_cluster, args.temp, args.momentum).to(run.device)
        memory.features.copy_(centres.to(run.device))
        bank = feats.clone().to(run.device)
        loader, nidx = epoch_loader(train_recs, idx2labels, num_cluster, args, epoch)
        rng = np.random.RandomState(mix_seed(args.seed, epoch, 3) % (2 ** 32))
        st = EpochState(idx2labels, prior, bank, memory, nidx, partner_loader(train_recs, args), rng)
        link_fn = gcn.link_fn(bank) if gcn is not None else None
        if link_fn is not None and get_world_size() > 1:
            link_fn = rank0_link_fn(link_fn)
        stats = train_epoch(net, optimizer, loader, st, run.device, args.temp, args.lamb, args.alpha,
                            link_fn=link_fn, collect_gcn_pairs=gcn is not None, fix_fallback=args.fix_fallback,
                            print_freq=args.print_freq, log=run.log,
                            on_step=lambda s, v: run.log_metrics(epoch * args.iters + s, prefix="iter", **v))
        if gcn is not None:
            gstats = gcn.reptile_epoch(stats.pop("pairs"), bank, rng)  # torchrun: on every rank, same pairs
            sync_gcn(gcn)  # then rank 0's GCN everywhere (no-op alone)
            run.log(f"epoch {epoch}: GCN Reptile on {gstats['pairs']} pairs, loss {gstats['loss']:.3f}")
            run.log_metrics(epoch, prefix="gcn", **gstats)
            if not args.keep_gcn_updates:
                gcn.reload()       # the original builds a new PairsRelationship every epoch (spec P6)
        scheduler.step()
        run.log(f"epoch {epoch}: " + " ".join(f"{k} {v:.4f}" for k, v in stats.items()))
        run.log_metrics(epoch, prefix="train", **stats, lr=optimizer.param_groups[0]["lr"])
        if args.eval_step and ((epoch + 1) % args.eval_step == 0 or epoch + 1 == args.epochs):
            res = _eval(args, run, model, dataset, f"epoch{epoch + 1}", epoch + 1)
            best = max(best, res["mAP"])
        prior = idx2labels
        agree = check_ranks_agree({"pseudo-labels": [idx2labels], "memory": [memory.features], "bank": [bank],
                                   "weights": [p for _, p in model.named_parameters()],
                                   **({"gcn": list(gcn.gcn.parameters())} if gcn is not None else {})},
                                  f"epoch {epoch}")
        if agree:
            run.log(agree)
        state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "idx2labels": torch.from_numpy(prior),
                 "num_cluster": num_cluster, "memory": memory.features.cpu(), "best_mAP": best,
                 "cluster": quality, "rng": rng_state()}
        if get_world_size() > 1:
            state["rng_ranks"] = gather_rng_states()  # collective: every rank, before rank 0 saves
        if gcn is not None:
            state["gcn"] = gcn.state()
        save_checkpoint(run.checkpoint_path, state, args=vars(args))
    if res:
        run.write_results(args.dataset, res)
        rows.append((f"mprd {args.arch}{' +gcn' if gcn else ''} / {args.dataset}", res))
    if rows:
        run.log("\n" + results_table(rows, title=f"{args.dataset} (percent; best test mAP seen {100 * best:.1f})"))
    return res


def test(args, run: Run) -> Dict:
    dataset = load_dataset(args)
    path = run.checkpoint_path if args.resume in ("", "auto") else args.resume
    if not os.path.isfile(path):
        raise ReidError(f"no checkpoint to evaluate at {path}", fix="train first, or pass --resume PATH",
                        where=path)
    model = MPRDNet(args.arch, pretrained=False, pooling=args.pooling_type).to(run.device)
    model.load_state_dict(load_checkpoint(path, map_location=run.device)["state_dict"])
    res = evaluate_model(model, dataset, args, run.device)
    run.write_results(f"test/{args.dataset}", res)
    run.log("\n" + results_table([(f"mprd {args.arch} / {args.dataset}", res)], title=path))
    return res
