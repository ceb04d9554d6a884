"""Cost of MuDeep v2 against a BoT-style ResNet (BoT: the same torchvision ResNet with last stride 1,
BNNeck, CE + triplet; same input, same batch, same process):
training-step throughput (forward + loss + backward + SGD step, random images, warm-up excluded) and peak memory,
as ratios MuDeep / BoT. MuDeep adds two more copies of layer4 (6 stride-1 blocks instead of 3), the leader, three
C x C channel attentions (2048 x 2048 with ResNet-50) and 12 embedding heads.

    python benchmarks/bench_mudeep.py                                   # CPU: resnet50, 96x32, batch 8, 2 iters
    python benchmarks/bench_mudeep.py --height 384 --width 128 --batch-size 72 --device cuda --iters 20

Each model runs in its own subprocess of this run (so one model's memory cannot hide the other's). Peak memory:
CUDA's ``max_memory_allocated``; on the CPU, the subprocess's peak RSS minus its RSS once the model is built
(activations, gradients and optimizer state of the training steps).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from crossmodal_bot.loss import build_loss  # noqa: E402
from crossmodal_bot.model import Baseline  # noqa: E402
from mudeep.loss import MuDeepLoss  # noqa: E402
from mudeep.model import MuDeepV2, count_parameters, parameter_groups  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name, model, step_loss, optimizer, args, device):
    """Returns (images/s, peak MB) of ``iters`` training steps after ``warmup`` ones."""
    g = torch.Generator().manual_seed(0)
    b = args.batch_size
    x = torch.randn(b, 3, args.height, args.width, generator=g).to(device)
    labels = (torch.arange(b) // args.k).to(device)  # P blocks of K
    model.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = rss_mb()

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=args.amp and device.type == "cuda"):
            loss = step_loss(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync(device)
    ips = args.iters * b / (time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else peak_rss_mb() - rss0
    print(f"{name:<8} {count_parameters(model) / 1e6:8.2f} M params  {ips:9.2f} img/s  peak {peak:9.1f} MB")
    return ips, peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--k", type=int, default=4, help="images per identity (triplet blocks)")
    p.add_argument("--num-classes", type=int, default=751)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--only", choices=["mudeep", "bot"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.only is None:
        print(f"{args.arch}, {args.height}x{args.width}, batch {args.batch_size}, {args.iters} iterations, {device}")

    if args.only == "mudeep":
        model = MuDeepV2(args.num_classes, args.arch, pretrained=False).to(device)
        crit = MuDeepLoss(1.0, args.k)
        opt = torch.optim.SGD(parameter_groups(model, 0.09), lr=0.09, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        res = bench("mudeep", model, lambda out, y: crit(out[:12], out[12:], y)[0], opt, args, device)
    elif args.only == "bot":
        model = Baseline(args.num_classes, args.arch, pretrained=False).to(device)
        crit = build_loss(args.num_classes, feat_dim=model.feat_dim).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
        res = bench("bot", model, lambda out, y: crit(out[0].float(), out[1].float(), y)[0], opt, args, device)
    else:
        out = {}
        for name in ("mudeep", "bot"):
            argv_child = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
                          "--only", name]
            p = subprocess.run(argv_child, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(p.stderr[-3000:])
            print(p.stdout.strip().splitlines()[-2])
            out[name] = json.loads(p.stdout.strip().splitlines()[-1])
        m, b = out["mudeep"], out["bot"]
        print(f"ratio mudeep / bot: throughput {m['ips'] / b['ips']:.3f}x, "
              f"peak memory {m['peak_mb'] / b['peak_mb']:.2f}x")
        return out
    print(json.dumps({"ips": res[0], "peak_mb": res[1]}))
    return res


if __name__ == "__main__":
    main()
