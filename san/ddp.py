"""SAN under ``torchrun``: data parallel with ``torch.distributed`` collectives, equal to one process on the global
batch.

Why not ``DistributedDataParallel``: SAN's step (``san/trainer.py``) takes *two* gradients of one forward with
``torch.autograd.grad`` (the re-ID gradient for the re-ID optimiser, the decoder-loss gradient for the encoder /
decoder Adams). DDP's reducer averages only gradients that ``.backward()`` accumulates into ``.grad`` (its docs:
it does not work with ``torch.autograd.grad``), and it expects one backward per forward. So SAN does what DDP does,
by hand, with the same collectives:

* **Same start.** :func:`prepare_models` broadcasts rank 0's parameters and buffers (DDP does this when it wraps a
  model); ``--sync-bn`` first swaps every BatchNorm for ``nn.SyncBatchNorm`` (CUDA) or
  :class:`common.distributed.CPUSyncBatchNorm` (CPU / gloo).
* **Same buffers.** :func:`sync_buffers` broadcasts rank 0's buffers (BN running statistics) before every forward,
  DDP's ``broadcast_buffers=True``; with ``--sync-bn`` they already agree.
* **Same gradient.** :func:`average_gradients` all-reduces each gradient list (flattened in buckets) and divides by
  the world size, as DDP's reducer. The per-sample-mean losses (label-smoothed CE, L_Rec) on equal shares need
  nothing more; the batch-level losses (batch-hard triplet on v, the fixed-index L_TR on x_sim1..4, whose triplets
  cross identity groups and so ranks) are computed on the global batch rebuilt with
  :func:`common.distributed.gather_with_grad`: every rank evaluates the same global loss, the gather's backward
  sums the W identical upstream gradients into each share's owner (factor W), and the average over ranks then
  leaves exactly the single-process gradient.

Alone (no torchrun) every function here is a no-op.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from common.distributed import broadcast_module, convert_cpu_sync_batchnorm, get_world_size, is_distributed

BUCKET_ELEMENTS = 1 << 22  # 4 M floats (16 MB) per all-reduce


def prepare_models(modules: Sequence[nn.Module], device, sync_bn: bool = False) -> List[nn.Module]:
    """The modules ready for data-parallel training: SyncBN (``sync_bn``) and rank 0's weights on every rank.

    Call before building the optimisers (the SyncBN conversion may make new modules). Alone: the modules as they are.
    """
    if not is_distributed():
        return list(modules)
    out = []
    for m in modules:
        if sync_bn:
            if torch.device(device).type == "cuda":
                m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
            else:
                m = convert_cpu_sync_batchnorm(m, dist.new_group(backend="gloo"))
        out.append(broadcast_module(m.to(device)))
    return out


def sync_buffers(*modules: nn.Module) -> None:
    """Rank 0's buffers (BN running statistics, counters) on every rank, in place (DDP's ``broadcast_buffers``)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for m in modules:
            for b in m.buffers():
                dist.broadcast(b, src=0)


def average_gradients(grads: Sequence[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
    """The mean over ranks of each gradient (``None`` stays ``None``: the same on every rank, one graph).

    Flattened into buckets of at most :data:`BUCKET_ELEMENTS` elements per dtype; alone: ``grads`` unchanged.
    """
    grads = list(grads)
    if not is_distributed():
        return grads
    world = get_world_size()
    out: List[Optional[torch.Tensor]] = [None] * len(grads)
    todo = [i for i, g in enumerate(grads) if g is not None]
    while todo:
        dtype, dev = grads[todo[0]].dtype, grads[todo[0]].device
        bucket, size, rest = [], 0, []
        for i in todo:
            g = grads[i]
            if g.dtype == dtype and g.device == dev and (not bucket or size + g.numel() <= BUCKET_ELEMENTS):
                bucket.append(i)
                size += g.numel()
            else:
                rest.append(i)
        flat = torch.cat([grads[i].detach().reshape(-1) for i in bucket])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for i in bucket:
            n = grads[i].numel()
            out[i] = flat[offset:offset + n].view_as(grads[i])
            offset += n
        todo = rest
    return out
