"""One training epoch of the Bag-of-Tricks baseline: CE with label smoothing on the logits, batch-hard triplet on
the pre-BN feature (plus optional center loss), Adam, epoch-based warm-up / step schedule stepped by the caller."""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import torch

from common.distributed import all_reduce_mean, average_scalars
from common.guard import DivergenceGuard
from common.meters import MeterDict
from common.progress import bar as progress_bar, interactive


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for ``epoch`` that depends only on (seed, epoch), so a resumed run replays the same epoch."""
    return (seed * 1_000_003 + epoch * 7919) % (2 ** 31)


def train_one_epoch(model: torch.nn.Module, loader, criterion: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, center_optimizer: Optional[torch.optim.Optimizer] = None,
                    center_weight: float = 0.0,
                    amp: bool = False, scaler: Optional[torch.amp.GradScaler] = None, max_batches: int = 0,
                    print_freq: int = 20, log: Callable[[str], None] = print, progress: bool = True,
                    on_step: Optional[Callable[[int, Dict[str, float]], None]] = None,
                    guard: Optional[DivergenceGuard] = None, num_epochs: int = 0) -> Dict[str, float]:
    """Train for one epoch.

    Args:
        model: returns ``(logits (B, num_classes), feat (B, C))`` in train mode.
        loader: yields ``(images (B, 3, H, W), pids (B,), camids (B,), indices (B,))``.
        criterion: ``criterion(logits, feat, pids) -> (loss, parts: dict of floats)``; when it carries a center
            loss (``criterion.center``), its centers are stepped by ``center_optimizer`` (the original's SGD, lr
            0.5) after their gradient is rescaled by ``1 / center_weight``, as the official code does.
        amp: autocast (fp16) on CUDA; ignored on CPU.
        max_batches: stop after this many batches (0 = the whole epoch).
        on_step: called with (global step, scalars) after every trained iteration (TensorBoard).
        guard: a batch whose loss is not finite is skipped (no optimiser step) and counted by the guard, which
            stops training after ``--nonfinite-patience`` consecutive ones.
        num_epochs: total epochs, for the progress display (``epoch 3/20``, 1-based as the log).
    Under torchrun ``model`` is the DDP wrapper and the loader yields this rank's share; the non-finite check and
    the logged values use the mean over ranks (the global batch's loss and accuracy), ``images_per_s`` is this
    rank's.

    Returns:
        epoch averages: loss, its parts, accuracy, images/s, ``skipped`` (batches with a non-finite loss).
    """
    model.train()
    meters = MeterDict()
    use_amp = amp and device.type == "cuda"
    total = len(loader) if not max_batches else min(max_batches, len(loader))
    name = f"epoch {epoch + 1}" + (f"/{num_epochs}" if num_epochs else "")
    guard = guard if guard is not None else DivergenceGuard()
    bar = progress_bar(total=total, desc=name, progress=progress)
    plain = not interactive(progress)
    start, seen, skipped = time.time(), 0, 0
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
        if not guard.ok(all_reduce_mean(loss), where=f"{name}, iteration {i + 1}"):  # one decision for all ranks
            skipped += 1
            bar.update(1)
            continue
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
        shown = average_scalars({"loss": loss.item(), "acc": acc, **parts})  # torchrun: the global batch's values
        loss_value, acc = shown.pop("loss"), shown.pop("acc")
        parts = {k: shown[k] for k in parts}
        meters.update(n=imgs.size(0), loss=loss_value, acc=acc, **parts)
        seen += imgs.size(0)
        bar.update(1)
        bar.set_postfix(loss=f"{meters.meters['loss'].avg:.3f}", acc=f"{meters.meters['acc'].avg:.3f}")
        if on_step is not None:
            on_step(epoch * total + i, {"loss": loss_value, "acc": acc, **parts})
        if print_freq and (i + 1) % print_freq == 0 and plain:
            log(f"{name} [{i + 1}/{total}] {meters}")
    bar.close()
    stats = meters.averages()
    stats["skipped"] = skipped
    stats["images_per_s"] = seen / max(time.time() - start, 1e-9)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats
