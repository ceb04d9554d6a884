"""SAN (Jin et al., AAAI 2020): train / evaluate the semantics-aligned encoder-decoder on a re-ID dataset.

The release's README command is accepted as written::

    python san/main.py --root DATASET_PATH -s cuhk03 -t cuhk03 --height 256 --width 128 --optim amsgrad \
        --label-smooth --lr 8e-04 --max-epoch 300 --stepsize 40 80 120 160 200 240 280 --train-batch-size 64 \
        --test-batch-size 100 -a resnet50_fc512 --save-dir SAVE_PATH --gpu-devices 0 \
        --train-sampler RandomIdentitySampler --warm-up-epoch 20 --cuhk03-labeled --eval-freq 80

and its values are this script's defaults (flags the command does not give keep the release's code defaults).
Textures are read from ``texture_<dataset>`` beside the images (see ``san/textures.py``). CPU example on the
synthetic data (oracle textures)::

    python san/main.py -d synthetic -a resnet18_fc512 --no-pretrained --height 64 --width 32 \
        --train-batch-size 16 --warm-up-epoch 2 --max-epoch 10 --stepsize 4 8 --texture-source true

Ablations: ``--baseline`` (L_ID + L_Triplet only), ``--no-tr-loss`` (SAN-basic: + L_Rec), default (SAN: + L_TR).

Several GPUs: ``torchrun --nproc_per_node N san/main.py ...`` (``--train-batch-size`` stays the global batch; its
identities split across the ranks; ``--sync-bn`` optional; see ``san/ddp.py`` and the README).
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python san/main.py`: put the repo root (not the cwd) on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.cli import base_parser, resolve_common  # noqa: E402
from common.errors import ReidError, run_main  # noqa: E402

STEPSIZE = [40, 80, 120, 160, 200, 240, 280]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("san", parents=[base_parser()], description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("SAN release flags (args.py)")
    g.add_argument("--root", dest="data_dir", help="alias of --data-dir")
    g.add_argument("-s", "--source-names", dest="source_names", nargs="+", default=None,
                   help="training dataset (first name used; alias of --dataset)")
    g.add_argument("-t", "--target-names", dest="target_names", nargs="+", default=None,
                   help="test datasets (alias of --testset)")
    g.add_argument("--split-id", dest="split_id", type=int, default=0)
    g.add_argument("--train-sampler", dest="train_sampler", default="RandomIdentitySampler",
                   help="RandomIdentitySampler (P x K) or '' (shuffle)")
    g.add_argument("--seq-len", type=int, default=15, help=argparse.SUPPRESS)
    g.add_argument("--sample-method", default="evenly", help=argparse.SUPPRESS)
    g.add_argument("--pool-tracklet-features", default="avg", help=argparse.SUPPRESS)
    g.add_argument("--cuhk03-labeled", dest="cuhk03_labeled", action=argparse.BooleanOptionalAction, default=True,
                   help="CUHK03 hand-drawn boxes (default, as the README command); --no-cuhk03-labeled: detected")
    g.add_argument("--cuhk03-classic-split", dest="cuhk03_classic_split", action="store_true",
                   help="the 20 classic CUHK03 splits (use with --use-metric-cuhk03)")
    g.add_argument("--use-metric-cuhk03", dest="use_metric_cuhk03", action="store_true")
    g.add_argument("--optim", choices=["adam", "amsgrad", "sgd", "rmsprop"], default="amsgrad")
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=5e-4)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--sgd-dampening", dest="sgd_dampening", type=float, default=0.0)
    g.add_argument("--sgd-nesterov", dest="sgd_nesterov", action="store_true")
    g.add_argument("--rmsprop-alpha", dest="rmsprop_alpha", type=float, default=0.99)
    g.add_argument("--adam-beta1", dest="adam_beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", dest="adam_beta2", type=float, default=0.999)
    g.add_argument("--max-epoch", dest="max_epoch", type=int, default=None, help="main epochs (default 300; "
                   "alias of --epochs); the warm-up epochs come on top")
    g.add_argument("--warm-up-epoch", dest="warm_up_epoch", type=int, default=20)
    g.add_argument("--start-epoch", dest="start_epoch", type=int, default=0,
                   help="accepted; use --resume (exact resume) instead")
    g.add_argument("--stepsize", type=int, nargs="+", default=STEPSIZE)
    g.add_argument("--gamma", type=float, default=0.5)
    g.add_argument("--train-batch-size", dest="batch_size", type=int, help="alias of --batch-size")
    g.add_argument("--fixbase", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--fixbase-epoch", type=int, default=0, help=argparse.SUPPRESS)
    g.add_argument("--open-layers", nargs="+", default=["classifier"], help=argparse.SUPPRESS)
    g.add_argument("--label-smooth", dest="label_smooth", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--margin", type=float, default=0.3, help="batch-hard triplet margin (L_TR keeps 0.3)")
    g.add_argument("--num-instances", dest="num_instances", type=int, default=4)
    g.add_argument("--htri-only", dest="htri_only", action="store_true")
    g.add_argument("--lambda-xent", dest="lambda_xent", type=float, default=1.0)
    g.add_argument("--lambda-htri", dest="lambda_htri", type=float, default=1.0)
    g.add_argument("--load-weights", dest="load_weights", default="", help="checkpoint for --evaluate")
    g.add_argument("--eval-freq", dest="eval_freq", type=int, default=80)
    g.add_argument("--start-eval", dest="start_eval", type=int, default=0)
    g.add_argument("--save-dir", dest="output_path", default="", help="run folder (default <exp-dir>/san/...)")
    g.add_argument("--use-cpu", dest="use_cpu", action="store_true")
    g.add_argument("--gpu-devices", dest="gpu_devices", default="", help="CUDA_VISIBLE_DEVICES (release flag)")
    g.add_argument("--use-avai-gpus", dest="use_avai_gpus", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--visualize-ranks", dest="visualize_ranks", action="store_true",
                   help="with --evaluate: every query's top-10 ranked list as a picture under <run>/ranked_results/")

    g = p.add_argument_group("SAN (ours)")
    g.add_argument("--baseline", action="store_true", help="re-ID losses only, no decoder (the paper's Baseline)")
    g.add_argument("--rec-loss", dest="rec_loss", action=argparse.BooleanOptionalAction, default=True,
                   help="L_Rec on the decoder output")
    g.add_argument("--tr-loss", dest="tr_loss", action=argparse.BooleanOptionalAction, default=True,
                   help="L_TR on x_sim1..4 (--no-tr-loss: SAN-basic)")
    g.add_argument("--lambda-rec", dest="lambda_rec", type=float, default=1.0)
    g.add_argument("--lambda-tr", dest="lambda_tr", type=float, default=1.0)
    g.add_argument("--texture-dir", dest="texture_dir", default="",
                   help="texture folder (default <dataset root>/texture_<dataset>)")
    g.add_argument("--texture-source", dest="texture_source", choices=["folder", "true"], default="folder",
                   help="'true': the synthetic data's ground-truth texture maps (oracle)")
    g.add_argument("--synthetic-seed", dest="synthetic_seed", type=int, default=None)
    g.add_argument("--warm-up-lr", dest="warm_up_lr", type=float, default=8e-6, help="hard-coded in the release")
    g.add_argument("--warm-up-gamma", dest="warm_up_gamma", type=float, default=1.259)
    g.add_argument("--dec-lr", dest="dec_lr", type=float, default=1e-5, help="encoder / decoder Adam lr")
    g.add_argument("--dec-beta1", dest="dec_beta1", type=float, default=0.5)
    g.add_argument("--random-erase", dest="random_erase", type=float, default=0.5)
    g.add_argument("--translate-p", dest="translate_p", type=float, default=0.5,
                   help="probability of Random2DTranslation (hard-coded 0.5 in the release)")
    g.add_argument("--flip-p", dest="flip_p", type=float, default=0.5,
                   help="probability of the horizontal flip (hard-coded 0.5 in the release)")
    g.add_argument("--float64", action="store_true",
                   help="train and test in double precision (slow): float32 rounding is amplified by SAN's Adam "
                        "steps, so the torchrun test compares one and two processes in float64")
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true",
                   help="torchrun: BatchNorm statistics over the global batch (nn.SyncBatchNorm on CUDA, "
                        "common.distributed.CPUSyncBatchNorm on the CPU); no effect in one process")
    g.add_argument("--auto-resume", dest="auto_resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from the run folder's checkpoint when one exists")
    g.add_argument("--compare-histogram", dest="compare_histogram", action="store_true",
                   help="also evaluate the untrained model and the colour histogram")
    p.set_defaults(dataset="cuhk03", arch="resnet50_fc512", lr=8e-4, epochs=300, batch_size=64,
                   test_batch_size=100, seed=1, print_freq=10)
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    from common.datasets import canonical_name
    if args.source_names:
        args.dataset = args.source_names[0]
    if args.target_names:
        args.testset = ",".join(args.target_names)
    if args.max_epoch is not None:
        args.epochs = args.max_epoch
    args.max_epoch = args.epochs
    if args.use_cpu:
        args.device = "cpu"
    elif args.gpu_devices:  # as the release: restrict the visible GPUs; --device auto then picks CUDA if present
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", args.gpu_devices)
    if args.train_sampler not in ("RandomIdentitySampler", "", "RandomSampler"):
        raise ReidError(f"--train-sampler {args.train_sampler} is unknown", fix="RandomIdentitySampler or ''")
    if args.train_sampler == "RandomIdentitySampler" and args.batch_size % args.num_instances:
        raise ReidError(f"--train-batch-size {args.batch_size} is not a multiple of --num-instances "
                        f"{args.num_instances}", fix="pick a batch of P x K images")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    group = args.num_instances if args.train_sampler == "RandomIdentitySampler" else 1
    if world > 1 and not args.evaluate and (args.batch_size // group) % world:
        raise ReidError(f"--train-batch-size {args.batch_size} cannot be split into {world} equal shares of whole "
                        f"groups of {group} ({args.batch_size // group} groups for {world} processes)",
                        fix=f"make --train-batch-size / --num-instances a multiple of --nproc_per_node {world}")
    for name in ("translate_p", "flip_p"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ReidError(f"--{name.replace('_', '-')} {getattr(args, name)} is not a probability",
                            fix="pass a value in [0, 1]")
    if args.height % 16 or args.width % 16:
        raise ReidError(f"--height {args.height} / --width {args.width}: SA-Dec needs multiples of 16",
                        fix="e.g. 256 x 128, 128 x 64 or 64 x 32")
    try:
        args.dataset = canonical_name(args.dataset)
        resolve_common(args)
        args.testset = [canonical_name(t) for t in args.testset]
    except ValueError as e:
        raise ReidError(str(e)) from e
    return args


def main(argv=None) -> dict:
    """Parse ``argv``; train (default) or ``--evaluate``. Returns {row label: results}."""
    args = resolve_args(get_parser().parse_args(argv))
    import torch
    from common.distributed import destroy_distributed
    from san import engine
    if args.float64:  # models are built in the default dtype; batches are cast to it (san/trainer.py, evaluate.py)
        torch.set_default_dtype(torch.float64)
    try:
        run = engine.setup(args)
        try:
            return engine.test(args, run) if args.evaluate else engine.train(args, run)
        finally:
            run.close()
    finally:
        destroy_distributed()  # torchrun: leave the process group (a no-op alone)


if __name__ == "__main__":
    run_main(main)
