"""BoT losses: label-smoothing cross-entropy (on the logits), batch-hard triplet (on f_t) and center loss (on f_t).

Reference:
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016 (label smoothing).
    Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", arXiv 1703.07737 (batch hard).
    Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition", ECCV 2016 (center loss).
    Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification", CVPR-W 2019, Sec. 3.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from common.distributed import gather_with_grad


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean (not squared) distances, clamped at 1e-12 before the square root for stability.

    Args:
        x: (M, D); y: (N, D).
    Returns:
        (M, N) distances; an exact zero comes out as 1e-6.
    """
    xx = x.pow(2).sum(1, keepdim=True)
    yy = y.pow(2).sum(1, keepdim=True).t()
    dist = xx + yy - 2.0 * x @ y.t()
    return dist.clamp(min=1e-12).sqrt()


def hard_example_mining(dist: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hardest positive (largest distance, the anchor itself included) and hardest negative (smallest) per anchor.

    Unlike the original this does not require every identity to have the same number of samples.

    Args:
        dist: (N, N) distances; labels: (N,) identities.
    Returns:
        (dist_ap (N,), dist_an (N,)); dist_an is +inf for an anchor without negatives.
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    dist_ap = dist.masked_fill(~same, float("-inf")).max(1).values
    dist_an = dist.masked_fill(same, float("inf")).min(1).values
    return dist_ap, dist_an


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy with targets ``(1 - eps) * onehot + eps / K``: the true class gets ``1 - (K-1)/K * eps``.

    Args:
        num_classes: K.
        epsilon: smoothing eps (0.1 in BoT); 0 gives the plain cross-entropy.
    Shapes:
        forward(logits (N, K), targets (N,) int64) -> scalar, the batch mean of ``-sum_k q_k log p_k``.
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1):
        super().__init__()
        self.num_classes, self.epsilon = num_classes, epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits, dim=1)
        q = torch.zeros_like(log_probs).scatter_(1, targets.unsqueeze(1), 1.0)
        q = (1.0 - self.epsilon) * q + self.epsilon / self.num_classes
        return (-q * log_probs).sum(1).mean()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on Euclidean distances.

    With a margin: ``mean_i max(0, d_ap(i) - d_an(i) + margin)`` (``nn.MarginRankingLoss``); with
    ``margin=None``: the soft margin ``mean_i log(1 + exp(d_ap(i) - d_an(i)))`` (``nn.SoftMarginLoss``).

    Args:
        margin: 0.3 in BoT, or None for the soft-margin variant.
        normalize_feature: L2-normalise the features first (off in BoT).
    Shapes:
        forward(feats (N, D), labels (N,)) -> (loss scalar, dist_ap (N,), dist_an (N,)).
    """

    def __init__(self, margin: Optional[float] = 0.3, normalize_feature: bool = False):
        super().__init__()
        self.margin, self.normalize_feature = margin, normalize_feature
        self.ranking_loss = nn.MarginRankingLoss(margin=margin) if margin is not None else nn.SoftMarginLoss()

    def forward(self, feats: torch.Tensor, labels: torch.Tensor):
        if self.normalize_feature:
            feats = F.normalize(feats, dim=1)
        dist_ap, dist_an = hard_example_mining(euclidean_dist(feats, feats), labels)
        y = torch.ones_like(dist_an)
        if self.margin is not None:
            loss = self.ranking_loss(dist_an, dist_ap, y)
        else:
            loss = self.ranking_loss(dist_an - dist_ap, y)
        return loss, dist_ap, dist_an


class CenterLoss(nn.Module):
    """Center loss: ``mean_i ||x_i - c_{y_i}||^2`` (each term clamped to [1e-12, 1e12]); centers are parameters.

    In the original the centers get their own SGD optimizer (lr 0.5) and the loss weight is 5e-4; their gradient
    is divided by the weight before that step (the trainer's concern).

    Args:
        num_classes: number of identities; feat_dim: feature dimension D.
    Shapes:
        forward(feats (N, D), labels (N,)) -> scalar.
    """

    def __init__(self, num_classes: int, feat_dim: int = 2048):
        super().__init__()
        self.num_classes, self.feat_dim = num_classes, feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d = (feats - self.centers[labels]).pow(2).sum(1)
        return d.clamp(min=1e-12, max=1e12).mean()


class BotCriterion(nn.Module):
    """``CE_ls(logits) + triplet(f_t) [+ center_weight * center(f_t)]``.

    Under torchrun the CE is the mean over this rank's equal share (DDP's average makes it the global mean);
    triplet and center terms are computed on the global batch (:func:`common.distributed.gather_with_grad`).

    Args:
        num_classes: identities; margin: triplet margin (None: soft margin); epsilon: label smoothing;
        center_weight: > 0 adds the center loss (then ``self.center`` holds the centers for their optimizer);
        feat_dim: D of f_t (for the centers).
    Shapes:
        forward(logits (N, K), feat (N, D), targets (N,)) -> (loss scalar, parts dict of floats).
    """

    def __init__(self, num_classes: int, margin: Optional[float] = 0.3, epsilon: float = 0.1,
                 center_weight: float = 0.0, feat_dim: int = 2048):
        super().__init__()
        self.xent = CrossEntropyLabelSmooth(num_classes, epsilon)
        self.triplet = TripletLoss(margin)
        self.center_weight = center_weight
        self.center = CenterLoss(num_classes, feat_dim) if center_weight > 0 else None

    def forward(self, logits: torch.Tensor, feat: torch.Tensor, targets: torch.Tensor):
        ce = self.xent(logits, targets)
        # under torchrun: the batch-level terms on the global batch (rank order = single-process order); the
        # gather's backward sums every rank's gradient into the share's owner, so DDP's average is the global one
        g_feat, g_targets = gather_with_grad(feat), gather_with_grad(targets)
        tri, dist_ap, dist_an = self.triplet(g_feat, g_targets)
        loss = ce + tri
        parts: Dict[str, float] = {"ce": ce.item(), "triplet": tri.item(),
                                   "tri_acc": (dist_an > dist_ap).float().mean().item()}
        if self.center is not None:  # global batch too: the centers' gradient is then the same on every rank
            c = self.center(g_feat, g_targets)
            loss = loss + self.center_weight * c
            parts["center"] = c.item()
        return loss, parts


def build_loss(num_classes: int, margin: Optional[float] = 0.3, epsilon: float = 0.1, center_weight: float = 0.0,
               feat_dim: int = 2048) -> BotCriterion:
    """The BoT objective (see :class:`BotCriterion`); ``margin <= 0`` selects the soft margin.

    Returns:
        a module ``criterion(logits, feat, targets) -> (loss, parts)``.
    """
    if margin is not None and margin <= 0:
        margin = None
    return BotCriterion(num_classes, margin, epsilon, center_weight, feat_dim)
