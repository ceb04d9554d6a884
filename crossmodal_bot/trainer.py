"""One training epoch of the Bag-of-Tricks baseline: CE with label smoothing on the logits, batch-hard triplet on
the pre-BN feature (plus optional center loss), Adam, epoch-based warm-up / step schedule stepped by the caller."""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import torch
from tqdm import tqdm

from common.meters import MeterDict


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for ``epoch`` that depends only on (seed, epoch), so a resumed run replays the same epoch."""
    return (seed * 1_000_003 + epoch * 7919) % (2 ** 31)


def train_one_epoch(model: torch.nn.Module, loader, criterion: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, center_optimizer: Optional[torch.optim.Optimizer] = None,
                    center_weight: float = 0.0,
                    amp: bool = False, scaler: Optional[torch.amp.GradScaler] = None, max_batches: int = 0,
                    print_freq: int = 20, log: Callable[[str], None] = print, progress: bool = True,
                    on_step: Optional[Callable[[int, Dict[str, float]], None]] = None) -> Dict[str, float]:
    """Train for one epoch.

    Args:
        model: returns ``(logits (B, num_classes), feat (B, C))`` in train mode.
        loader: yields ``(images (B, 3, H, W), pids (B,), camids (B,), indices (B,))``.
        criterion: ``criterion(logits, feat, pids) -> (loss, parts: dict of floats)``; when it carries a center
            loss (``criterion.center``), its centers are stepped by ``center_optimizer`` (the original's SGD, lr
            0.5) after their gradient is rescaled by ``1 / center_weight``, as the official code does.
        amp: autocast (fp16) on CUDA; ignored on CPU.
        max_batches: stop after this many batches (0 = the whole epoch).
        on_step: called with (global step, scalars) after every iteration (TensorBoard).
    Returns:
        epoch averages: loss, its parts, accuracy, images/s.
    """
    model.train()
    meters = MeterDict()
    use_amp = amp and device.type == "cuda"
    total = len(loader) if not max_batches else min(max_batches, len(loader))
    bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    start, seen = time.time(), 0
    for i, (imgs, pids, _, _) in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        imgs, pids = imgs.to(device, non_blocking=True), pids.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        if center_optimizer is not None:
            center_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits, feat = model(imgs)
            loss, parts = criterion(logits.float(), feat.float(), pids)
        if scaler is not None and use_amp:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if center_optimizer is not None and center_weight > 0:
            for p in criterion.center.parameters():  # undo the weight on the centers' own update (original code)
                p.grad.data *= 1.0 / center_weight
            center_optimizer.step()
        acc = (logits.argmax(1) == pids).float().mean().item()
        meters.update(n=imgs.size(0), loss=loss.item(), acc=acc, **parts)
        seen += imgs.size(0)
        bar.update(1)
        bar.set_postfix(loss=f"{meters.meters['loss'].avg:.3f}", acc=f"{meters.meters['acc'].avg:.3f}")
        if on_step is not None:
            on_step(epoch * total + i, {"loss": loss.item(), "acc": acc, **parts})
        if print_freq and (i + 1) % print_freq == 0 and not progress:
            log(f"epoch {epoch} [{i + 1}/{total}] {meters}")
    bar.close()
    stats = meters.averages()
    stats["images_per_s"] = seen / max(time.time() - start, 1e-9)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats
