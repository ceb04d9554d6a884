"""Command-line flags of ``qaconv/main.py`` (QAConv 1.x) and ``qaconv/main_gs.py`` (QAConv 2.x), with the
original spellings (``--combine_all``, ``--final_layer``, ``--test_gal_batch``, ...) and the defaults of each
released version.

``--version`` picks a preset: the defaults of that release's ``main.py`` (1.0, 1.1, 1.2) or graph-sampling
script (2.0 ``main_gs.py``, 2.1 = the repository's HEAD ``main.py``). Any flag given explicitly wins over the
preset. The paper defaults stay the defaults; tests and the demo pass small backbones and images.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

from common.cli import HelpFormatter, base_parser, parse_args as parse_with_explicit, positive_int, resolve_common
from common.errors import ReidError

CLASS_MEMORY_VERSIONS = ("1.0", "1.1", "1.2")
GRAPH_SAMPLING_VERSIONS = ("2.0", "2.1")

_COMMON = dict(arch="resnet50", final_layer="layer3", height=384, width=128, workers=8, test_fea_batch=256,
               paper_testset="cuhk03_np_detected,msmt", min_size=0.0, max_size=0.8, amp=False, clip_value=0.0,
               pre_epochs=0, step_factor=1.0, margin=16.0, num_instance=0, loss="class_memory", gs_pre_epochs=0,
               gs_rerank=False)

PRESETS: Dict[str, Dict] = {
    # ECCV'20 release: neck 128 (conv + BN), batch 32, lr 0.01, 60 epochs decayed at 40, flip + occlusion.
    "1.0": dict(_COMMON, batch_size=32, neck=128, ibn="none", lr=0.01, epochs=60, step_size=40,
                paper_testset="duke,market", test_fea_batch=64, test_gal_batch=128, test_prob_batch=4096),
    # 1.1: 10 pre-training trials, augmentation switched on at --acc_thr (flip + occlusion).
    "1.1": dict(_COMMON, batch_size=8, neck=64, ibn="none", lr=0.005, epochs=15, step_size=10, pre_epochs=1,
                paper_testset="duke,market", test_fea_batch=64, test_gal_batch=4, test_prob_batch=4096),
    # 1.2 (the v2.0 release's main.py): as 1.1, switching to the full augmentation.
    "1.2": dict(_COMMON, batch_size=8, neck=64, ibn="none", lr=0.005, epochs=15, step_size=10, pre_epochs=1,
                test_fea_batch=64, test_gal_batch=4, test_prob_batch=4096),
    # CVPR'22 first release (main_gs.py): GS with K=4, pairwise matching loss, re-ranked class graph.
    "2.0": dict(_COMMON, batch_size=64, neck=64, ibn="b", lr=0.001, epochs=15, step_size=10, clip_value=512.0,
                num_instance=4, loss="pairwise", gs_pre_epochs=1, gs_rerank=True, test_fea_batch=64,
                test_gal_batch=4, test_prob_batch=4096, amp=True),
    # QAConv 2.1 = repository HEAD: GS with K=2, batch-hard triplet on QAConv scores, adaptive schedule, AMP.
    "2.1": dict(_COMMON, batch_size=64, neck=128, ibn="b", lr=0.005, epochs=60, step_size=0, step_factor=0.7,
                clip_value=8.0, num_instance=2, loss="triplet", test_gal_batch=128, test_prob_batch=128,
                amp=True),
}


def add_qaconv_args(parser: argparse.ArgumentParser) -> None:
    """The QAConv flags (original spellings first, kebab-case aliases beside them)."""
    g = parser.add_argument_group("QAConv")
    g.add_argument("--version", choices=sorted(PRESETS), help="release whose defaults to use (see module doc)")
    g.add_argument("--final_layer", "--final-layer", dest="final_layer", choices=["layer2", "layer3", "layer4"])
    g.add_argument("--neck", type=int, help="channels of the 3x3 neck conv (0: none)")
    g.add_argument("--ibn", choices=["a", "b", "none"], help="IBN-Net variant of the backbone")
    g.add_argument("--loss", choices=["class_memory", "triplet", "pairwise"],
                   help="class memory (1.x), pairwise matching (2.0) or batch-hard triplet (2.1)")
    g.add_argument("--margin", type=float, help="triplet margin on QAConv scores (2.1: 16)")
    g.add_argument("--mem_batch_size", "--mem-batch-size", dest="mem_batch_size", type=int, default=16,
                   help="classes per chunk of the class-memory loss (1.2: one matcher call and BN update per chunk, "
                        "as the original; 1.0/1.1: a memory bound only, the head runs once over all classes)")
    g.add_argument("--step_size", "--step-size", dest="step_size", type=int,
                   help="StepLR period in epochs (1.x, 2.0)")
    g.add_argument("--step_factor", "--step-factor", dest="step_factor", type=float,
                   help="2.1 adaptive schedule: decay when the loss drops below this fraction of epoch 2's "
                        "(>= 1: fixed decay after that epoch)")
    g.add_argument("--max_epochs", "--max-epochs", dest="epochs", type=positive_int,
                   help="alias of --epochs (2.1 name)")
    g.add_argument("--paper-testsets", dest="paper_testsets", action="store_true",
                   help="test on the release's cross-dataset test sets (1.0/1.1: duke,market; 1.2/2.x: "
                        "cuhk03_np_detected,msmt) instead of the training set")
    g.add_argument("--clip_value", "--clip-value", dest="clip_value", type=float,
                   help="gradient-norm clipping of model and matcher (<= 0: off)")
    g.add_argument("--freeze-bn", "--freeze_bn", dest="freeze_bn", action=argparse.BooleanOptionalAction,
                   default=None, help="keep the backbone's BatchNorm statistics fixed while training (2.x: on, as the "
                                      "original's per-iteration model.eval(); 1.x: off). Fixed statistics only make "
                                      "sense for ImageNet weights: use --no-freeze-bn with --no-pretrained")
    g.add_argument("--sync-bn", "--sync_bn", dest="sync_bn", action=argparse.BooleanOptionalAction, default=False,
                   help="under torchrun: backbone BatchNorm statistics over the global batch (1.x, whose BN trains; "
                        "2.x keeps BN frozen). One process: no effect")
    g.add_argument("--train-aug", "--train_aug", dest="train_aug", default="auto",
                   choices=["auto", "none", "flip_occlusion", "full"],
                   help="training augmentation: auto = the release's regimes (see qaconv/transforms.py); another "
                        "value uses that regime throughout (none: resize only)")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")
    g.add_argument("--acc_thr", "--acc-thr", dest="acc_thr", type=float, default=0.6,
                   help="1.1/1.2: switch augmentation on after an epoch with training accuracy above this")
    g.add_argument("--pre_epochs", "--pre-epochs", dest="pre_epochs", type=int,
                   help="1.1/1.2 pre-training epochs per trial (0: no pre-training)")
    g.add_argument("--max_steps", "--max-steps", dest="max_steps", type=int, default=2000,
                   help="iteration budget of one pre-training trial")
    g.add_argument("--num_trials", "--num-trials", dest="num_trials", type=int, default=10,
                   help="pre-training trials")
    g.add_argument("--num_instance", "--num-instance", dest="num_instance", type=int,
                   help="GS: images per class in a batch (K)")
    g.add_argument("--gs_pre_epochs", "--gs-pre-epochs", dest="gs_pre_epochs", type=int,
                   help="2.0: epochs with random P x K batches before graph sampling")
    g.add_argument("--gs_rerank", dest="gs_rerank", action="store_true", default=None,
                   help="2.0: k-reciprocal re-ranking of the class graph")
    g.add_argument("--gs_rerank_off", dest="gs_rerank", action="store_false", help="disable --gs_rerank")
    g.add_argument("--gs_save", "--gs-save", dest="gs_save", action="store_true",
                   help="save each epoch's class graph as <run>/gs<epoch>.npz")
    g.add_argument("--gs_verbose", "--gs-verbose", dest="gs_verbose", action="store_true",
                   help="log the graph sampler's timing")
    g.add_argument("--min_size", "--min-size", dest="min_size", type=float, help="random occlusion min side")
    g.add_argument("--max_size", "--max-size", dest="max_size", type=float, help="random occlusion max side")

    g = parser.add_argument_group("test")
    g.add_argument("--test_fea_batch", "--test-fea-batch", dest="test_fea_batch", type=int,
                   help="images per feature-extraction batch")
    g.add_argument("--test_gal_batch", "--test-gal-batch", dest="test_gal_batch", type=int,
                   help="gallery maps per matching chunk")
    g.add_argument("--test_prob_batch", "--test-prob-batch", dest="test_prob_batch", type=int,
                   help="query maps per matching chunk")
    g.add_argument("--test-dtype", "--test_dtype", dest="test_dtype", default="auto",
                   choices=["auto", "float32", "float16", "bfloat16"],
                   help="dtype of test-time matching (auto: float16 on CUDA with AMP, else float32; half types "
                        "need CUDA)")
    g.add_argument("--do_tlift", "--do-tlift", dest="do_tlift", action="store_true",
                   help="k-reciprocal re-ranking then TLift (test sets with time stamps)")
    g.add_argument("--do_rerank", "--do-rerank", dest="do_rerank", action="store_true",
                   help="k-reciprocal re-ranking (without TLift)")
    g.add_argument("--distance", choices=["neg", "sigmoid"], default=None,
                   help="test distance: -score (2.1/HEAD) or 1 - sigmoid(score / 10) (earlier releases; default "
                        "for them)")
    g.add_argument("--tau", type=float, default=100.0, help="TLift: co-occurrence window (s)")
    g.add_argument("--sigma", type=float, default=200.0, help="TLift: time-difference sensitivity (s)")
    g.add_argument("--K", dest="tlift_k", type=int, default=10, help="TLift: top-K pivots")
    g.add_argument("--alpha", type=float, default=0.2, help="TLift: fusion regulariser")
    g.add_argument("--save_score", "--save-score", dest="save_score", action="store_true",
                   help="write <run>/<testset>_score.mat (scores, ids, cams, times, file names)")
    g.add_argument("--compare-histogram", dest="compare_histogram", action="store_true",
                   help="also evaluate the untrained model and the colour-histogram reference")
    g.add_argument("--visualize-pairs", dest="visualize_pairs", type=int, default=0,
                   help="after testing, draw local correspondences of the first N queries and their top match")

    g = parser.add_argument_group("bookkeeping (original flags)")
    g.add_argument("--method", default="QAConv", help="label stored in results (original flag)")
    g.add_argument("--sub_method", "--sub-method", dest="sub_method",
                   help="run folder name when --run-name is not given (original flag; default "
                        "<arch>[-ibn<x>]-<final_layer>-v<version>-s<seed>)")
    g.add_argument("--auto-resume", dest="auto_resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from the run folder's checkpoint when one exists")


def build_parser(prog: str, description: str, versions) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog, parents=[base_parser()], description=description,
                                     formatter_class=HelpFormatter)
    add_qaconv_args(parser)
    parser.set_defaults(version=versions[-1])
    parser._qaconv_versions = tuple(versions)  # noqa: SLF001 - read by parse_args below
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse twice: once for ``--version``, then with that version's preset as defaults; resolve aliases."""
    pre, _ = parser.parse_known_args(argv)
    allowed = parser._qaconv_versions  # noqa: SLF001
    if pre.version not in allowed:
        parser.error(f"--version {pre.version} belongs to the other script: {parser.prog} runs {', '.join(allowed)} "
                     f"(class memory: qaconv/main.py --version 1.x; graph sampling: qaconv/main_gs.py).")
    preset = dict(PRESETS[pre.version])
    paper_testset = preset.pop("paper_testset")
    parser.set_defaults(**preset)
    args = parse_with_explicit(parser, argv)
    args.paper_testset = paper_testset
    if args.testset is None and args.paper_testsets:
        args.testset = paper_testset
    return resolve_args(args)  # otherwise --testset defaults to the training set


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Canonical dataset keys, ``ibn=None`` for 'none', run name from ``--sub_method``, consistency checks."""
    from common.datasets import canonical_name
    args.dataset = canonical_name(args.dataset)
    args.ibn = None if args.ibn in (None, "none") else args.ibn
    if not args.run_name:
        args.run_name = args.sub_method or default_run_name(args)
    if args.freeze_bn is None:
        args.freeze_bn = args.version in GRAPH_SAMPLING_VERSIONS
    if args.resume == "ori":  # the original's "load <output dir>/checkpoint" spelling
        args.resume = "auto"
    resolve_common(args)
    args.testset = [canonical_name(t) for t in args.testset]
    if args.version in GRAPH_SAMPLING_VERSIONS:
        if args.loss == "class_memory":
            raise ReidError("--loss class_memory belongs to QAConv 1.x", fix="run qaconv/main.py for it")
        if args.num_instance <= 0 or args.batch_size % args.num_instance:
            raise ReidError(f"--batch-size {args.batch_size} must be a positive multiple of --num_instance "
                            f"{args.num_instance} (graph sampling batches are classes x K images)",
                            fix="pass a batch size that is a multiple of --num_instance")
    elif args.loss != "class_memory":
        raise ReidError(f"qaconv/main.py trains with the class-memory loss; --loss {args.loss} needs "
                        f"qaconv/main_gs.py", fix="run qaconv/main_gs.py for it")
    return args


def default_run_name(args: argparse.Namespace) -> str:
    """``<arch>[-ibn<x>]-<final_layer>-v<version>-s<seed>``: the arguments that make a different model."""
    ibn = f"-ibn{args.ibn}" if args.ibn else ""
    return f"{args.arch}{ibn}-{args.final_layer}-v{args.version}-s{args.seed}"
