"""MPRD under ``torchrun`` (DDP): what is split across the ranks, what every rank computes identically, and the
check that the ranks' training state stays equal.

Split: each global batch of :class:`mprd.sampler.IterBatchSampler` (the same order on every rank: seeded from the
un-ranked seed) is cut by :class:`common.distributed.DistributedBatchSampler` into W contiguous shares of whole
runs of K = ``--num-instances`` images (whole pseudo-identities); each rank loads and augments its share and its
share's partner images, and runs the CNN on them (forward and backward).

Identical on every rank: everything the losses read besides the rank's own rows. The per-step draws (prototype
mixing, partners, GCN training pairs) come from the epoch's NumPy state, drawn for the *global* batch on every rank
in the single-process order; the mixed prototypes p~, the hard negatives, the feature bank update, the two
prototype tables of the alignment loss and the memory's hard update use the gathered global batch (features
detached: none of them carries gradients). Both losses are then per-sample means over the rank's share, so DDP's
gradient average is the single-process gradient; nothing needs ``gather_with_grad``. A partner image is loaded by
the rank that needs it, so nothing requires it to be in the same share.

Rank 0 alone: the clustering (Jaccard + DBSCAN) on the gathered training features, broadcast as labels, centres
and core distances; the GCN's link probabilities (broadcast each step); scoring and the colour histogram at test
time. The GCN's Reptile update after the epoch runs on every rank on the same pairs, then rank 0's GCN (weights,
optimizer, the gradients the original rule carries over) is broadcast, so that kernel rounding cannot drift apart.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Dict, Sequence

import numpy as np
import torch
from torch import nn

from common.distributed import (all_gather_objects, broadcast_object, gather_with_grad, get_rank, get_world_size,
                                is_distributed, is_main)
from common.errors import ReidError


def one_process_only(script: str) -> None:
    """ReidError under torchrun for mprd's one-process helpers (GCN pre-training, eps scan, warm start), before any
    folder exists; their outputs serve a torchrun training run as they are."""
    import os
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        raise ReidError(f"{script} runs as one process (WORLD_SIZE={world}); only mprd/main.py runs under torchrun",
                        fix=f"run python {script} ... without torchrun; its output (GCN weights, eps table, warm-start "
                            "weights) is then used by torchrun ... mprd/main.py as it is")


class TwoViews(nn.Module):
    """One forward for the batch and its partner images, so that DDP sees one forward per backward.

    ``forward(images (B, 3, H, W), partners (B, 3, H, W)) -> (x (B, D), f^ (B, D))``: the network applied to the
    images, then to the partners (the order of the single-process loop: BatchNorm statistics update in it).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, partners: torch.Tensor):
        return self.model(images), self.model(partners)


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch (W * B, ...) of every rank's equal share (B, ...), in rank order (detached); ``x`` alone.

    With shares of :class:`common.distributed.DistributedBatchSampler` this is the single-process batch order.
    """
    if not is_distributed():
        return x
    return gather_with_grad(x.detach().contiguous()).detach()


def share_slice(batch_size: int) -> slice:
    """This rank's rows of a global batch of ``batch_size`` (all of it alone)."""
    if not is_distributed():
        return slice(0, batch_size)
    share = batch_size // get_world_size()
    return slice(get_rank() * share, (get_rank() + 1) * share)


def on_rank0(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` computed on rank 0 and broadcast to every rank (picklable result); direct alone."""
    if not is_distributed():
        return fn(*args, **kwargs)
    return broadcast_object(fn(*args, **kwargs) if is_main() else None)


def rank0_link_fn(link_fn: Callable) -> Callable:
    """A GCN link predictor whose probabilities come from rank 0 (floating-point kernels may differ per device,
    a 0.5 threshold would turn that into different pairs)."""
    return lambda pairs: on_rank0(link_fn, pairs)


def sync_gcn(gcn) -> None:
    """rank 0's GCN on every rank (no-op alone): weights, the outer optimizer's state and the gradients the
    original Reptile rule leaves in ``.grad`` for the next batch (spec P7)."""
    if not is_distributed():
        return
    params = list(gcn.gcn.parameters())
    box = None
    if is_main():
        box = {"state": {k: v.cpu() for k, v in gcn.gcn.state_dict().items()}, "outer": gcn.outer.state_dict(),
               "grads": [None if p.grad is None else p.grad.detach().cpu() for p in params]}
    box = broadcast_object(box)
    if not is_main():
        gcn.gcn.load_state_dict(box["state"])
        gcn.outer.load_state_dict(box["outer"])
        for p, g in zip(params, box["grads"]):
            p.grad = None if g is None else g.to(p.device)


def digest(*parts) -> str:
    """SHA-1 of tensors / arrays / numbers (bitwise)."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, torch.Tensor):
            p = p.detach().cpu().contiguous().numpy()
        h.update(np.ascontiguousarray(np.asarray(p)).tobytes())
    return h.hexdigest()


def check_ranks_agree(named: Dict[str, Sequence], where: str) -> str:
    """ReidError unless every rank holds bitwise the same values of each entry; returns the log line.

    Args:
        named: ``{name: [tensors / arrays ...]}`` (e.g. pseudo-labels, memory, bank, the model's and GCN's
            weights), in the same order on every rank.
        where: e.g. ``"after epoch 3"`` for the message.
    """
    mine = {k: digest(*v) for k, v in named.items()}
    if not is_distributed():
        return ""
    every = all_gather_objects(mine)
    bad = [k for k in mine if any(d[k] != every[0][k] for d in every)]
    if bad:
        raise ReidError(f"the {get_world_size()} processes hold different {', '.join(bad)} {where}",
                        fix="this is a bug of the torchrun wiring of mprd/ (every rank must apply the same "
                            "global-batch updates); run without torchrun meanwhile")
    return f"{where}: {', '.join(mine)} identical on all {get_world_size()} processes"
