"""Bag-of-Tricks baseline (Luo et al., CVPR-W 2019) and its RGB-infrared extension: train, test, visualize.

Examples::

    python crossmodal_bot/main.py --mode train --dataset market --data-dir ~/data --pretrained-path resnet50.pth
    python crossmodal_bot/main.py --mode test --dataset market --testset market,duke
    python crossmodal_bot/main.py --mode visualize --dataset market --resume_visualize_epoch 120
    python crossmodal_bot/main.py --dataset synthetic -a resnet18 --no-pretrained --height 128 --width 64
    python crossmodal_bot/main.py --dataset synthetic_sysu -a resnet18 --no-pretrained --height 128 --width 64

Multi-GPU: ``torchrun --nproc_per_node N crossmodal_bot/main.py ... [--sync-bn]`` (``--batch-size`` stays the global
P x K; P must be a multiple of N). ``--evaluate`` (shared flag) is ``--mode test``. ``--dataset synthetic_sysu`` is
the synthetic data with infrared cameras in the SYSU-MM01 layout: modality-balanced batches and the SYSU-MM01 test
(``--sysu-mode``, ``--sysu-shots``).

The original re-implementation's flags (``--market_path``, ``--duke_path``, ``--output_path``, ``--train_dataset``,
``--image_size``, ``--p``, ``--k``, ``--base_learning_rate``, ``--total_train_epochs``, ``--resume_test_epoch``,
``--resume_visualize_epoch``, ...) are accepted as aliases.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python crossmodal_bot/main.py`: put the repo root (not the cwd) on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.cli import HelpFormatter, base_parser, parse_args, resolve_common  # noqa: E402
from common.errors import ReidError, run_main  # noqa: E402

_TRAIN_DATASET_ALIASES = {"market_train": "market", "duke_train": "duke", "market2duke_train": "market",
                          "duke2market_train": "duke"}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("crossmodal_bot", parents=[base_parser()],
                                     description=__doc__, formatter_class=HelpFormatter)
    g = parser.add_argument_group("Bag of Tricks")
    g.add_argument("--mode", choices=["train", "test", "visualize"], default="train")
    g.add_argument("--train_dataset", dest="dataset", type=lambda s: _TRAIN_DATASET_ALIASES.get(s, s),
                   help=argparse.SUPPRESS)
    g.add_argument("--market_path", default="", help="folder of Market-1501-v15.09.15 (original flag)")
    g.add_argument("--duke_path", default="", help="folder of DukeMTMC-reID (original flag)")
    g.add_argument("--output_path", default="", help="run folder (original flag); default <exp-dir>/crossmodal_bot/"
                                                     "<dataset>/<run-name>")
    g.add_argument("--image_size", type=int, nargs=2, default=None, metavar=("H", "W"), help="alias of --height --width")
    g.add_argument("--cuda", dest="device", help=argparse.SUPPRESS)
    g.add_argument("--k", "--num-instances", "--num_instances", dest="num_instances", type=int, default=4,
                   help="images per identity in a P x K batch")
    g.add_argument("--p", "--num-ids-per-batch", dest="p", type=int, default=None,
                   help="identities per batch (sets --batch-size to P*K)")
    g.add_argument("--base_learning_rate", dest="lr", type=float, help=argparse.SUPPRESS)
    g.add_argument("--total_train_epochs", dest="epochs", type=int, help=argparse.SUPPRESS)
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=5e-4)
    g.add_argument("--optimizer", choices=["adam", "sgd", "adamw"], default="adam",
                   help="Adam as both originals (SOLVER.OPTIMIZER_NAME); sgd uses --momentum")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--milestones", type=int, nargs="+", default=[40, 70])
    g.add_argument("--gamma", type=float, default=0.1)
    g.add_argument("--warmup-epochs", "--warmup_iters", dest="warmup_epochs", type=int, default=10)
    g.add_argument("--warmup-factor", "--warmup_factor", dest="warmup_factor", type=float, default=0.01)
    g.add_argument("--margin", type=float, default=0.3, help="triplet margin (<= 0: soft margin)")
    g.add_argument("--label-smooth", "--label_smooth", dest="label_smooth", type=float, default=0.1)
    g.add_argument("--center-loss-weight", dest="center_loss_weight", type=float, default=0.0,
                   help="center loss weight (official code: 5e-4; off as in the re-implementation)")
    g.add_argument("--center-lr", dest="center_lr", type=float, default=0.5)
    g.add_argument("--last-stride", "--last_stride", dest="last_stride", type=int, default=1)
    g.add_argument("--stem-relu", dest="stem_relu", action=argparse.BooleanOptionalAction, default=False,
                   help="ReLU after the stem BN (the standard ResNet stem); off by default, as both originals' "
                        "released code (conv1 -> bn1 -> maxpool), which produced every published number")
    g.add_argument("--neck", choices=["bnneck", "no"], default="bnneck")
    g.add_argument("--neck-feat", "--neck_feat", dest="neck_feat", choices=["after", "before"], default="after")
    g.add_argument("--random-erase", dest="random_erase", type=float, default=0.5, help="random erasing probability")
    g.add_argument("--pad", type=int, default=10)
    g.add_argument("--flip-p", dest="flip_p", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (nn.SyncBatchNorm on CUDA, "
                        "common.distributed.CPUSyncBatchNorm on the CPU); no effect in one process")
    g.add_argument("--flip-test", dest="flip_test", action="store_true", help="average with flipped images at test")
    g.add_argument("--test-metric", dest="test_metric", choices=["euclidean", "cosine"], default="euclidean")
    g.add_argument("--eval-period", dest="eval_period", type=int, default=40, help="evaluate every N epochs")
    g.add_argument("--max_save_model_num", "--keep-checkpoints", dest="keep_checkpoints", type=int, default=1,
                   help="per-epoch checkpoints kept (0 = all)")
    g.add_argument("--resume_train_epoch", dest="resume_train_epoch", type=int, default=-1,
                   help="resume training from the checkpoint of this epoch (-1: --resume / latest)")
    g.add_argument("--auto_resume_training_from_lastest_steps", "--auto-resume", dest="auto_resume",
                   action=argparse.BooleanOptionalAction, default=True,
                   help="resume from the run folder's latest checkpoint when one exists")
    g.add_argument("--resume_test_epoch", dest="resume_test_epoch", type=int, default=-1,
                   help="checkpoint epoch to test (-1: latest)")
    g.add_argument("--resume_visualize_epoch", dest="resume_visualize_epoch", type=int, default=-1,
                   help="checkpoint epoch to visualize (-1: latest)")
    g.add_argument("--visualize-queries", dest="visualize_queries", type=int, default=0,
                   help="number of queries to visualize (0: all); in training mode, N > 0 also writes the ranked "
                        "lists of the first N queries after the final evaluation")
    g.add_argument("--visualize-topk", dest="visualize_topk", type=int, default=10)
    g.add_argument("--compare-histogram", dest="compare_histogram", action="store_true",
                   help="also evaluate the colour-histogram reference and the untrained model")
    g = parser.add_argument_group("SYSU-MM01 protocol")
    g.add_argument("--sysu-mode", dest="sysu_mode", choices=["all", "indoor"], default="all")
    g.add_argument("--sysu-shots", dest="sysu_shots", type=int, choices=[1, 10], default=1)
    g.add_argument("--sysu-trials", dest="sysu_trials", type=int, default=10)
    g.add_argument("--sysu-epoch", dest="sysu_epoch", choices=["images", "identities"], default="images",
                   help="SYSU-MM01 epoch length: 'images' = max(#RGB, #IR) // (P * K/2) + 1 batches, as the "
                        "cross-modal baseline (696 with the defaults); 'identities' = one pass over the "
                        "identities (24 batches), our earlier definition")
    parser.set_defaults(arch="resnet50", height=256, width=128, batch_size=64, lr=3.5e-4, epochs=120)
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Apply the original flags' aliases and derived defaults; the shared ``--evaluate`` means ``--mode test``."""
    from common.datasets import canonical_name
    args.dataset = canonical_name(args.dataset)
    if args.evaluate:
        if args.mode == "visualize":
            raise ReidError("--evaluate means --mode test; it cannot be combined with --mode visualize",
                            fix="drop --evaluate to visualize, or drop --mode visualize to test")
        args.mode = "test"
    if args.image_size:
        args.height, args.width = args.image_size
    if args.p:
        args.batch_size = args.p * args.num_instances
    if args.batch_size % args.num_instances:
        raise ReidError(f"--batch-size {args.batch_size} must be a multiple of --k {args.num_instances}",
                        fix="pass a batch size that is P * K (or --p P to set it)")
    resolve_common(args)  # --testset defaults to the training set; the papers' cross-dataset lists are in the README
    args.testset = [canonical_name(t) for t in args.testset]
    return args


def main(argv=None) -> dict:
    """Parse ``argv`` and run the chosen mode. Returns the evaluation results (train/test) or the grid paths."""
    args = resolve_args(parse_args(get_parser(), argv))
    from crossmodal_bot import modes as engine
    datasets = engine.preflight(args)
    run = engine.setup(args)
    try:
        if args.mode == "train":
            return engine.train(args, run, datasets)
        if args.mode == "test":
            return engine.test(args, run, datasets)
        return engine.visualize(args, run, datasets)
    finally:
        run.close()


if __name__ == "__main__":
    run_main(main)
