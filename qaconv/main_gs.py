"""QAConv 2.x (CVPR 2022, "QAConv-GS"): graph sampling of mutually close classes into each batch, trained with
the batch-hard triplet loss on QAConv scores (2.1, default) or the pairwise matching loss (2.0); AMP on CUDA;
k-reciprocal re-ranking and TLift at test time.

Examples::

    python qaconv/main_gs.py --dataset market --paper-testsets --pretrained-path resnet50_ibn_b.pth   # cuhk03_np_detected,msmt
    python qaconv/main_gs.py --dataset msmt --combine_all --testset cuhk03_np_detected,market
    python qaconv/main_gs.py --version 2.0 --dataset randperson --epochs 4 --step_size 2
    python qaconv/main_gs.py --dataset synthetic -a resnet18 --ibn none --no-pretrained --height 128 --width 64

2.1 (default, the repository's HEAD ``main.py``): K=2 images per class, 31 neighbour classes + anchor per batch
of 64, margin 16, clip 8, lr 0.005 with the adaptive schedule (decay x0.1 once the epoch loss falls below
``--step_factor`` x the second epoch's, then train half as many epochs again; at most ``--max_epochs``).
2.0 (``main_gs.py`` of that release): K=4, pairwise matching loss, re-ranked class graph, one random P x K
epoch first, lr 0.001, 15 epochs decayed at 10, clip 512. The class-memory releases 1.x are ``qaconv/main.py``.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # `python qaconv/main_gs.py`: put the repo root (not the cwd) on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qaconv.config import GRAPH_SAMPLING_VERSIONS, build_parser, parse_args  # noqa: E402


def get_parser():
    return build_parser("qaconv/main_gs.py", __doc__, GRAPH_SAMPLING_VERSIONS)


def main(argv=None) -> dict:
    """Parse ``argv``, train (unless ``--evaluate``) and evaluate. Returns {test set: metrics}."""
    args = parse_args(get_parser(), argv)
    from qaconv.engine import run_main
    return run_main(args)


if __name__ == "__main__":
    from common.errors import run_main as run_guarded  # expected errors: one message block, exit status 2
    run_guarded(main)
