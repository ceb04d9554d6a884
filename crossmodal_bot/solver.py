"""Optimizer with per-parameter groups and the epoch-based warm-up multi-step learning-rate schedule of BoT.

Reference:
    Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification", CVPR-W 2019, Sec. 3.1
    (warm-up: 3.5e-5 -> 3.5e-4 over 10 epochs, x0.1 at epochs 40 and 70).
    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", arXiv 1706.02677 (warm-up).
    michuanhaohao/reid-strong-baseline solver/build.py and solver/lr_scheduler.py (semantics checked there).
"""
from __future__ import annotations

from bisect import bisect_right
from typing import List, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def build_optimizer(model: torch.nn.Module, lr: float = 3.5e-4, weight_decay: float = 5e-4,
                    bias_lr_factor: float = 1.0, weight_decay_bias: float = 5e-4, optimizer: str = "adam",
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """One parameter group per trainable parameter, as the original.

    Parameters whose name contains ``bias`` get ``lr * bias_lr_factor`` and ``weight_decay_bias``; the others
    ``lr`` and ``weight_decay``. Parameters with ``requires_grad=False`` (the BNNeck bias) are left out. Weight
    decay is PyTorch's coupled L2 term of Adam/SGD, as in the original.

    Args:
        model: the network.
        lr, weight_decay, bias_lr_factor, weight_decay_bias: see above (BoT: 3.5e-4, 5e-4, 1, 5e-4).
        optimizer: ``'adam'`` (BoT), ``'sgd'`` (with ``momentum``) or ``'adamw'``; case-insensitive.
    Returns:
        the optimizer; each group carries ``name``.
    """
    name = optimizer.lower()
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{optimizer}'; choose one of {sorted(_OPTIMIZERS)}")
    groups = []
    for key, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bias = "bias" in key
        groups.append({"params": [p], "name": key, "lr": lr * bias_lr_factor if is_bias else lr,
                       "weight_decay": weight_decay_bias if is_bias else weight_decay})
    kwargs = {"momentum": momentum} if name == "sgd" else {}
    return _OPTIMIZERS[name](groups, lr=lr, **kwargs)


class WarmupMultiStepLR(LRScheduler):
    """Warm-up then step decay, as a function of the scheduler's epoch counter ``e = last_epoch``.

    ``lr(e) = base_lr * w(e) * gamma ** (number of milestones <= e)`` with ``w(e) = 1`` for ``e >= warmup_iters``
    and, for ``e < warmup_iters``, ``w(e) = warmup_factor`` (``'constant'``) or
    ``warmup_factor * (1 - alpha) + alpha`` with ``alpha = e / warmup_iters`` (``'linear'``).

    Calling convention: ``step()`` once after each epoch, so 0-based epoch ``e`` trains at ``lr(e)``: epoch 0 at
    ``0.01 * base``, epoch 9 at ``0.901 * base``, epochs 10-39 at ``base``, 40-69 at ``0.1 * base``, 70+ at
    ``0.01 * base``. This is exactly the official code's curve as released: it calls ``step()`` in an ignite
    ``EPOCH_STARTED`` hook on PyTorch < 1.1, whose scheduler constructor set ``lr(0)`` and then reset
    ``last_epoch`` to -1, so the first hook call lands on ``lr(0)`` again and epoch ``e`` trains at ``lr(e)``.
    (Run unchanged on current PyTorch, whose constructor already counts as the first step, that code would be one
    epoch ahead: epoch ``e`` at ``lr(e + 1)``. The re-implementation calls ``step(e)`` before epoch ``e``: same
    curve as ours.)

    Args:
        optimizer: wrapped optimizer (``base_lrs`` are its groups' initial lrs).
        milestones: increasing epochs of the decays (BoT: 40, 70).
        gamma: decay factor (0.1).
        warmup_factor: lr multiplier at epoch 0 (0.01 in BoT's configs).
        warmup_iters: warm-up length in epochs (10).
        warmup_method: ``'linear'`` or ``'constant'``.
        last_epoch: -1 to start; the epoch to resume from otherwise (or use ``load_state_dict``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int] = (40, 70), gamma: float = 0.1,
                 warmup_factor: float = 0.01, warmup_iters: int = 10, warmup_method: str = "linear",
                 last_epoch: int = -1):
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        if warmup_method not in ("constant", "linear"):
            raise ValueError(f"warmup_method must be 'constant' or 'linear', got {warmup_method!r}")
        self.milestones, self.gamma = milestones, gamma
        self.warmup_factor, self.warmup_iters, self.warmup_method = warmup_factor, warmup_iters, warmup_method
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """Multiplier of the base lr at ``epoch`` (see the class docstring)."""
        w = 1.0
        if epoch < self.warmup_iters:
            if self.warmup_method == "constant":
                w = self.warmup_factor
            else:
                alpha = epoch / self.warmup_iters
                w = self.warmup_factor * (1 - alpha) + alpha
        return w * self.gamma ** bisect_right(self.milestones, epoch)

    def get_lr(self) -> List[float]:
        """Learning rates of the groups at ``self.last_epoch`` (closed form; no dependence on the current lrs)."""
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    _get_closed_form_lr = get_lr
