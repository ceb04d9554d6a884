"""A supervised warm start for CPU verification runs (not part of MPRD): ImageNet weights cannot be downloaded here,
so the unsupervised runs on ``--dataset synthetic`` start from a CNN trained briefly *with labels on a disjoint
synthetic dataset* (another generator seed, so other people), as an ImageNet-like initialisation.

    python mprd/warmstart.py -d synthetic --synthetic-seed 1 -a resnet18 --no-pretrained --height 128 --width 64 --epochs 6

Writes ``<exp-dir>/mprd_warmstart/synthetic/<run-name>/checkpoint.pth`` (``--init-weights`` of ``mprd/main.py``).
Loss: cross-entropy on a linear classifier over the unit-norm features scaled by 1/0.05 (a cosine classifier).
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.checkpoint import save_checkpoint  # noqa: E402
from common.cli import base_parser, resolve_common  # noqa: E402
from common.data.loaders import build_train_loader  # noqa: E402
from common.datasets import canonical_name  # noqa: E402
from common.errors import run_main  # noqa: E402
from common.run import setup_run  # noqa: E402


def get_parser():
    p = argparse.ArgumentParser("mprd-warmstart", parents=[base_parser()], description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic-seed", dest="synthetic_seed", type=int, default=1)
    p.add_argument("--num-instances", dest="num_instances", type=int, default=4)
    p.add_argument("--pooling-type", dest="pooling_type", default="avg")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=5e-4)
    p.set_defaults(dataset="synthetic", epochs=6, batch_size=32, arch="resnet18")
    return p


def main(argv=None):
    from mprd.ddp import one_process_only
    one_process_only("mprd/warmstart.py")
    args = resolve_common(get_parser().parse_args(argv))
    args.dataset = canonical_name(args.dataset)
    args.init_weights, args.combine_all = "", getattr(args, "combine_all", False)
    from mprd.engine import build_model, load_dataset
    run = setup_run(args, "mprd_warmstart")
    ds = load_dataset(args)
    loader = build_train_loader(ds.train, args.height, args.width, args.batch_size, args.num_instances,
                                args.workers, args.seed)
    model = build_model(args).to(run.device)
    classifier = torch.nn.Linear(model.feat_dim, ds.num_train_pids, bias=False).to(run.device)
    opt = torch.optim.Adam(list(model.parameters()) + list(classifier.parameters()), lr=args.lr,
                           weight_decay=args.weight_decay)
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        for it, (img, pid, _, _) in enumerate(loader):
            if args.max_batches and it >= args.max_batches:
                break
            logits = F.linear(model(img.to(run.device)), F.normalize(classifier.weight, dim=1)) / 0.05
            loss = F.cross_entropy(logits, pid.to(run.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()), count + 1
        run.log(f"warm-start epoch {epoch + 1}/{args.epochs}: loss {total / max(count, 1):.3f}")
        run.log_metrics(epoch + 1, prefix="warmstart", loss=total / max(count, 1))
    save_checkpoint(run.checkpoint_path, {"state_dict": model.state_dict(), "epoch": args.epochs}, args=vars(args))
    run.log(f"saved {run.checkpoint_path}")
    run.close()


if __name__ == "__main__":
    run_main(main)
