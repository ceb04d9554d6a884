"""QAConv 1.x (ECCV 2020): ResNet feature maps matched by query-adaptive convolution, trained against a class
memory with a focal loss; optional k-reciprocal re-ranking and TLift at test time.

Examples::

    python qaconv/main.py --dataset market --testset duke,market --ibn b --pretrained-path resnet50_ibn_b.pth
    python qaconv/main.py --version 1.0 --dataset msmt --combine_all --testset market --do_tlift
    python qaconv/main.py --dataset market --evaluate --resume Exp/Market/QAConv/res50_layer3/checkpoint.pth.tar
    python qaconv/main.py --dataset synthetic -a resnet18 --no-pretrained --height 128 --width 64

``--version`` 1.0 / 1.1 / 1.2 (default) selects that release's defaults: 1.0 trains with flip + occlusion from
the start (batch 32, neck 128, lr 0.01, 60 epochs decayed at 40); 1.1 and 1.2 first run 10 pre-training trials
(``--pre_epochs``, ``--max_steps``, ``--num_trials``), train without augmentation until the training accuracy
passes ``--acc_thr``, then switch to flip + occlusion (1.1) or the full augmentation (1.2). QAConv 2.x with the
graph sampler is ``qaconv/main_gs.py``.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # `python qaconv/main.py`: put the repo root (not the cwd) on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qaconv.config import CLASS_MEMORY_VERSIONS, build_parser, parse_args  # noqa: E402


def get_parser():
    return build_parser("qaconv/main.py", __doc__, CLASS_MEMORY_VERSIONS)


def main(argv=None) -> dict:
    """Parse ``argv``, train (unless ``--evaluate``) and evaluate. Returns {test set: metrics}."""
    args = parse_args(get_parser(), argv)
    from qaconv.engine import run_main
    return run_main(args)


if __name__ == "__main__":
    from common.errors import run_main as run_guarded  # expected errors: one message block, exit status 2
    run_guarded(main)
