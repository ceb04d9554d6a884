"""Shared command-line flags: ``base_parser()`` is the parent parser of every method's ``main.py``.

Flags are kebab-case; where an original repository spelled a flag differently, the method adds that spelling
as an alias (e.g. ``--combine_all``). Paper defaults are set by each method with ``parser.set_defaults``.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Dict, Iterable, List, Optional, Set


def parse_csv(value: str) -> List[str]:
    """``'market,duke'`` -> ``['market', 'duke']`` (empty items dropped)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def default_data_dir() -> str:
    return os.environ.get("REID_DATA", "data")


def default_workers(wanted: int = 4) -> int:
    """Loader workers: ``wanted``, but never more than the machine's cores."""
    return max(0, min(wanted, os.cpu_count() or 1))


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the module docstring's layout and prints every flag's default."""


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every visible flag without help text one that shows its default (``--help`` lists them all)."""
    for a in parser._actions:  # noqa: SLF001
        if a.help is None and a.option_strings and a.default is not argparse.SUPPRESS:
            a.help = " "
    return parser


# ------------------------------------------------------------------------------------------ numeric flag types
def _number(kind, low: Optional[float], low_open: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not finite; {what}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; {what}")
        return value
    parse.__name__ = what
    return parse


positive_float = _number(float, 0.0, True, "expected a finite number > 0")
nonneg_float = _number(float, 0.0, False, "expected a finite number >= 0")
finite_float = _number(float, None, False, "expected a finite number")
positive_int = _number(int, 0, True, "expected an integer >= 1")
nonneg_int = _number(int, 0, False, "expected an integer >= 0")


# ------------------------------------------------------------------------------------------ explicit flags
def explicit_dests(parser: argparse.ArgumentParser, argv: Optional[Iterable[str]] = None) -> Set[str]:
    """The ``dest`` names the command line sets explicitly (not by a default).

    Parses ``argv`` once more with every default suppressed, so only what was typed lands in the namespace.
    """
    import sys
    saved = [(a, a.default) for a in parser._actions]  # noqa: SLF001
    saved_defaults = dict(parser._defaults)  # noqa: SLF001
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        parser._defaults.clear()  # noqa: SLF001
        ns, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    finally:
        for a, d in saved:
            a.default = d
        parser._defaults.update(saved_defaults)  # noqa: SLF001
    return set(vars(ns))


def adopt_stored_args(args: argparse.Namespace, stored: Dict, keys: Iterable[str], source: str) -> List[str]:
    """Take ``keys`` from the args a checkpoint was trained with (test / visualize modes).

    A flag given explicitly (``args.explicit``) that disagrees with the stored value is an error naming both.

    Args:
        args: the current args; changed in place.
        stored: ``vars(args)`` of the training run (e.g. ``checkpoint['args']``).
        keys: the architecture / input keys to take over.
        source: the checkpoint's path (for the messages).
    Returns:
        the keys whose value was taken over from ``stored``.
    """
    from common.errors import ReidError
    explicit = set(getattr(args, "explicit", ()) or ())
    taken = []
    for key in keys:
        if key not in stored or not hasattr(args, key):
            continue
        have, want = _jsonable(getattr(args, key)), _jsonable(stored[key])
        if have == want:
            continue
        if key in explicit:
            raise ReidError(f"--{key.replace('_', '-')} {have} disagrees with the checkpoint, which was trained "
                            f"with {want}",
                            fix=f"drop --{key.replace('_', '-')} (the checkpoint's value is used), or pass the "
                                f"checkpoint that was trained with {have}", where=source)
        setattr(args, key, stored[key])
        taken.append(key)
    return taken


def _jsonable(v):
    import json
    return json.loads(json.dumps(v, default=str))


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
    g.add_argument("--height", type=positive_int, default=256, help="input height")
    g.add_argument("--width", type=positive_int, default=128, help="input width")
    g.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=64,
                   help="training batch size")
    g.add_argument("--test-batch-size", "--test_batch_size", dest="test_batch_size", type=positive_int, default=128,
                   help="images per feature-extraction batch")
    g.add_argument("-j", "--workers", type=nonneg_int, default=default_workers(),
                   help="data loader worker processes (default: 4, at most the machine's cores)")
    g.add_argument("--check-images", dest="check_images", action=argparse.BooleanOptionalAction,
                   default=True, help="decode every image once before training and list all unreadable files")
    g.add_argument("--synthetic-ids", dest="synthetic_ids", type=positive_int, default=None,
                   help="number of identities when generating --dataset synthetic (default: generator's)")

    g = p.add_argument_group("model and optimisation")
    g.add_argument("-a", "--arch", default="resnet50", help="backbone")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet initialisation (loaded from --pretrained-path or torchvision's cache; "
                        "nothing is downloaded)")
    g.add_argument("--pretrained-path", "--pretrained_path", dest="pretrained_path", default="",
                   help="local ImageNet weights file for the backbone")
    g.add_argument("--epochs", type=positive_int, default=120, help="training epochs")
    g.add_argument("--lr", type=positive_float, default=3.5e-4, help="base learning rate")
    g.add_argument("--max-batches", "--max_batches", dest="max_batches", type=nonneg_int, default=0,
                   help="cap iterations per epoch (smoke runs); 0 = no cap")
    g.add_argument("--nonfinite-patience", dest="nonfinite_patience", type=positive_int, default=10,
                   help="stop training after this many consecutive steps with a non-finite loss (skipped steps)")

    g = p.add_argument_group("run")
    g.add_argument("--exp-dir", "--exp_dir", dest="exp_dir", default="exp", help="output root")
    g.add_argument("--run-name", "--run_name", dest="run_name", default="",
                   help="run sub-folder (default: <arch>-s<seed>)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="random seed")
    g.add_argument("--deterministic", action="store_true", help="deterministic cuDNN (slower)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (ignored on CPU)")
    g.add_argument("--resume", default="", help="checkpoint to resume from ('auto': the run folder's last one)")
    g.add_argument("--evaluate", action="store_true", help="evaluate only")
    g.add_argument("--no-cython", "--no_cython", dest="no_cython", action="store_true",
                   help="force the NumPy evaluator")
    g.add_argument("--print-freq", "--print_freq", dest="print_freq", type=nonneg_int, default=20,
                   help="log every N iterations when no progress bar is shown")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard event files under <run>/tb (tensorboardX)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on a terminal (plain log lines when output is redirected)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` plus ``args.explicit``: the sorted dests set on the command line."""
    show_defaults(parser)
    args = parser.parse_args(argv)
    args.explicit = sorted(explicit_dests(parser, argv))
    return args


def resolve_common(args: argparse.Namespace) -> argparse.Namespace:
    """Fill derived defaults in place: ``testset`` list, ``run_name``."""
    args.testset = parse_csv(args.testset) if args.testset else [args.dataset]
    if not args.run_name:
        args.run_name = f"{args.arch}-s{args.seed}"
    return args
