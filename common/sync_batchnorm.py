"""BatchNorm with global-batch statistics on any device: :class:`CPUSyncBatchNorm` (gloo on the CPU).

``torch.nn.SyncBatchNorm`` needs CUDA; this one works wherever ``torch.distributed`` does, so that multi-process
training is testable on the CPU. Used through :func:`common.distributed.wrap_ddp` (``sync_bn=True``), which
re-exports both names here.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x (every rank); dx = sum over ranks of dy (each rank's loss sees every x)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone().contiguous()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, dy):
        dx = dy.clone().contiguous()
        dist.all_reduce(dx, group=ctx.group)
        return dx, None


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any device (gloo on the CPU).

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm{1,2,3}d``. Mean and biased variance come from
    two differentiable all-reduces (sum and count, then the sum of squared deviations); the running variance is
    unbiased with the global count, as in ``nn.SyncBatchNorm``. Eval mode, or one process: plain BatchNorm.
    Input: (N, C, ...).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected an (N, C, ...) input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        c, dims = x.shape[1], [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        first = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), self.process_group)
        n = first[c:]
        mean = first[:c] / n
        var = _AllReduceSum.apply(((x - mean.view(shape)) ** 2).sum(dims), self.process_group) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_cpu_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every ``_BatchNorm`` of ``module`` replaced by a :class:`CPUSyncBatchNorm` holding the same tensors."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, process_group)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        for p_new, p_old in zip(out.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
    for name, child in module.named_children():
        out.add_module(name, convert_cpu_sync_batchnorm(child, process_group))
    return out
