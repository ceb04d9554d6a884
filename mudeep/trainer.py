"""One MuDeep v2 training epoch: forward (train mode) -> 12 CEs + 3 triplets -> zero_grad, backward, SGD step."""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Optional

import torch

from common.distributed import all_reduce_mean, average_scalars, unwrap
from common.errors import ReidError


def train_one_epoch(model, loader, criterion, optimizer, device, epoch: int, epochs: int, max_batches: int = 0,
                    print_freq: int = 20, log: Callable = print,
                    on_step: Optional[Callable[[int, Dict], None]] = None) -> Dict[str, float]:
    """Args: loader yields (images (B, 3, H, W), labels (B,), camids, indices) with B = P*K in K-blocks.

    Under torchrun ``model`` is the DDP wrapper and the loader yields this rank's share (B = P*K / W); the
    non-finite check and the logged losses use the mean over ranks (the global batch's loss, the same decision on
    every rank); ``images_per_s`` is this rank's.

    Returns:
        mean ``loss``, ``loss_CEL``, ``loss_Tri`` over the epoch, ``lr`` (group 0, the original prints it),
        ``images_per_s``.
    """
    model.train()
    sums = {"loss": 0.0, "loss_CEL": 0.0, "loss_Tri": 0.0}
    steps, images, start = 0, 0, time.time()
    total = min(len(loader), max_batches) if max_batches else len(loader)
    for step, (imgs, labels, _, _) in enumerate(loader):
        if max_batches and step >= max_batches:
            break
        imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        out = model(imgs)
        n = len(out) - unwrap(model).num_scales
        loss, parts = criterion(out[:n], out[n:], labels)
        shown = all_reduce_mean(loss)  # alone: loss itself; torchrun: the global loss, on every rank
        if not math.isfinite(shown.item()):
            raise ReidError(f"the loss is {shown.item()} at epoch {epoch}, step {step + 1}",
                            fix="lower --lr, or check the data (an all-zero image batch?)")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stats = average_scalars({"loss": loss.item(), "loss_CEL": float(parts["loss_CEL"]),
                                 "loss_Tri": float(parts["loss_Tri"])})
        for k, v in stats.items():
            sums[k] += v
        steps += 1
        images += imgs.shape[0]
        if on_step is not None:
            on_step((epoch - 1) * total + step + 1, stats)
        if print_freq and (step + 1) % print_freq == 0:
            log(f"Epoch: {epoch}/{epochs} | Step: {step + 1}/{total} | lr: {optimizer.param_groups[0]['lr']:.6f} | "
                f"loss_CEL: {stats['loss_CEL']:.6f} | loss_Tri: {stats['loss_Tri']:.6f}")
    if steps == 0:
        raise ReidError("the training loader yielded no batch",
                        fix="the epoch has repeat*ids*K images; lower --P or --K, or use more identities")
    out = {k: v / steps for k, v in sums.items()}
    out.update(lr=optimizer.param_groups[0]["lr"], images_per_s=images / max(time.time() - start, 1e-9))
    return out


def set_epoch_lr(optimizer: torch.optim.Optimizer, epoch: int, step_size: int, gamma: float) -> None:
    """The original's StepLR, stepped at the start of each 1-based epoch: lr = initial * gamma^(epoch // step)
    (epochs 1-79 at 0.09, 80-159 at 0.009, 160 at 0.0009 for the new layers with the defaults)."""
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * gamma ** (epoch // step_size)
