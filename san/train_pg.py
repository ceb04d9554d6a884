"""SAN-PG: train SA-Enc + SA-Dec with the reconstruction loss only on (person image, texture) pairs (spec §6.4).

The release has no SAN-PG code; this follows the spec's reading: same encoder and decoder as ``san/main.py``,
L1 between the predicted and the true texture (both in [-1, 1], at the decoder size H x 2W), Adam for both parts
(our default lr 1e-4, betas (0.5, 0.999): the authors' recipe is unpublished). Images get a plain resize +
ImageNet normalisation (no flip: it would break the UV left/right layout; no erasing).

Data: ``--pit-root DIR`` (layout in ``san/pg_data.py``) or ``--dataset synthetic`` generated with textures; the
default synthetic world is ``--synthetic-seed 1``, whose identities are disjoint from the re-ID data (seed 0).
A seeded ``--heldout`` fraction of identities is held out; each evaluation reports the held-out L1 beside the
"predict the mean training texture" baseline. Writes ``<run>/checkpoint.pth`` (exact resume), which
``san/generate_texture.py -m`` reads.

    python san/train_pg.py -d synthetic -a resnet18_fc512 --no-pretrained --height 64 --width 32 --epochs 10
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state  # noqa: E402
from common.cli import base_parser, resolve_common  # noqa: E402
from common.data.loaders import EpochDataLoader  # noqa: E402
from common.datasets import build_dataset, canonical_name  # noqa: E402
from common.errors import run_main  # noqa: E402
from common.run import setup_run  # noqa: E402


def get_parser():
    p = argparse.ArgumentParser("san.train_pg", parents=[base_parser()], description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("SAN-PG")
    g.add_argument("--pit-root", dest="pit_root", default="", help="PIT folder (images/, textures/)")
    g.add_argument("--synthetic-seed", dest="synthetic_seed", type=int, default=1)
    g.add_argument("--heldout", type=float, default=0.2, help="fraction of identities held out")
    g.add_argument("--pg-beta1", dest="pg_beta1", type=float, default=0.5)
    g.add_argument("--eval-freq", dest="eval_freq", type=int, default=5)
    p.set_defaults(dataset="synthetic", arch="resnet50_fc512", lr=1e-4, epochs=30, batch_size=32, seed=1)
    return p


class PairImages:
    """Items (img (3, H, W), texture (3, H, 2W) in [-1, 1], group)."""

    def __init__(self, pairs, height, width):
        from san.data import build_image_transform
        self.pairs, self.h, self.w = pairs, height, width
        self.tf = build_image_transform(height, width, is_train=False)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        from common.data.dataset import read_image
        from san.data import load_texture
        img, tex, g = self.pairs[i]
        return self.tf(read_image(img)), load_texture(tex, self.h, 2 * self.w), g


def heldout_l1(enc, dec, loader, mean_tex, device):
    """(model L1, mean-texture L1) averaged over pixels of the loader's pairs."""
    enc.eval()
    dec.eval()
    tot = base = n = 0.0
    with torch.no_grad():
        for imgs, tex, _ in loader:
            imgs, tex = imgs.to(device), tex.to(device)
            _, f, x1, x2, x3 = enc(imgs)
            pred = dec(f, x1, x2, x3)[0].clamp(-1, 1)
            tot += (pred - tex).abs().mean().item() * imgs.size(0)
            base += (mean_tex.to(device) - tex).abs().mean().item() * imgs.size(0)
            n += imgs.size(0)
    return tot / n, base / n


def main(argv=None):
    from san.decoder import SADecoder
    from san.model import SAEncoder
    from san.pg_data import pit_pairs, split_groups, synthetic_pairs
    args = get_parser().parse_args(argv)
    args.dataset = "pit" if args.pit_root else canonical_name(args.dataset)
    resolve_common(args)
    args.run_name = args.run_name if args.run_name != f"{args.arch}-s{args.seed}" else f"pg-{args.arch}-s{args.seed}"
    run = setup_run(args, "san")
    try:
        if args.pit_root:
            pairs = pit_pairs(args.pit_root)
        else:
            kw = {"textures": True, "seed": args.synthetic_seed}
            if args.synthetic_ids:
                kw["num_ids"] = args.synthetic_ids
            pairs = synthetic_pairs(build_dataset(args.dataset, args.data_dir, **kw))
        train_pairs, held = split_groups(pairs, args.heldout, args.seed)
        run.log(f"SAN-PG pairs: {len(train_pairs)} train ({len({g for *_, g in train_pairs})} ids), "
                f"{len(held)} held out ({len({g for *_, g in held})} ids)")
        h, w = args.height, args.width
        train_ds = PairImages(train_pairs, h, w)
        gen = torch.Generator()
        loader = EpochDataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=gen,
                                 num_workers=args.workers, seed=args.seed)
        held_loader = DataLoader(PairImages(held, h, w), batch_size=args.test_batch_size, num_workers=args.workers)
        mean_tex = torch.stack([train_ds[i][1] for i in range(len(train_ds))]).mean(0, keepdim=True)
        device = run.device
        enc = SAEncoder(1, args.arch, pretrained=args.pretrained, pretrained_path=args.pretrained_path).to(device)
        dec = SADecoder(enc.skip_channels).to(device)
        params = [p for n, p in enc.named_parameters() if not n.startswith(("fc.", "classifier."))]
        opt = torch.optim.Adam(params + list(dec.parameters()), lr=args.lr, betas=(args.pg_beta1, 0.999))
        start = 0
        if args.resume or os.path.isfile(run.checkpoint_path):
            st = load_checkpoint(args.resume if args.resume not in ("", "auto") else run.checkpoint_path, device)
            enc.load_state_dict(st["encoder"])
            dec.load_state_dict(st["decoder"])
            opt.load_state_dict(st["optimizer"])
            set_rng_state(st["rng"])
            start = st["epoch"]
            run.log(f"resumed from epoch {start}")
        res = {}
        for epoch in range(start, args.epochs):
            enc.train()
            dec.train()
            loader.set_epoch(epoch)
            tot = n = 0.0
            for i, (imgs, tex, _) in enumerate(loader):
                if args.max_batches and i >= args.max_batches:
                    break
                imgs, tex = imgs.to(device), tex.to(device)
                _, _, f, x1, x2, x3 = enc(imgs)
                loss = (dec(f, x1, x2, x3)[0] - tex).abs().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item() * imgs.size(0)
                n += imgs.size(0)
            run.log_metrics(epoch + 1, "pg", train_l1=tot / max(n, 1))
            state = {"encoder": enc.state_dict(), "decoder": dec.state_dict(), "optimizer": opt.state_dict(),
                     "epoch": epoch + 1, "rng": rng_state(), "arch": args.arch, "height": h, "width": w,
                     "num_classes": 1}
            save_checkpoint(run.checkpoint_path, state, args=vars(args))
            if (epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs:
                l1, base = heldout_l1(enc, dec, held_loader, mean_tex, device)
                res = {"train_l1": tot / max(n, 1), "heldout_l1": l1, "mean_texture_l1": base, "epoch": epoch + 1}
                run.log_metrics(epoch + 1, "pg", heldout_l1=l1, mean_texture_l1=base)
                run.write_results("san_pg", res)
            run.log(f"epoch {epoch + 1}/{args.epochs} train L1 {tot / max(n, 1):.4f}"
                    + (f" | held-out L1 {res['heldout_l1']:.4f} vs mean texture {res['mean_texture_l1']:.4f}"
                       if res.get("epoch") == epoch + 1 else ""))
        if not res:
            l1, base = heldout_l1(enc, dec, held_loader, mean_tex, device)
            res = {"heldout_l1": l1, "mean_texture_l1": base, "epoch": start}
            run.write_results("san_pg", res)
        return res
    finally:
        run.close()


if __name__ == "__main__":
    run_main(main)
