"""Training throughput of crossmodal_bot (BoT loader + model + CE/triplet loss) against a plain torchvision loop.

Both loops train the same backbone on the same images with the same batch size, in the same process, one after
the other (warm-up iterations excluded). The reference is the textbook loop: ``torchvision.models.<arch>`` with
its fc resized to the number of identities, shuffled DataLoader with Resize/flip/ToTensor/Normalize, cross-entropy,
Adam. The ratio BoT / reference tells what the method's extras (P x K sampler, pad-crop, random erasing, BNNeck,
batch-hard triplet) cost.

    python benchmarks/bench_bot_train.py                       # CPU: resnet18, 128x64, batch 32
    python benchmarks/bench_bot_train.py --arch resnet50 --height 256 --width 128 --batch-size 64 --device cuda --amp
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from common.data.dataset import ImageDataset  # noqa: E402
from common.datasets import build_dataset  # noqa: E402
from crossmodal_bot.data import build_bot_train_loader  # noqa: E402
from crossmodal_bot.loss import build_loss  # noqa: E402
from crossmodal_bot.model import Baseline  # noqa: E402
from crossmodal_bot.solver import build_optimizer  # noqa: E402
from crossmodal_bot.trainer import train_one_epoch  # noqa: E402


def time_bot(dataset, args, device) -> float:
    ns = argparse.Namespace(height=args.height, width=args.width, batch_size=args.batch_size, num_instances=4,
                            workers=args.workers, seed=0, pad=10, random_erase=0.5)
    loader = build_bot_train_loader(dataset, ns)
    model = Baseline(dataset.num_train_pids, arch=args.arch, pretrained=False).to(device)
    criterion = build_loss(dataset.num_train_pids, feat_dim=model.feat_dim)
    optimizer = build_optimizer(model)
    kw = dict(amp=args.amp, max_batches=args.warmup, progress=False, print_freq=0)
    train_one_epoch(model, loader, criterion, optimizer, device, 0, **kw)
    sync(device)
    kw["max_batches"] = args.iters
    return train_one_epoch(model, loader, criterion, optimizer, device, 1, **kw)["images_per_s"]


def time_plain(dataset, args, device) -> float:
    tf = T.Compose([T.Resize((args.height, args.width)), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.train, tf), batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True)
    model = getattr(torchvision.models, args.arch)(weights=None, num_classes=dataset.num_train_pids).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    scaler_on = args.amp and device.type == "cuda"
    model.train()

    def run(n):
        done, seen, it = 0, 0, iter(loader)
        while done < n:
            try:
                imgs, pids, _, _ = next(it)
            except StopIteration:
                it = iter(loader)
                continue
            imgs, pids = imgs.to(device), pids.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=scaler_on):
                loss = torch.nn.functional.cross_entropy(model(imgs).float(), pids)
            loss.backward()
            optimizer.step()
            done, seen = done + 1, seen + imgs.size(0)
        return seen

    run(args.warmup)
    sync(device)
    start = time.time()
    seen = run(args.iters)
    sync(device)
    return seen / (time.time() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--data-dir", default=os.environ.get("REID_DATA", "data"))
    args = p.parse_args()
    device = torch.device(args.device)
    dataset = build_dataset("synthetic", args.data_dir, verbose=False)
    torch.manual_seed(0)
    ref = time_plain(dataset, args, device)
    torch.manual_seed(0)
    bot = time_bot(dataset, args, device)
    print(f"device {device} | {args.arch} {args.height}x{args.width} batch {args.batch_size} | "
          f"{args.iters} timed iterations after {args.warmup} warm-up | torch threads {torch.get_num_threads()}")
    print(f"{'loop':<28} {'images/s':>10}")
    print(f"{'plain torchvision (CE)':<28} {ref:10.1f}")
    print(f"{'crossmodal_bot (BoT)':<28} {bot:10.1f}")
    print(f"ratio BoT / plain: {bot / ref:.3f}")


if __name__ == "__main__":
    main()
