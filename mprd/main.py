"""MPRD (Ji et al., ICCV 2021; jihaoxuanye/MetaPRD "improved version"): unsupervised re-ID by cluster contrast with
hard-sample deduction, prototype mixing, a relative-entropy alignment loss and an optional GCN pair filter.

Examples (the original README's commands, as written)::

    python mprd/main.py -b 64 -a resnet50 -d market1501 --iters 400 --momentum 0.1 --eps 0.4 --num-instances 16 --use-hard
    python mprd/main.py -b 64 -a resnet50 -d market1501 --iters 400 --momentum 0.1 --eps 0.4 --num-instances 16 --use-hard --use-gcn
    python mprd/main.py -b 64 -a resnet50 -d dukemtmcreid --iters 400 --momentum 0.1 --eps 0.6 --num-instances 16 --use-hard
    python mprd/main.py -b 64 -a resnet50 -d MSMT17 --iters 400 --momentum 0.1 --eps 0.7 --num-instances 16 --use-hard
    python mprd/main.py -d synthetic -a resnet18 --no-pretrained --height 128 --width 64      # CPU smoke run
    torchrun --nproc_per_node 4 mprd/main.py -b 64 -a resnet50 -d market1501 --iters 400 --momentum 0.1 --eps 0.4 \
        --num-instances 16 --use-hard --sync-bn        # DDP: -b is the global batch (mprd/ddp.py, README)

``--use-gcn`` needs a GCN checkpoint from ``python mprd/gcn_pretrain.py`` (``--gcn-checkpoint``; the original's
pre-trained weights cannot be downloaded). ``--use-hard`` is accepted and, as in the original, changes nothing: the
hard-instance memory update is always used. ``--logs-dir`` is the original's run folder flag.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python mprd/main.py`: put the repo root (not the cwd) on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.cli import base_parser, resolve_common  # noqa: E402
from common.datasets import canonical_name  # noqa: E402
from common.errors import ReidError, run_main  # noqa: E402
from common.eval.rank import IS_CYTHON_AVAILABLE  # noqa: E402
from common.run import setup_run  # noqa: E402

ARCH_CHOICES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet_ibn50a", "resnet_ibn101a",
                "cnn3"]   # cnn3: a 3-block CNN for CPU verification runs only (not in the paper)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("mprd", parents=[base_parser()], description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("MPRD (original flags)")
    g.add_argument("--num-instances", "--num_instances", dest="num_instances", type=int, default=4)
    g.add_argument("--eps", type=float, default=0.6, help="DBSCAN eps (README: market 0.4, duke 0.6, msmt17 0.7)")
    g.add_argument("--eps-gap", dest="eps_gap", type=float, default=0.02, help="accepted; unused (as the original)")
    g.add_argument("--k1", type=int, default=30, help="Jaccard k1")
    g.add_argument("--k2", type=int, default=6, help="Jaccard k2 (query expansion)")
    g.add_argument("--features", type=int, default=0, help="embedding FC size; only 0 (the original's) is built")
    g.add_argument("--dropout", type=float, default=0.0, help="only 0 (the original's) is built")
    g.add_argument("--momentum", type=float, default=0.2, help="memory momentum (README commands: 0.1)")
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=5e-4)
    g.add_argument("--iters", type=int, default=400, help="iterations per epoch")
    g.add_argument("--step-size", dest="step_size", type=int, default=20, help="StepLR step (epochs), gamma 0.1")
    g.add_argument("--eval-step", dest="eval_step", type=int, default=1, help="evaluate every N epochs (0: never)")
    g.add_argument("--temp", type=float, default=0.05, help="memory temperature")
    g.add_argument("--logs-dir", "--logs_dir", dest="output_path", default="", help="run folder (original flag)")
    g.add_argument("--pooling-type", dest="pooling_type", choices=["avg", "max", "gem"], default="avg")
    g.add_argument("--use-hard", dest="use_hard", action="store_true", help="accepted; no effect (spec P3)")
    g.add_argument("--use-gcn", dest="use_gcn", action="store_true", help="filter hard pairs with the GCN")
    g = p.add_argument_group("MPRD (hard-coded in the original, flags here)")
    g.add_argument("--min-samples", dest="min_samples", type=int, default=4, help="DBSCAN min_samples")
    g.add_argument("--alpha", type=float, default=0.2, help="prototype mixing weight")
    g.add_argument("--lamb", type=float, default=0.05, help="hard-negative weight in the contrastive loss")
    g.add_argument("--fix-fallback", dest="fix_fallback", action="store_true",
                   help="positives fallback uses image n's own cluster (the original uses image n-1's, spec P5)")
    g.add_argument("--gcn-checkpoint", dest="gcn_checkpoint", default="",
                   help="GCN weights from mprd/gcn_pretrain.py (default: <exp-dir>/mprd_gcn/<dataset>/gcn.pth)")
    g.add_argument("--keep-gcn-updates", dest="keep_gcn_updates", action="store_true",
                   help="keep the Reptile-updated GCN across epochs (the original reloads it each epoch, spec P6)")
    g.add_argument("--reptile-rule", dest="reptile_rule", choices=["original", "proper"], default="original",
                   help="original: theta3 + lr (theta3 - theta0) with accumulated grads (spec P7); "
                        "proper: theta0 + lr (theta3 - theta0)")
    g.add_argument("--gcn-lr", dest="gcn_lr", type=float, default=0.02)
    g.add_argument("--reptile-batches", dest="reptile_batches", type=int, default=0,
                   help="cap the Reptile batches per epoch (0: all pairs, as the original)")
    g = p.add_argument_group("augmentation (the original's; 0 turns one off, e.g. for exact comparisons)")
    g.add_argument("--flip-p", dest="flip_p", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--pad", type=int, default=10, help="zero padding before the random crop")
    g.add_argument("--random-erase", dest="random_erase", type=float, default=0.5, help="random erasing probability")
    g = p.add_argument_group("torchrun")
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (default: each rank's share)")
    g = p.add_argument_group("runs")
    g.add_argument("--init-weights", dest="init_weights", default="",
                   help="start the CNN from this state dict (e.g. mprd/warmstart.py on a disjoint synthetic split)")
    g.add_argument("--compare-histogram", dest="compare_histogram", action=argparse.BooleanOptionalAction,
                   default=True, help="evaluate the start model and the colour histogram before training")
    g.add_argument("--synthetic-seed", dest="synthetic_seed", type=int, default=None,
                   help="seed of the generated synthetic dataset (default: the generator's)")
    p.set_defaults(dataset="dukemtmcreid", batch_size=64, epochs=50, lr=3.5e-4, seed=1, print_freq=10)
    return p


def resolve(args) -> argparse.Namespace:
    try:
        args.dataset = canonical_name(args.dataset)
    except ValueError as e:
        raise ReidError(str(e), fix="pass -d market1501, dukemtmcreid, msmt17 (or MSMT17) or synthetic") from e
    if args.arch not in ARCH_CHOICES:
        raise ReidError(f"-a {args.arch} is not a backbone of mprd", fix=f"choose one of {', '.join(ARCH_CHOICES)}")
    if args.arch == "cnn3" and args.pretrained and not args.init_weights:
        raise ReidError("-a cnn3 has no ImageNet weights", fix="pass --no-pretrained or --init-weights FILE")
    if args.features or args.dropout:
        raise ReidError("--features > 0 / --dropout > 0 are not built (the original's runs use 0)",
                        fix="leave --features 0 --dropout 0")
    if args.batch_size % args.num_instances:
        raise ReidError(f"-b {args.batch_size} is not a multiple of --num-instances {args.num_instances}",
                        fix="batches are P pseudo-identities x K instances; e.g. -b 64 --num-instances 16")
    return resolve_common(args)


def main(argv=None):
    args = resolve(get_parser().parse_args(argv))
    from mprd import engine
    backend = "cython" if IS_CYTHON_AVAILABLE and not args.no_cython else "numpy"
    run = setup_run(args, engine.METHOD, extra_info={"evaluator_backend": backend}, distributed=True)
    try:
        return engine.test(args, run) if args.evaluate else engine.train(args, run)
    finally:
        run.close()


if __name__ == "__main__":
    run_main(main)
