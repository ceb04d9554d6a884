"""Command line of ``mudeep/main.py``: the original ``config.py`` options as flags, with its defaults.

The original's EasyDict ``cfg`` (``NAME``, ``GPU_ID``, ``NUM_CLASS``, ``ROOT``, ``TRAIN.*``, ``TEST.*``) is
:data:`ORIGINAL_CFG`; each option is a flag of the same spelling (``--TRAIN.LR 0.09``) with a kebab-case twin
(``--lr``). The values the original hard-codes outside ``config.py`` (repeat 3, erasing 0.5, weight decay 5e-4,
momentum 0.9, Nesterov, backbone factor 0.1, loss weights 2 and 1, dropout 0.5, 512 guidance / embedding
channels, seed 12345, 8 workers, flip at test) are flags too. ``--preset market_v1`` (384 x 192, default) or
``market_v2`` (384 x 128) sets the input size; an explicit ``--height/--width`` or ``--TRAIN.SIZE`` wins.
"""
from __future__ import annotations

import argparse
import copy
from typing import Dict, List

from common.cli import base_parser, resolve_common
from common.errors import ReidError

ORIGINAL_CFG: Dict = {
    "NAME": "market", "GPU_ID": (0, 1), "NUM_CLASS": 751, "ROOT": ".",
    "TRAIN": {"SIZE": (384, 192), "ROOT": "dataset/Market-1501/bounding_box_train", "LR": 0.09, "STEPSIZE": 80,
              "MAX_EPOCH": 160, "GAMMA": 0.1, "SNAPSHOT": 5, "CHECKPOINT": 10, "BATCH_SIZE": 32, "NUM_WORKERS": 8,
              "P": 12, "K": 6, "MARGIN": 1},
    "TEST": {"QUERY": "dataset/Market-1501/query/", "GALLERY": "dataset/Market-1501/bounding_box_test/",
             "BATCH_SIZE": 128},
}
PRESETS = {"market_v1": (384, 192), "market_v2": (384, 128)}
# cfg key -> argparse dest, for MuDeep_v2(cfg) and opt.txt
CFG_DEST = {"NAME": "name", "GPU_ID": "gpu_id", "NUM_CLASS": "num_class", "ROOT": "exp_dir",
            "TRAIN.SIZE": "size", "TRAIN.ROOT": "train_root", "TRAIN.LR": "lr", "TRAIN.STEPSIZE": "step_size",
            "TRAIN.MAX_EPOCH": "epochs", "TRAIN.GAMMA": "gamma", "TRAIN.SNAPSHOT": "snapshot",
            "TRAIN.CHECKPOINT": "checkpoint", "TRAIN.BATCH_SIZE": "unused_batch_size",
            "TRAIN.NUM_WORKERS": "workers", "TRAIN.P": "P", "TRAIN.K": "K", "TRAIN.MARGIN": "margin",
            "TEST.QUERY": "query_root", "TEST.GALLERY": "gallery_root", "TEST.BATCH_SIZE": "test_batch_size"}


def build_parser(prog: str = "mudeep/main.py", description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog, parents=[base_parser()], description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("MuDeep v2: the original config.py options")
    g.add_argument("--preset", choices=sorted(PRESETS), default="market_v1", help="market_v1: 384x192, v2: 384x128")
    g.add_argument("--NAME", "--name", dest="name", default=None,
                   help="experiment name: run sub-folder and checkpoint prefix NAME_<epoch>.pkl "
                        "(original 'market'; default: the --dataset key)")
    g.add_argument("--GPU_ID", dest="gpu_id", default=None,
                   help="comma list of GPU ids (original 0,1 with DataParallel); we use the first one, 'none' = CPU")
    g.add_argument("--NUM_CLASS", "--num-class", dest="num_class", type=int, default=None,
                   help="classifier width (original 751); checked against the training identities when given")
    g.add_argument("--ROOT", dest="exp_dir", help="output root (alias of --exp-dir)")
    g.add_argument("--TRAIN.SIZE", "--size", dest="size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size (original 384 192; sets --height --width)")
    g.add_argument("--TRAIN.ROOT", "--train-root", dest="train_root", default="",
                   help="a Market-named training folder (original dataset/Market-1501/bounding_box_train); "
                        "default: the --dataset split")
    g.add_argument("--TEST.QUERY", "--query-root", dest="query_root", default="", help="a Market-named query folder")
    g.add_argument("--TEST.GALLERY", "--gallery-root", dest="gallery_root", default="",
                   help="a Market-named gallery folder")
    g.add_argument("--TRAIN.LR", dest="lr", type=float, help="new-layer lr (original 0.09); backbone x0.1")
    g.add_argument("--TRAIN.STEPSIZE", "--step-size", dest="step_size", type=int, default=80)
    g.add_argument("--TRAIN.MAX_EPOCH", dest="epochs", type=int, help="epochs (original 160)")
    g.add_argument("--TRAIN.GAMMA", "--gamma", dest="gamma", type=float, default=0.1)
    g.add_argument("--TRAIN.SNAPSHOT", "--snapshot", dest="snapshot", type=int, default=5,
                   help="evaluate (and write opt.txt) every N epochs")
    g.add_argument("--TRAIN.CHECKPOINT", "--checkpoint", dest="checkpoint", type=int, default=10,
                   help="save NAME_<epoch>.pkl every N epochs (checkpoint.pth for resuming is written every epoch)")
    g.add_argument("--TRAIN.BATCH_SIZE", dest="unused_batch_size", type=int, default=32,
                   help="unused, as in the original (the batch is P*K)")
    g.add_argument("--TRAIN.NUM_WORKERS", dest="workers", type=int, help="loader workers (original: 8)")
    g.add_argument("--TRAIN.P", "--P", dest="P", type=int, default=12, help="identities per batch")
    g.add_argument("--TRAIN.K", "--K", dest="K", type=int, default=6, help="images per identity")
    g.add_argument("--TRAIN.MARGIN", "--margin", dest="margin", type=float, default=1.0)
    g.add_argument("--TEST.BATCH_SIZE", dest="test_batch_size", type=int, help="test batch (128)")
    g = p.add_argument_group("MuDeep v2: values the original hard-codes")
    g.add_argument("--repeat", type=int, default=3, help="sampler passes over the identities per epoch")
    g.add_argument("--erasing-p", dest="erasing_p", type=float, default=0.5)
    g.add_argument("--flip-p", dest="flip_p", type=float, default=0.5)
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=5e-4)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--base-lr-factor", dest="base_lr_factor", type=float, default=0.1)
    g.add_argument("--ce-weight", dest="ce_weight", type=float, default=2.0)
    g.add_argument("--tri-weight", dest="tri_weight", type=float, default=1.0)
    g.add_argument("--mining", choices=["block", "label"], default="block",
                   help="triplet mining: the original's label-free K-blocks, or by label")
    g.add_argument("--guidance", type=int, default=512, help="leader channels")
    g.add_argument("--embed-dim", dest="embed_dim", type=int, default=512)
    g.add_argument("--dropout", type=float, default=0.5)
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (nn.SyncBatchNorm on CUDA, "
                        "common.distributed.CPUSyncBatchNorm on the CPU); no effect in one process")
    g.add_argument("--flip-test", dest="flip_test", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--auto-resume", dest="auto_resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from the run folder's checkpoint.pth when there is one")
    g.add_argument("--compare-histogram", dest="compare_histogram", action="store_true",
                   help="also evaluate the untrained model and the colour histogram before training")
    g.add_argument("--out-name", dest="out_name", default="",
                   help="with --evaluate on a .pkl file or folder: write <folder>/<out-name>.txt as test()")
    g.add_argument("--overwrite", action="store_true", help="--out-name may replace an existing file")
    p.set_defaults(arch="resnet50", height=None, width=None, lr=0.09, epochs=160, workers=8, seed=12345,
                   test_batch_size=128, exp_dir="exp")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Preset size, GPU_ID -> device, NAME -> run name; checks."""
    from common.datasets import canonical_name
    args.dataset = canonical_name(args.dataset)
    preset_h, preset_w = PRESETS[args.preset]
    if args.size:
        args.height, args.width = args.size
    args.height = args.height or preset_h
    args.width = args.width or preset_w
    args.size = [args.height, args.width]
    if args.gpu_id is not None:
        ids = [s.strip() for s in str(args.gpu_id).split(",") if s.strip()]
        args.device = "cpu" if not ids or ids[0].lower() == "none" else f"cuda:{ids[0]}"
    if args.P < 1 or args.K < 1:
        raise ReidError(f"--P {args.P} / --K {args.K} must be positive", fix="e.g. --P 12 --K 6 (the original)")
    args.batch_size = args.P * args.K  # the original's batch; --batch-size / TRAIN.BATCH_SIZE are not used
    if not args.name:
        args.name = args.dataset
    if "-" in args.name:  # the original's test() parses the epoch from NAME_<epoch>.pkl
        raise ReidError(f"--NAME {args.name!r} contains '-'", fix="use letters, digits and '_' only")
    resolve_common(args)
    if args.run_name == f"{args.arch}-s{args.seed}":
        args.run_name = args.name
    args.testset = [canonical_name(t) for t in args.testset]
    return args


def parse_args(argv=None, description: str = "") -> argparse.Namespace:
    return resolve_args(build_parser(description=description).parse_args(argv))


def cfg_to_argv(cfg: Dict) -> List[str]:
    """Flags for a (possibly partial) original-style cfg dict (nested ``TRAIN`` / ``TEST``, or dotted keys)."""
    flat = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    argv = []
    for k, v in flat.items():
        if k not in CFG_DEST:
            raise ReidError(f"unknown cfg option {k!r}", fix=f"use one of {sorted(CFG_DEST)}")
        if v is None:
            continue
        if k == "GPU_ID":
            v = ",".join(str(i) for i in v) if isinstance(v, (list, tuple)) else str(v)
        if isinstance(v, (list, tuple)):
            argv += [f"--{k}", *[str(x) for x in v]]
        else:
            argv += [f"--{k}", str(v)]
    return argv


def cfg_from_args(args: argparse.Namespace) -> Dict:
    """The original cfg dict with the values in use (what opt.txt lists)."""
    cfg = copy.deepcopy(ORIGINAL_CFG)
    for key, dest in CFG_DEST.items():
        value = getattr(args, dest, None)
        if "." in key:
            sect, sub = key.split(".")
            cfg[sect][sub] = value
        else:
            cfg[key] = value
    return cfg
