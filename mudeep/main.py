"""MuDeep v2: leader-based multi-scale attention (Qian et al., TPAMI 2019), after naiq/MuDeep_v2.

Examples::

    python mudeep/main.py --dataset market --data-dir ~/data --pretrained-path resnet50-0676ba61.pth
    python mudeep/main.py --preset market_v2 --dataset market                      # 384 x 128
    python mudeep/main.py --evaluate --resume market_160.pkl --testset market,duke,cuhk03_np_detected
    python mudeep/main.py --TRAIN.ROOT dataset/Market-1501/bounding_box_train --TEST.QUERY dataset/Market-1501/query/ \\
        --TEST.GALLERY dataset/Market-1501/bounding_box_test/                       # the original's folders
    python mudeep/main.py --dataset synthetic -a resnet18 --no-pretrained --height 96 --width 48 --P 8 --K 4
    torchrun --nproc_per_node 4 mudeep/main.py --dataset market --pretrained-path resnet50-0676ba61.pth --sync-bn

Defaults are the original's (ResNet-50, 384 x 192, P x K = 12 x 6, lr 0.09 / 0.009, step 80, 160 epochs,
evaluation every 5 epochs into opt.txt, checkpoint every 10, seed 12345). ``--evaluate`` tests ``--resume PATH``
(our checkpoint.pth, an original NAME_<epoch>.pkl, or a folder of them; ``--out-name`` writes the original's
``test()`` report). Under torchrun the P x K batch stays global (P a multiple of the process count); see
``engine.py`` and the README's Multi-GPU section.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # `python mudeep/main.py`: put the repo root (not the cwd) on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.errors import PeerError, ReidError, run_main  # noqa: E402
from mudeep.config import build_parser, parse_args  # noqa: E402


def get_parser():
    return build_parser(description=__doc__)


def main(argv=None) -> dict:
    """Parse ``argv``; train (then evaluate) or, with ``--evaluate``, test a checkpoint. Returns {test set: metrics}."""
    args = parse_args(argv, description=__doc__)
    from mudeep import engine
    run = engine.setup(args)
    try:
        return engine.test(args, run) if args.evaluate else engine.train(args, run)
    except ReidError as e:  # torchrun: an error every rank finds (a resume file, a flag) is printed by rank 0 alone
        if run.is_main or isinstance(e, PeerError):
            raise
        raise PeerError(e.what, e.fix, e.where) from e
    finally:
        run.close()


if __name__ == "__main__":
    run_main(main)
