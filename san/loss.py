"""SAN losses as coded in the release: label-smoothed CE and batch-hard triplet on v (re-ID), L1 texture
reconstruction and the decoder triplet constraints L_TR on x_sim1..x_sim4 (decoder).

Reference:
    Jin et al., AAAI 2020, Sec. 3 (L_ID, L_Triplet, L_Rec, L_TR); the release's ``main.py`` ``train()`` and
    ``torchreid/losses`` (semantics through the spec: fixed-index triplets, MSE distance, margin 0.3, a sum).
    Szegedy et al., CVPR 2016 (label smoothing); Hermans et al., arXiv 1703.07737 (batch hard).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from common.distributed import gather_with_grad
from common.errors import ReidError

TR_MARGIN = 0.3  # hard-coded in the release (it does not read --margin)


class CrossEntropyLabelSmooth(nn.Module):
    """``mean_b sum_k -q_k log softmax(y_b)_k`` with ``q = (1 - eps) onehot + eps / N``.

    Shapes: forward(logits (B, N), targets (B,) int64) -> scalar. ``eps = 0`` is the plain cross-entropy.
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1):
        super().__init__()
        self.num_classes, self.epsilon = num_classes, float(epsilon)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        q = torch.zeros_like(log_p).scatter_(1, targets.unsqueeze(1), 1.0)
        q = (1.0 - self.epsilon) * q + self.epsilon / self.num_classes
        return (-q * log_p).sum(1).mean()


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) ``sqrt(max(|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>, 1e-12))`` (a zero distance is 1e-6)."""
    sq = x.pow(2).sum(1, keepdim=True)
    return (sq + sq.t() - 2.0 * x @ x.t()).clamp(min=1e-12).sqrt()


class BatchHardTriplet(nn.Module):
    """``mean_i max(0, max_{j: same id} D_ij - min_{j: other id} D_ij + margin)``; the anchor counts as a positive.

    Shapes: forward(feats (B, D), pids (B,)) -> (loss scalar, dist_ap (B,), dist_an (B,)).
    """

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = float(margin)

    def forward(self, feats: torch.Tensor, pids: torch.Tensor):
        dist = pairwise_euclidean(feats)
        same = pids.unsqueeze(0) == pids.unsqueeze(1)
        d_ap = dist.masked_fill(~same, float("-inf")).max(1).values
        d_an = dist.masked_fill(same, float("inf")).min(1).values
        return F.relu(d_ap - d_an + self.margin).mean(), d_ap, d_an


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_Rec: mean absolute error over (B, 3, H, 2W); no mask (background and unused UV texels count)."""
    if pred.shape != target.shape:
        raise ReidError(f"texture target of shape {tuple(target.shape)} does not match the decoder output "
                        f"{tuple(pred.shape)}", fix="textures are resized to (height, 2 x width) by san's loader; "
                        "pass matching --height/--width")
    return (pred - target).abs().mean()


def check_identity_groups(pids: torch.Tensor, k: int = 4) -> None:
    """Raise a :class:`ReidError` unless the batch is P >= 2 consecutive runs of ``k`` equal ids, adjacent runs
    differing (what ``RandomIdentitySampler`` yields). L_TR's fixed offsets are wrong on any other order."""
    pids = [int(p) for p in pids.reshape(-1).tolist()]
    b = len(pids)
    fix = ("train with --train-sampler RandomIdentitySampler --num-instances 4 and a --train-batch-size that is a "
           "multiple of 4 with at least 2 identities per batch, or turn L_TR off with --no-tr-loss")
    if k < 4:
        raise ReidError(f"L_TR needs --num-instances >= 4 (its triplets use offsets up to +3 inside a group), "
                        f"got {k}", fix=fix)
    if b % k or b // k < 2:
        raise ReidError(f"L_TR needs a batch of P >= 2 identity groups of K = {k}; got a batch of {b}", fix=fix)
    for g in range(b // k):
        run = pids[g * k:(g + 1) * k]
        if len(set(run)) != 1:
            raise ReidError(f"L_TR assumes identity-grouped batches of K = {k}: samples {g * k}..{(g + 1) * k - 1} "
                            f"have ids {run}", fix=fix)
        if g > 0 and pids[g * k] == pids[(g - 1) * k]:
            raise ReidError(f"L_TR assumes adjacent identity groups differ: groups {g - 1} and {g} both have "
                            f"id {run[0]}", fix=fix)


def tr_triplets(batch_size: int, k: int = 4) -> List[List[Tuple[int, int, int, int]]]:
    """The release's fixed index pairs: for each level (x_sim1..4) a list of (a, p, a', n) such that the term is
    ``max(d(a, p) - d(a', n) + margin, 0)``.

    Group starts ``i = 0, k, ..., (P - 2) k`` (the last group is never an anchor group). With k = 4:
    level 1 (i, i+1 | i, i+4); level 2 (i+1, i+2 | i+1, i+5); level 3 (i+2, i+3 | i+2, i+6);
    level 4 (i, i+3 | i+3, i+4): its negative pair is anchored on i+3. For k > 4 the negatives are the same
    positions in the next group (i + k, i + k + 1, i + k + 2), which reduces to the coded offsets at k = 4.
    """
    starts = range(0, batch_size - k, k)
    return [[(i, i + 1, i, i + k) for i in starts],
            [(i + 1, i + 2, i + 1, i + k + 1) for i in starts],
            [(i + 2, i + 3, i + 2, i + k + 2) for i in starts],
            [(i, i + 3, i + 3, i + k) for i in starts]]


def _mse_rows(x: torch.Tensor, a: Sequence[int], b: Sequence[int]) -> torch.Tensor:
    """(B, ...) -> (len(a),): mean over all C*H*W elements of (x[a] - x[b])^2."""
    ia = torch.as_tensor(a, device=x.device)
    ib = torch.as_tensor(b, device=x.device)
    return (x[ia] - x[ib]).pow(2).flatten(1).mean(1)


def triplet_reconstruction_loss(x_sims: Sequence[torch.Tensor], pids: torch.Tensor, k: int = 4,
                                margin: float = TR_MARGIN) -> torch.Tensor:
    """L_TR: the sum over groups and the 4 levels of fixed-index hinge terms on MSE distances (see
    :func:`tr_triplets`). Checks the identity grouping first (:func:`check_identity_groups`).

    Args:
        x_sims: (x_sim1, x_sim2, x_sim3, x_sim4), each (B, C_l, H_l, W_l).
        pids: (B,) identities of the batch.
        k: images per identity in a group (4 in the release).
        margin: 0.3 (hard-coded in the release).
    Returns:
        scalar: an inactive hinge contributes exactly 0 and no gradient.
    """
    check_identity_groups(pids, k)
    total = x_sims[0].new_zeros(())
    for x, triplets in zip(x_sims, tr_triplets(pids.numel(), k)):
        a, p, a2, n = zip(*triplets)
        total = total + F.relu(_mse_rows(x, a, p) - _mse_rows(x, a2, n) + margin).sum()
    return total


class ReidCriterion(nn.Module):
    """L_reid = lambda_xent * CE_ls(logits) + lambda_htri * triplet(v); ``htri_only`` drops CE.

    Shapes: forward(logits (B, N), v (B, D), pids (B,)) -> (loss, parts dict of floats).
    Under torchrun (B = this rank's share) the triplet is taken on the global batch (``gather_with_grad`` of v and
    pids, see ``san/ddp.py``), CE on the share (a per-sample mean); ``acc`` is the share's.
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1, margin: float = 0.3, lambda_xent: float = 1.0,
                 lambda_htri: float = 1.0, htri_only: bool = False):
        super().__init__()
        self.xent = CrossEntropyLabelSmooth(num_classes, epsilon)
        self.htri = BatchHardTriplet(margin)
        self.lambda_xent, self.lambda_htri, self.htri_only = lambda_xent, lambda_htri, htri_only

    def forward(self, logits, v, pids) -> Tuple[torch.Tensor, Dict[str, float]]:
        tri, d_ap, d_an = self.htri(gather_with_grad(v), gather_with_grad(pids))  # alone: (v, pids)
        parts = {"htri": tri.item(), "acc": (logits.argmax(1) == pids).float().mean().item()}
        loss = self.lambda_htri * tri
        if not self.htri_only:
            ce = self.xent(logits, pids)
            loss = loss + self.lambda_xent * ce
            parts["xent"] = ce.item()
        return loss, parts
