"""SAN training-step cost against a BoT (BNNeck) re-ID step on the same backbone and input, and pseudo-texture
generation throughput.

In one process, on the same random batch (P x K identity order, textures in [-1, 1]) and the same ResNet:

* ``bot``: crossmodal_bot's BNNeck model (last stride 1), CE-LS + batch-hard triplet, one Adam step;
* ``san-reid``: SA-Enc (fc512 head) with the re-ID losses only (the ablation's baseline);
* ``san``: the full SAN step (one forward, the re-ID gradient and the L_Rec + L_TR gradient, three optimisers).

The ratio san / bot is the decoder's cost. ``generate`` is the SA-Enc + SA-Dec forward of generate_texture.py
(batch of images -> H x 2W textures), without file I/O.

    python benchmarks/bench_san.py                                   # CPU: resnet18, 64x32, batch 16
    python benchmarks/bench_san.py --arch resnet50 --height 256 --width 128 --batch-size 64 --device cuda
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from crossmodal_bot.loss import build_loss  # noqa: E402
from crossmodal_bot.model import Baseline  # noqa: E402
from san.decoder import SADecoder  # noqa: E402
from san.loss import ReidCriterion  # noqa: E402
from san.model import SAEncoder  # noqa: E402
from san.trainer import SANStep  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, iters, warmup, device):
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.time()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.time() - start) / iters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", help="resnet18 / resnet34 / resnet50")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    b, k, n_cls = a.batch_size, 4, 100
    torch.manual_seed(0)
    imgs = torch.randn(b, 3, a.height, a.width, device=device)
    pids = (torch.arange(b // k) * 3).repeat_interleave(k).to(device)
    tex = torch.rand(b, 3, a.height, 2 * a.width, device=device) * 2 - 1

    bot = Baseline(n_cls, arch=a.arch, pretrained=False).to(device).train()
    crit = build_loss(n_cls, feat_dim=bot.feat_dim)
    opt = torch.optim.Adam(bot.parameters(), lr=3.5e-4)

    def bot_step():
        opt.zero_grad(set_to_none=True)
        logits, feat = bot(imgs)
        crit(logits, feat, pids)[0].backward()
        opt.step()

    enc = SAEncoder(n_cls, a.arch + "_fc512", pretrained=False).to(device)
    dec = SADecoder(enc.skip_channels).to(device)
    adam = lambda ps, lr: torch.optim.Adam(ps, lr=lr)  # noqa: E731
    full = SANStep(enc, dec, ReidCriterion(n_cls), torch.optim.Adam(enc.parameters(), lr=8e-4, amsgrad=True),
                   adam(enc.parameters(), 1e-5), adam(dec.parameters(), 1e-5))
    reid = SANStep(enc, dec, ReidCriterion(n_cls), full.opt_reid, full.opt_enc, full.opt_dec, use_rec=False,
                   use_tr=False)
    t_bot = timed(bot_step, a.iters, a.warmup, device)
    t_reid = timed(lambda: reid(imgs, pids, None), a.iters, a.warmup, device)
    t_san = timed(lambda: full(imgs, pids, tex), a.iters, a.warmup, device)
    enc.eval()
    dec.eval()

    def gen():
        with torch.no_grad():
            _, f, x1, x2, x3 = enc(imgs)
            dec(f, x1, x2, x3)

    t_gen = timed(gen, a.iters, a.warmup, device)
    print(f"{a.arch} {a.height}x{a.width} batch {b} on {device} (threads {torch.get_num_threads()}), "
          f"{a.iters} timed iterations:")
    for name, t in (("bot (BNNeck) step", t_bot), ("san re-ID-only step", t_reid), ("san full step", t_san)):
        print(f"  {name:<22} {1000 * t:8.1f} ms/it  {b / t:8.1f} images/s")
    print(f"  san full / bot         {t_san / t_bot:8.2f} x")
    print(f"  san full / san re-ID   {t_san / t_reid:8.2f} x")
    print(f"  texture generation     {b / t_gen:8.1f} images/s ({a.height}x{2 * a.width} textures)")
    return {"bot": t_bot, "san_reid": t_reid, "san": t_san, "generate_images_per_s": b / t_gen}


if __name__ == "__main__":
    main()
