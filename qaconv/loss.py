"""QAConv training losses on matcher scores: batch-hard triplet (2.1 / HEAD), pairwise matching BCE (2.0) and the
class-memory focal loss (1.x).

Every loss holds the matcher as ``self.matcher`` (so its state dict has the original's ``matcher.bn.weight``, ...
keys) and returns per-sample ``(loss [B], acc [B])``; the caller averages (the 2.1 trainer keeps only the finite
losses). The matcher is called in whatever mode it is in (train mode: BN batch statistics over the call).

Reference:
    Liao & Shao, ECCV 2020, Sec. 3.3 (class memory); Liao & Shao, CVPR 2022, Sec. 3-4 (pairwise matching loss,
    hard triplet loss); ShengcaiLiao/QAConv reid/loss/{class_memory,pairwise_matching,triplet}_loss.py.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

BIG = 1e15  # the original's masking constant


def _check_input(feature: torch.Tensor, target: torch.Tensor) -> None:
    if feature.dim() != 4:
        raise ValueError(f"expected a 4-D feature map (B, C, h, w), got {feature.dim()}-D")
    if target.dim() != 1 or target.size(0) != feature.size(0):
        raise ValueError(f"target must have shape ({feature.size(0)},), got {tuple(target.shape)}")


def hardest_pairs(score: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hardest positive and negative score of each row of an in-batch score matrix (the original's masking).

    Args:
        score (B, B): similarity logits, row i = sample i against all.
        target (B,): identity labels.
    Returns:
        min_pos (B,): min over j != i with the same label of score[i, j] (~1e15 when there is none);
        max_neg (B,): max over j with another label (~-1e15 when there is none).
    """
    labels = (target[:, None] == target[None, :]).to(score.dtype)
    eye = torch.eye(score.size(0), dtype=score.dtype, device=score.device)
    min_pos = torch.min(score * labels + (1 - labels + eye) * BIG, dim=1).values
    max_neg = torch.max(score * (1 - labels) - labels * BIG, dim=1).values
    return min_pos, max_neg


class MatcherLoss(nn.Module):
    """Base of the QAConv losses: holds the matcher as ``self.matcher`` (state-dict keys ``matcher.*``) and resets
    it on request.

    Args:
        matcher: the QAConv matcher (or any ``(prob, gal) -> (P, G)`` module).
    """

    def __init__(self, matcher: nn.Module):
        super().__init__()
        self.matcher = matcher

    def reset_running_stats(self) -> None:
        self.matcher.reset_running_stats()

    def reset_parameters(self) -> None:
        self.matcher.reset_parameters()


class TripletLoss(MatcherLoss):
    """Batch-hard triplet loss on ``matcher(feature, feature)``: ``max(0, max_neg - min_pos + margin)``.

    Args:
        matcher: the QAConv matcher (or any ``(prob, gal) -> (P, G)`` module).
        margin: hinge margin on the logits (16 in the original).
    Shapes:
        forward(feature (B, C, h, w), target (B,)) -> (loss (B,), acc (B,)); ``acc = min_pos >= max_neg``.
        A sample without another positive gets a hard positive of ~1e15 and zero loss.
    """

    def __init__(self, matcher: nn.Module, margin: float = 16.0):
        super().__init__(matcher)
        self.margin = margin
        self.ranking_loss = nn.MarginRankingLoss(margin=margin, reduction="none")

    def forward(self, feature: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_input(feature, target)
        score = self.matcher(feature, feature)  # [B, B]
        min_pos, max_neg = hardest_pairs(score, target)
        loss = self.ranking_loss(min_pos, max_neg, torch.ones_like(min_pos))
        with torch.no_grad():
            acc = (min_pos >= max_neg).float()
        return loss, acc


class PairwiseMatchingLoss(MatcherLoss):
    """Binary cross-entropy on every in-batch pair (self-pairs included, label 1), summed over each row.

    Shapes:
        forward(feature (B, C, h, w), target (B,)) -> (loss (B,), acc (B,)); ``acc = min_pos > max_neg``
        (strict, self excluded from the positives).
    """

    def forward(self, feature: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_input(feature, target)
        score = self.matcher(feature, feature)  # [B, B]
        labels = (target[:, None] == target[None, :]).to(score.dtype)
        loss = F.binary_cross_entropy_with_logits(score, labels, reduction="none").sum(dim=1)
        with torch.no_grad():
            min_pos, max_neg = hardest_pairs(score, target)
            acc = (min_pos > max_neg).float()
        return loss, acc


class ClassMemoryLoss(MatcherLoss):
    """Focal binary cross-entropy of each sample against a memory of one feature map per class (QAConv 1.x).

    Args:
        matcher: the QAConv matcher; called as ``matcher(feature, memory_chunk)``, one call per chunk of
            ``mem_batch_size`` classes (each call has its own BN batch statistics in train mode).
        num_classes, num_features, height, width: memory size.
        mem_batch_size: classes per matcher call.
    Buffers:
        class_memory (num_classes, C, h, w): last seen feature map of each class (zeros at start).
        valid_class (num_classes,): 1 for classes seen at least once; the others contribute 0 to the loss.
    Shapes:
        forward(feature (B, C, h, w), target (B,)) -> (loss (B,), acc (B,)), with
        ``loss_i = sum_k valid_k * BCE(s_ik, y_ik) * w_ik``, ``w = (1 - p)^2`` for the true class and ``p^2``
        otherwise (p = sigmoid(s)), ``acc_i = [argmax_k s_ik == target_i]``. Afterwards (no grad) the memory of
        every class in the batch is overwritten by its last occurrence in the batch and marked valid.
    """

    def __init__(self, matcher: nn.Module, num_classes: int, num_features: int, height: int, width: int,
                 mem_batch_size: int = 16):
        super().__init__(matcher)
        self.num_classes, self.num_features, self.height, self.width = num_classes, num_features, height, width
        self.mem_batch_size = mem_batch_size
        self.register_buffer("class_memory", torch.zeros(num_classes, num_features, height, width))
        self.register_buffer("valid_class", torch.zeros(num_classes))

    def reset(self) -> None:
        """Empty the memory: zero ``class_memory`` and ``valid_class``."""
        self.class_memory.zero_()
        self.valid_class.zero_()

    def reset_running_stats(self) -> None:
        """As the original: empty the memory and reset the matcher's BN running statistics."""
        self.reset()
        super().reset_running_stats()

    def scores(self, feature: torch.Tensor) -> torch.Tensor:
        """Scores (B, num_classes) of the batch against the (detached) memory, chunk by chunk."""
        memory = self.class_memory.detach().clone()
        step = max(1, self.mem_batch_size)
        return torch.cat([self.matcher(feature, memory[i:i + step]) for i in range(0, self.num_classes, step)],
                         dim=1)

    def forward(self, feature: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_input(feature, target)
        score = self.scores(feature)
        onehot = torch.zeros_like(score).scatter_(1, target[:, None], 1.0)
        loss = F.binary_cross_entropy_with_logits(score, onehot, reduction="none")
        prob = score.sigmoid()
        weight = torch.where(onehot > 0, 1.0 - prob, prob).pow(2)
        loss = (loss * weight * self.valid_class.detach().clone()[None, :]).sum(dim=1)
        with torch.no_grad():
            acc = (score.argmax(dim=1) == target).float()
            self.update_memory(feature, target)
        return loss, acc

    @torch.no_grad()
    def update_memory(self, feature: torch.Tensor, target: torch.Tensor) -> None:
        """``class_memory[target] = feature`` with the last occurrence of a repeated class winning; mark valid."""
        order = torch.arange(target.size(0), device=target.device)
        last = torch.full((self.num_classes,), -1, dtype=torch.long, device=target.device)
        last.scatter_reduce_(0, target, order, reduce="amax")
        classes = (last >= 0).nonzero().squeeze(1)
        self.class_memory[classes] = feature[last[classes]].detach().to(self.class_memory.dtype)
        self.valid_class[classes] = 1.0
