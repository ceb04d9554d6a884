"""Training throughput of crossmodal_bot's loop against a plain torchvision loop, on EQUAL models.

Headline: both loops train the same backbone (torchvision ``<arch>``, random init) with the same last stride, on the
same images at the same input size and batch size, in the same process. What differs is only the BoT training
loop: P x K identity sampler, pad-crop + random erasing, BNNeck, label-smoothed CE + batch-hard triplet, the
original's per-parameter Adam groups (BoT, :func:`crossmodal_bot.trainer.train_one_epoch`) against a shuffled
loader, Resize + flip, fc head, CE and Adam (plain). The ratio BoT / plain is reported per last stride.

The last stride is a property of the model, not of the loop: stride 1 (the BoT default) keeps layer4 at H/16 x W/16
instead of H/32 x W/32 and costs compute. It is reported apart: throughput at stride 1 / stride 2 for each loop,
and the forward GFLOP per image of each model (FLOPs = 2 x multiply-accumulates of the convolutions and linear
layers, counted by ``torch.utils.flop_counter.FlopCounterMode`` on one image).

Timing: every (loop, stride) is built once and warmed up, then timed in ``--rounds`` chunks of ``--iters``
iterations, visited in ABBA order (round 1 forwards, round 2 backwards, ...) so that a CPU whose speed drifts during
the run biases no configuration; images/s = all timed images / all timed seconds of that configuration. Two clocks:
wall time, and CPU time (this process's threads plus its finished loader workers, ``getrusage``), which other
processes on a shared machine disturb far less than the wall clock (CPU-time figures are images per CPU-second).

    python benchmarks/bench_bot_train.py                       # CPU: resnet18, 128x64, batch 16 (P x K = 4 x 4)
    python benchmarks/bench_bot_train.py --arch resnet50 --height 256 --width 128 --batch-size 64 --device cuda --amp
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from common.data.dataset import ImageDataset  # noqa: E402
from common.datasets import build_dataset  # noqa: E402
from crossmodal_bot.data import build_bot_train_loader  # noqa: E402
from crossmodal_bot.loss import build_loss  # noqa: E402
from crossmodal_bot.model import Baseline, set_last_stride  # noqa: E402
from crossmodal_bot.solver import build_optimizer  # noqa: E402
from crossmodal_bot.trainer import train_one_epoch  # noqa: E402

Chunk = Callable[[int], int]  # chunk(n iterations) -> images trained


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's threads and of its reaped children (loader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def note(msg: str) -> None:
    """Progress on stderr (the table alone goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def forward_gflop(model: torch.nn.Module, height: int, width: int, device: torch.device) -> float:
    """Forward GFLOP of one (1, 3, height, width) image in eval mode (2 x MACs of conv / linear layers)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, height, width, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def plain_model(arch: str, num_classes: int, last_stride: int) -> torch.nn.Module:
    """torchvision ``arch`` (random init) with its fc sized to ``num_classes`` and layer4's stride set."""
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    set_last_stride(model, last_stride)
    return model


def build_plain(dataset, args, device, last_stride: int) -> Tuple[Chunk, torch.nn.Module]:
    """The textbook loop: shuffled loader, Resize + flip + Normalize, (B, 3, H, W) -> fc logits, CE, Adam."""
    tf = T.Compose([T.Resize((args.height, args.width)), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.train, tf), batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True)
    model = plain_model(args.arch, dataset.num_train_pids, last_stride).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    use_amp = args.amp and device.type == "cuda"

    def chunk(n: int) -> int:
        model.train()
        done, seen, it = 0, 0, iter(loader)
        while done < n:
            try:
                imgs, pids, _, _ = next(it)
            except StopIteration:
                it = iter(loader)
                continue
            imgs, pids = imgs.to(device), pids.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = torch.nn.functional.cross_entropy(model(imgs).float(), pids)
            loss.backward()
            optimizer.step()
            done, seen = done + 1, seen + imgs.size(0)
        return seen

    return chunk, model


def build_bot(dataset, args, device, last_stride: int) -> Tuple[Chunk, torch.nn.Module]:
    """crossmodal_bot's own loader, model (BNNeck), criterion, optimiser and ``train_one_epoch``."""
    ns = argparse.Namespace(height=args.height, width=args.width, batch_size=args.batch_size, num_instances=4,
                            workers=args.workers, seed=0, pad=10, random_erase=0.5)
    loader = build_bot_train_loader(dataset, ns)
    model = Baseline(dataset.num_train_pids, arch=args.arch, last_stride=last_stride, pretrained=False).to(device)
    criterion = build_loss(dataset.num_train_pids, feat_dim=model.feat_dim)
    optimizer = build_optimizer(model)
    state = {"epoch": 0}

    def chunk(n: int) -> int:
        n = min(n, len(loader))
        train_one_epoch(model, loader, criterion, optimizer, device, state["epoch"], amp=args.amp, max_batches=n,
                        progress=False, print_freq=0)
        state["epoch"] += 1
        return n * args.batch_size

    return chunk, model


def measure(dataset, args, device) -> Dict[Tuple[str, int], Dict[str, float]]:
    """images/s and forward GFLOP/image of every (loop, last stride), timed in ABBA-ordered rounds."""
    configs: List[Tuple[str, int]] = [(loop, s) for s in args.strides for loop in ("plain", "bot")]
    chunks, out = {}, {}
    for key in configs:
        torch.manual_seed(0)
        chunk, model = (build_plain if key[0] == "plain" else build_bot)(dataset, args, device, key[1])
        out[key] = {"gflop": forward_gflop(model, args.height, args.width, device), "images": 0, "seconds": 0.0,
                    "cpu_seconds": 0.0}
        note(f"built {key[0]} loop, last stride {key[1]}: {out[key]['gflop']:.3f} GFLOP/image; warm-up")
        chunk(args.warmup)
        chunks[key] = chunk
    for r in range(args.rounds):
        for key in (configs if r % 2 == 0 else configs[::-1]):
            sync(device)
            gc.collect()
            start, cpu_start = time.perf_counter(), cpu_seconds()
            images = chunks[key](args.iters)
            sync(device)
            gc.collect()  # the chunk's loader iterator is gone: its workers are joined and counted
            wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
            out[key]["seconds"] += wall
            out[key]["cpu_seconds"] += cpu
            out[key]["images"] += images
            note(f"round {r + 1}/{args.rounds} {key[0]} stride {key[1]}: {images} images in {wall:.1f} s "
                 f"({cpu:.1f} CPU-s)")
    for v in out.values():
        v["images_per_s"] = v["images"] / v["seconds"]
        v["images_per_cpu_s"] = v["images"] / v["cpu_seconds"]
    return out


def table(res: Dict[Tuple[str, int], Dict[str, float]], strides: List[int]) -> str:
    """Markdown tables: equal-model ratio per stride (wall clock and CPU time), then the last-stride cost."""
    lines = ["| last stride | GFLOP/image plain / BoT | images/s plain / BoT | **BoT / plain** (wall) | "
             "images per CPU-s plain / BoT | **BoT / plain** (CPU) |", "|---|---|---|---|---|---|"]
    for s in strides:
        p, b = res[("plain", s)], res[("bot", s)]
        lines.append(f"| {s} | {p['gflop']:.3f} / {b['gflop']:.3f} | {p['images_per_s']:.2f} / "
                     f"{b['images_per_s']:.2f} | **{b['images_per_s'] / p['images_per_s']:.3f}** | "
                     f"{p['images_per_cpu_s']:.2f} / {b['images_per_cpu_s']:.2f} | "
                     f"**{b['images_per_cpu_s'] / p['images_per_cpu_s']:.3f}** |")
    if 1 in strides and 2 in strides:
        lines += ["", "| last-stride cost (stride 1 / stride 2) | plain loop | BoT loop |", "|---|---|---|"]
        for label, field in (("forward GFLOP/image", "gflop"), ("throughput, wall (images/s)", "images_per_s"),
                             ("throughput, CPU (images per CPU-s)", "images_per_cpu_s")):
            r = [res[(loop, 1)][field] / res[(loop, 2)][field] for loop in ("plain", "bot")]
            lines.append(f"| {label} | {r[0]:.3f} | {r[1]:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (BoT: P x 4)")
    p.add_argument("--strides", default="1,2", help="last strides to compare, comma list (1 = BoT default)")
    p.add_argument("--iters", type=int, default=4, help="timed iterations per configuration and round")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds, in ABBA order")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per configuration")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--data-dir", default=os.environ.get("REID_DATA", "data"))
    args = p.parse_args(argv)
    args.strides = [int(s) for s in str(args.strides).split(",") if s.strip()]
    if any(s not in (1, 2) for s in args.strides) or min(args.iters, args.rounds) < 1 or args.warmup < 0:
        p.error("--strides takes 1 and/or 2; --iters and --rounds must be >= 1, --warmup >= 0")
    device = torch.device(args.device)
    dataset = build_dataset("synthetic", args.data_dir, verbose=False)
    res = measure(dataset, args, device)
    print(f"device {device} | {args.arch} {args.height}x{args.width} batch {args.batch_size} | {args.rounds} rounds "
          f"x {args.iters} timed iterations per configuration (ABBA order) after {args.warmup} warm-up | "
          f"torch threads {torch.get_num_threads()} | loader workers {args.workers}")
    print(table(res, args.strides))


if __name__ == "__main__":
    main()
