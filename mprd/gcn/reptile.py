"""Reptile meta-update of the GCN (spec §7.4).

``rule='original'`` reproduces MetaPRD (spec P7): inner steps theta <- theta - lr_in * grad with gradients never
zeroed (they accumulate over the inner steps and include what the previous outer step left), then the outer SGD
step (weight decay wd) with grad := -(theta_K - theta_0) applied to theta_K:
theta_new = theta_K + lr (theta_K - theta_0) - lr wd theta_K; that -Delta gradient stays for the next batch.
``rule='proper'``: gradients zeroed before every inner step, theta_new = theta_0 + lr (theta_K - theta_0).
"""
from __future__ import annotations

from typing import Callable, List

import torch


def reptile_step(params: List[torch.nn.Parameter], loss_fn: Callable[[], torch.Tensor], outer: torch.optim.SGD,
                 inner_steps: int = 3, inner_lr: float = 0.02, rule: str = "original") -> float:
    """One meta-batch. ``loss_fn()`` recomputes the loss at the current parameters; returns the mean inner loss."""
    if rule not in ("original", "proper"):
        raise ValueError("rule must be 'original' or 'proper'")
    theta0 = [p.detach().clone() for p in params]
    losses = []
    for _ in range(inner_steps):
        if rule == "proper":
            for p in params:
                p.grad = None
        loss = loss_fn()
        loss.backward()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= inner_lr * p.grad
    with torch.no_grad():
        if rule == "original":
            outer.zero_grad(set_to_none=False)
            for p, p0 in zip(params, theta0):
                p.grad = -(p.detach() - p0)
            outer.step()
        else:
            lr = outer.param_groups[0]["lr"]
            for p, p0 in zip(params, theta0):
                p.copy_(p0 + lr * (p - p0))
                p.grad = None
    return sum(losses) / len(losses)
