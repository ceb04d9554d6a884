"""QAConv training losses on matcher scores: batch-hard triplet (2.1 / HEAD), pairwise matching BCE (2.0) and the
class-memory focal loss (1.x).

Every loss holds the matcher as ``self.matcher`` (so its state dict has the original's ``matcher.bn.weight``, ...
keys) and returns per-sample ``(loss [B], acc [B])``; the caller averages (the 2.1 trainer keeps only the finite
losses). The matcher is called in whatever mode it is in (train mode: BN batch statistics over the call; the
1.0 / 1.1 class memory applies the matcher's head once over all classes, see :class:`ClassMemoryLoss`).

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

    How the classes are scored follows the release (``version``):

    * ``'1.2'`` (and the v2.0 release's class memory, ``'2.0'``): one ``matcher(feature, memory_chunk)`` call per
      chunk of ``mem_batch_size`` classes, so in train mode every chunk has its own BN batch statistics and its
      own running-statistics update (``ClassMemoryLoss`` of those releases).
    * ``'1.0'`` / ``'1.1'`` (``QAConvLoss``): only the max-pooled similarities are computed chunk by chunk
      (``matcher.pair_maxima``); the BN -> FC -> logit-BN head is applied once to the maxima of all classes, so the
      BN statistics cover every class, the running statistics move once per call, and the result does not depend
      on ``mem_batch_size`` (a memory bound only). Needs the QAConv matcher (``pair_maxima`` and the head).
    * ``'1.0'`` has no valid-class mask: classes whose memory is still zero take part in the loss (and, as
      above, in the BN statistics). From ``'1.1'`` on, classes never seen contribute 0 to the loss.

    Args:
        matcher: the QAConv matcher.
        num_classes, num_features, height, width: memory size.
        mem_batch_size: classes per chunk.
        version: ``'1.0'``, ``'1.1'``, ``'1.2'`` (default) or ``'2.0'``.
    Buffers:
        class_memory (num_classes, C, h, w): last seen feature map of each class (zeros at start).
        valid_class (num_classes,): 1 for classes seen at least once (kept in every version; 1.0 ignores it).
    Shapes:
        forward(feature (B, C, h, w), target (B,)) -> (loss (B,), acc (B,)), with
        ``loss_i = sum_k m_k * BCE(s_ik, y_ik) * w_ik``, ``m_k = valid_k`` (``1`` in 1.0), ``w = (1 - p)^2`` for
        the true class and ``p^2`` otherwise (p = sigmoid(s)), ``acc_i = [argmax_k s_ik == target_i]``. Afterwards
        (no grad) the memory of every class in the batch is overwritten by its last occurrence in the batch and
        marked valid.
    """

    VERSIONS = ("1.0", "1.1", "1.2", "2.0")
    WHOLE_HEAD_VERSIONS = ("1.0", "1.1")  # QAConvLoss: one BN -> FC -> logit-BN over all classes

    def __init__(self, matcher: nn.Module, num_classes: int, num_features: int, height: int, width: int,
                 mem_batch_size: int = 16, version: str = "1.2"):
        super().__init__(matcher)
        version = str(version)
        if version not in self.VERSIONS:
            raise ValueError(f"version must be one of {self.VERSIONS}, got {version!r}")
        self.num_classes, self.num_features, self.height, self.width = num_classes, num_features, height, width
        self.mem_batch_size, self.version = mem_batch_size, version
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
        """Scores (B, num_classes) of the batch against the (detached) memory, chunk by chunk (see the class doc)."""
        memory = self.class_memory.detach().clone()
        step = max(1, self.mem_batch_size)
        chunks = range(0, self.num_classes, step)
        if self.version in self.WHOLE_HEAD_VERSIONS:
            maxima = torch.cat([self.matcher.pair_maxima(feature, memory[i:i + step]) for i in chunks], dim=1)
            return self.matcher._head(maxima)[0]  # noqa: SLF001 - the matcher's own BN -> FC -> logit-BN, once
        return torch.cat([self.matcher(feature, memory[i:i + step]) for i in chunks], dim=1)

    def class_mask(self) -> torch.Tensor:
        """(num_classes,) weights of the classes in the loss: ``valid_class`` (1.1+), all ones in 1.0."""
        if self.version == "1.0":
            return torch.ones_like(self.valid_class)
        return self.valid_class.detach().clone()

    def forward(self, feature: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_input(feature, target)
        score = self.scores(feature)
        onehot = torch.zeros_like(score).scatter_(1, target[:, None], 1.0)
        loss = F.binary_cross_entropy_with_logits(score, onehot, reduction="none")
        prob = score.sigmoid()
        weight = torch.where(onehot > 0, 1.0 - prob, prob).pow(2)
        loss = (loss * weight * self.class_mask()[None, :]).sum(dim=1)
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
