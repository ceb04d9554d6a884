"""MuDeep v2 losses (naiq/MuDeep_v2 ``train.py`` and ``utils.py::TripHard``).

L = 2 * L_CE + 1 * L_Tri, with L_CE = (CE_1 + CE_2 + CE_3) / 4, CE_s the sum of plain cross-entropies of the four
units of scale s (so L_CE-part = half the sum of the 12 CEs), and L_Tri the sum over the three scales of a
batch-hard triplet loss (margin 1) on the L2-normalised *global* embedding.

Mining (``mining='block'``, the original's): labels are not consulted; the batch is taken to be P consecutive
blocks of K images of one identity. The hardest positive of anchor a is the largest distance inside its block
(itself included: sqrt(0 + 1e-8) = 1e-4), the hardest negative the smallest distance to any other block. A batch
that straddles two sampler passes can hold one identity in two blocks; those images then count as negatives.
``mining='label'`` uses the labels instead (same-label = positive), the usual batch-hard loss.

Under torchrun each rank holds P / W whole K-blocks of the global batch. The CEs are per-sample means over the
rank's equal share (DDP's gradient average makes them the global means); the triplet terms are computed on the
global batch rebuilt with :func:`common.distributed.gather_with_grad` (rank order = the single-process order, so
the K-blocks are the single-process blocks): every rank computes the same L_Tri, the gather's backward sums the W
ranks' (identical) gradients into each share's owner, W * dL_Tri/dx_r, and DDP's division by W leaves dL_Tri/dx_r,
the single-process gradient. The mean over ranks of the rank losses is the single-process loss.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from common.distributed import gather_with_grad

DIST_EPS = 1e-8  # inside the square root, as the original
NORM_EPS = 1e-12  # added by us: the original divides by the norm (NaN for an all-zero post-ReLU vector)


def pairwise_distance(feat: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances sqrt(sum (f_a - f_b)^2 + 1e-8), on L2-normalised rows if asked."""
    if normalize:
        feat = F.normalize(feat, p=2, dim=1, eps=NORM_EPS)
    diff = feat.unsqueeze(1) - feat.unsqueeze(0)
    return (diff.pow(2).sum(-1) + DIST_EPS).sqrt()


def positive_mask(batch: int, k: int = 0, labels: torch.Tensor = None) -> torch.Tensor:
    """(B, B) bool: same K-block (``labels`` None) or same label."""
    if labels is None:
        if k <= 0 or batch % k:
            raise ValueError(f"block mining needs the batch ({batch}) to be P blocks of K={k} images")
        block = torch.arange(batch) // k
        return block.unsqueeze(0) == block.unsqueeze(1)
    return labels.unsqueeze(0) == labels.unsqueeze(1)


def trip_hard(feat: torch.Tensor, k: int = 0, labels: torch.Tensor = None,
              normalize: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hardest positive and negative distance per anchor.

    Args:
        feat: (B, D) embeddings.
        k: images per identity block (block mining, labels ignored).
        labels: (B,) labels for label-aware mining (then ``k`` is not used).
        normalize: L2-normalise the rows first (the original does).
    Returns:
        (d_pos (B,), d_neg (B,)).
    """
    dist = pairwise_distance(feat, normalize)
    pos = positive_mask(feat.shape[0], k, labels).to(feat.device)
    d_pos = dist.masked_fill(~pos, float("-inf")).max(dim=1).values
    d_neg = dist.masked_fill(pos, float("inf")).min(dim=1).values
    return d_pos, d_neg


class MuDeepLoss(nn.Module):
    """2 * (sum of the 12 CEs) / 4 + sum over scales of mean(max(0, d+ - d- + margin)).

    Args:
        margin: triplet margin (``TRAIN.MARGIN`` = 1).
        k: images per identity (``TRAIN.K``), for block mining.
        mining: ``'block'`` (the original's, label-free) or ``'label'``.
        ce_weight / tri_weight: 2 and 1; ce_divisor: 4 (the per-scale divisor).
    """

    def __init__(self, margin: float = 1.0, k: int = 6, mining: str = "block", ce_weight: float = 2.0,
                 tri_weight: float = 1.0, ce_divisor: float = 4.0):
        super().__init__()
        if mining not in ("block", "label"):
            raise ValueError(f"mining must be 'block' or 'label', got {mining!r}")
        self.margin, self.k, self.mining = margin, k, mining
        self.ce_weight, self.tri_weight, self.ce_divisor = ce_weight, tri_weight, ce_divisor

    def forward(self, logits: Sequence[torch.Tensor], feats: Sequence[torch.Tensor],
                labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Args: logits 12 x (B, N); feats 3 x (B, D) global embeddings; labels (B,) (B = this rank's share
        under torchrun).

        Returns:
            (total loss, {'loss_CEL': L_CE, 'loss_Tri': L_Tri}) as the original prints them (under torchrun
            L_CE is this rank's share's, L_Tri the global batch's).
        """
        ce = sum(F.cross_entropy(z, labels) for z in logits) / self.ce_divisor
        tri = 0.0
        g_labels = gather_with_grad(labels) if self.mining == "label" else None  # alone: labels itself
        for f in feats:
            d_pos, d_neg = trip_hard(gather_with_grad(f), self.k, g_labels)
            tri = tri + torch.clamp(d_pos - d_neg + self.margin, min=0).mean()
        total = self.ce_weight * ce + self.tri_weight * tri
        return total, {"loss_CEL": ce.detach(), "loss_Tri": torch.as_tensor(tri).detach()}
