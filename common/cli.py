"""Shared command-line flags: ``base_parser()`` is the parent parser of every method's ``main.py``.

Flags are kebab-case; where an original repository spelled a flag differently, the method adds that spelling
as an alias (e.g. ``--combine_all``). Paper defaults are set by each method with ``parser.set_defaults``.
"""
from __future__ import annotations

import argparse
import os
from typing import List


def parse_csv(value: str) -> List[str]:
    """``'market,duke'`` -> ``['market', 'duke']`` (empty items dropped)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def default_data_dir() -> str:
    return os.environ.get("REID_DATA", "data")


def base_parser() -> argparse.ArgumentParser:
    """The parent parser (``add_help=False``) with the flags every method shares."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    g.add_argument("-d", "--dataset", default="market",
                   help="training set key: market, duke, cuhk03_np_detected, cuhk03_np_labeled, msmt, sysu_mm01, "
                        "randperson, synthetic, synthetic_sysu (aliases such as market1501 work)")
    g.add_argument("--testset", default=None,
                   help="comma-separated test set keys (QAConv style); default: the training set")
    g.add_argument("--data-dir", "--data_dir", dest="data_dir", default=default_data_dir(),
                   help="folder holding the dataset folders (default: $REID_DATA or ./data)")
    g.add_argument("--combine-all", "--combine_all", dest="combine_all", action="store_true",
                   help="train on train+query+gallery identities of the training set")
    g.add_argument("--height", type=int, default=256, help="input height")
    g.add_argument("--width", type=int, default=128, help="input width")
    g.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=64)
    g.add_argument("--test-batch-size", "--test_batch_size", dest="test_batch_size", type=int, default=128)
    g.add_argument("-j", "--workers", type=int, default=4, help="data loader worker processes")
    g.add_argument("--synthetic-ids", dest="synthetic_ids", type=int, default=None,
                   help="number of identities when generating --dataset synthetic (default: generator's)")

    g = p.add_argument_group("model and optimisation")
    g.add_argument("-a", "--arch", default="resnet50", help="backbone")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet initialisation (loaded from --pretrained-path or torchvision's cache; "
                        "nothing is downloaded)")
    g.add_argument("--pretrained-path", "--pretrained_path", dest="pretrained_path", default="",
                   help="local ImageNet weights file for the backbone")
    g.add_argument("--epochs", type=int, default=120)
    g.add_argument("--lr", type=float, default=3.5e-4)
    g.add_argument("--max-batches", "--max_batches", dest="max_batches", type=int, default=0,
                   help="cap iterations per epoch (smoke runs); 0 = no cap")

    g = p.add_argument_group("run")
    g.add_argument("--exp-dir", "--exp_dir", dest="exp_dir", default="exp", help="output root")
    g.add_argument("--run-name", "--run_name", dest="run_name", default="",
                   help="run sub-folder (default: <arch>-s<seed>)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true", help="deterministic cuDNN (slower)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (ignored on CPU)")
    g.add_argument("--resume", default="", help="checkpoint to resume from ('auto': the run folder's last one)")
    g.add_argument("--evaluate", action="store_true", help="evaluate only")
    g.add_argument("--no-cython", "--no_cython", dest="no_cython", action="store_true",
                   help="force the NumPy evaluator")
    g.add_argument("--print-freq", "--print_freq", dest="print_freq", type=int, default=20)
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard event files under <run>/tb (tensorboardX)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    return p


def resolve_common(args: argparse.Namespace) -> argparse.Namespace:
    """Fill derived defaults in place: ``testset`` list, ``run_name``."""
    args.testset = parse_csv(args.testset) if args.testset else [args.dataset]
    if not args.run_name:
        args.run_name = f"{args.arch}-s{args.seed}"
    return args
