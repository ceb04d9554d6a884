"""Write a pseudo texture for every image of a folder or a dataset with a SAN-PG checkpoint (spec §6.2-6.3).

    python san/generate_texture.py -m exp/san/synthetic/pg-.../checkpoint.pth -i IMAGES -o TEXTURES
    python san/generate_texture.py -m PG.pth -d synthetic --data-dir data       # -> <root>/texture_synthetic/

The original's flags (``-m/--model``, ``-i/--img``, ``-o/--out``, ``-g/--gpu``) are kept. Differences from the
release's script (which loaded a pickled module, GPU only, BGR input scaled by /225, 64 x 64 output without
clipping, flat folders only): the model is our SAN-PG checkpoint (``san/train_pg.py``, weights only); input RGB,
resized to the checkpoint's height x width and ImageNet-normalised as in ``san/main.py``; the output is the
decoder's H x 2W texture clipped to [-1, 1] before the uint8 cast; folders are walked recursively and mirrored
(``texture*`` sub-folders are skipped), each texture saved under its image's relative path and name, which is
the layout ``san/main.py`` reads (``san/textures.py``). With ``-d`` on a synthetic dataset that has ground-truth
maps, the pseudo-vs-true L1 is printed too.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from common.checkpoint import load_checkpoint  # noqa: E402
from common.errors import ReidError, run_main  # noqa: E402

IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def get_parser():
    p = argparse.ArgumentParser("san.generate_texture", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="SAN-PG checkpoint.pth (san/train_pg.py)")
    p.add_argument("-i", "--img", default="", help="image folder (walked recursively) or one image")
    p.add_argument("-o", "--out", default="", help="output folder (default with -d: <root>/texture_<dataset>)")
    p.add_argument("-d", "--dataset", default="", help="dataset key instead of -i: every train/query/gallery image")
    p.add_argument("--data-dir", dest="data_dir", default=os.environ.get("REID_DATA", "data"))
    p.add_argument("--synthetic-ids", dest="synthetic_ids", type=int, default=None)
    p.add_argument("--synthetic-seed", dest="synthetic_seed", type=int, default=None)
    p.add_argument("--cuhk03-labeled", dest="cuhk03_labeled", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("-g", "--gpu", default="", help="accepted (original flag); use --device")
    p.add_argument("--device", default="auto")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=64)
    return p


def list_images(folder: str):
    """Image files under ``folder``, recursively, skipping ``texture*`` folders; sorted relative paths."""
    out = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("texture"))
        out += [os.path.relpath(os.path.join(dirpath, f), folder) for f in sorted(files)
                if f.lower().endswith(IMG_EXT)]
    return out


def load_pg(path: str, device):
    from san.decoder import SADecoder
    from san.model import SAEncoder
    st = load_checkpoint(path, map_location=device)
    if "decoder" not in st:
        raise ReidError(f"{path} has no decoder weights", fix="pass a checkpoint.pth written by san/train_pg.py or "
                                                              "san/main.py")
    enc = SAEncoder(int(st.get("num_classes", 1)), st["arch"], pretrained=False)
    enc.load_state_dict(st["encoder"])
    dec = SADecoder(enc.skip_channels)
    dec.load_state_dict(st["decoder"])
    h = st.get("height") or st["args"]["height"]
    w = st.get("width") or st["args"]["width"]
    return enc.to(device).eval(), dec.to(device).eval(), int(h), int(w)


def to_uint8(tex: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] (clipped first) -> (H, W, 3) uint8."""
    x = ((tex.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def generate(enc, dec, h, w, sources, targets, device, batch_size=64):
    """Texture of each ``sources[i]`` written to ``targets[i]``. Returns (number written, seconds)."""
    from common.data.dataset import read_image
    from san.data import build_image_transform
    tf = build_image_transform(h, w, is_train=False)
    start = time.time()
    with torch.no_grad():
        for s in range(0, len(sources), batch_size):
            imgs = torch.stack([tf(read_image(p)) for p in sources[s:s + batch_size]]).to(device)
            _, f, x1, x2, x3 = enc(imgs)
            tex = dec(f, x1, x2, x3)[0]
            for t, out in zip(tex, targets[s:s + batch_size]):
                os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
                Image.fromarray(to_uint8(t)).save(out, quality=95) if out.lower().endswith((".jpg", ".jpeg")) \
                    else Image.fromarray(to_uint8(t)).save(out)
    return len(sources), time.time() - start


def main(argv=None):
    from common.env import select_device
    args = get_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:  # every process would write every texture file
        raise ReidError(f"generate_texture.py runs as one process (WORLD_SIZE={world})",
                        fix="run it without torchrun: python san/generate_texture.py ...")
    device = select_device(args.device)
    enc, dec, h, w = load_pg(args.model, device)
    dataset = None
    if args.dataset:
        from common.datasets import build_dataset, canonical_name
        from san.textures import image_base, texture_path, texture_root
        key = canonical_name(args.dataset)
        kw = {}
        if key == "synthetic":
            kw = {"textures": True, **({"num_ids": args.synthetic_ids} if args.synthetic_ids else {}),
                  **({"seed": args.synthetic_seed} if args.synthetic_seed is not None else {})}
        elif key == "cuhk03":
            kw = {"label_type": "labeled" if args.cuhk03_labeled else "detected"}
        dataset = build_dataset(key, args.data_dir, **kw)
        recs = list({r.img_path: r for r in dataset.train + dataset.query + dataset.gallery}.values())
        base, root = image_base(dataset), texture_root(dataset, args.out)
        sources = [r.img_path for r in recs]
        targets = [texture_path(p, base, root) for p in sources]
    elif args.img and os.path.isfile(args.img):
        sources = [args.img]
        targets = [os.path.join(args.out or ".", os.path.basename(args.img))]
        root = args.out or "."
    elif args.img and os.path.isdir(args.img):
        if not args.out:
            raise ReidError("-o/--out is required with a folder -i", fix="pass the texture folder to write")
        rel = list_images(args.img)
        sources = [os.path.join(args.img, r) for r in rel]
        targets = [os.path.join(args.out, r) for r in rel]
        root = args.out
    else:
        raise ReidError(f"-i {args.img!r} is neither an image nor a folder", fix="pass -i IMAGES or -d DATASET")
    if not sources:
        raise ReidError(f"no images under {args.img}", where=args.img)
    n, secs = generate(enc, dec, h, w, sources, targets, device, args.batch_size)
    print(f"wrote {n} textures ({h}x{2 * w}) to {root} in {secs:.1f}s ({n / max(secs, 1e-9):.1f} images/s)")
    out = {"written": n, "seconds": secs, "images_per_s": n / max(secs, 1e-9)}
    if dataset is not None and dataset.extra.get("textures"):
        out.update(pseudo_vs_true(dataset, root, h, w))
        print(f"pseudo-vs-true texture L1 ([-1, 1] units): train {out['pseudo_vs_true_l1_train']:.4f}, "
              f"query+gallery {out['pseudo_vs_true_l1_test']:.4f}")
    return out


def pseudo_vs_true(dataset, root, h, w):
    """Mean L1 between the written pseudo textures and the true maps (both at h x 2w, in [-1, 1])."""
    from san.data import load_texture
    from san.textures import image_base, texture_path, true_synthetic_textures
    base = image_base(dataset)
    out = {}
    for name, recs, relab in (("train", dataset.train, True),
                              ("test", [r for r in dataset.query + dataset.gallery
                                        if r.pid in dataset.extra["textures"]], False)):
        trues = true_synthetic_textures(dataset, recs, relabelled=relab)
        d = [(load_texture(texture_path(r.img_path, base, root), h, 2 * w) - load_texture(t, h, 2 * w)).abs().mean()
             for r, t in zip(recs, trues)]
        out[f"pseudo_vs_true_l1_{name}"] = float(torch.stack(d).mean())
    return out


if __name__ == "__main__":
    run_main(main)
