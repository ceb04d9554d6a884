"""Hard-sample deduction and prototype mixing (spec §6, §8.1).

Hard pairs of image n: new positives P_new(n) = images in n's cluster now but not in the previous epoch's cluster
of n; new negatives N_new(n) = images in n's previous cluster but not in its cluster now. Prototype mixing moves the
positive prototype of each batch image's cluster towards the bank feature of one of its (GCN-filtered) new positives.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch


def hard_samples(n: int, idx2labels: np.ndarray, prior: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(P_new(n), N_new(n))`` as ascending int64 index arrays (n itself is in neither)."""
    same_now = idx2labels == idx2labels[n]
    same_prev = prior == prior[n]
    return np.nonzero(same_now & ~same_prev)[0], np.nonzero(~same_now & same_prev)[0]


class HardPairs:
    """Per-batch hard positives / negatives, optionally filtered by a pair-link predictor (the GCN).

    Args:
        idx2labels: (N,) current pseudo-labels (outliers unique).
        prior: (N,) previous epoch's ``idx2labels`` (``arange(N)`` at epoch 0).
        link_fn: optional ``link_fn([(u, v), ...]) -> (P,) P(link)`` numpy probabilities; positives kept where
            P > 0.5, negatives where P <= 0.5 (``--use-gcn``).
        fix_fallback: the original falls back to the cluster of image ``n - 1`` when n has no positive (an
            off-by-one, spec P5; kept by default); True uses n's own cluster.
    """

    def __init__(self, idx2labels: np.ndarray, prior: np.ndarray, link_fn: Optional[Callable] = None,
                 fix_fallback: bool = False):
        self.idx2labels, self.prior = np.asarray(idx2labels), np.asarray(prior)
        self.link_fn, self.fix_fallback = link_fn, fix_fallback

    def __call__(self, n: int) -> Tuple[np.ndarray, np.ndarray, bool]:
        """``(positives P_i, negatives N_i, had_negatives)`` of image n (after filtering and fallback)."""
        return self.batch([n])[0]

    def batch(self, ns: Sequence[int]) -> List[Tuple[np.ndarray, np.ndarray, bool]]:
        """:meth:`__call__` for a batch; the link predictor sees all the batch's pairs in one call."""
        raw = [hard_samples(int(n), self.idx2labels, self.prior) for n in ns]
        if self.link_fn is not None:
            pairs = [(int(n), int(j)) for n, (p, q) in zip(ns, raw) for j in np.concatenate([p, q])]
            probs = self.link_fn(pairs) if pairs else np.zeros(0)
        out, at = [], 0
        for n, (pos, neg) in zip(ns, raw):
            had_neg = len(neg) > 0
            if self.link_fn is not None:
                pp, pn = probs[at:at + len(pos)], probs[at + len(pos):at + len(pos) + len(neg)]
                at += len(pos) + len(neg)
                pos, neg = pos[pp > 0.5], neg[pn <= 0.5]
            if len(pos) == 0:
                ref = int(n) if self.fix_fallback else int(n) - 1    # index -1 wraps to the last image, as NumPy
                pos = np.nonzero(self.idx2labels == self.idx2labels[ref])[0]
            out.append((pos, neg, had_neg))
        return out


def mix_prototypes(memory: torch.Tensor, bank: torch.Tensor, targets: Sequence[int], positives: List[np.ndarray],
                   rng: np.random.RandomState, alpha: float = 0.2) -> Tuple[torch.Tensor, List[int]]:
    """Mixed positive prototypes p~ (spec §8.1), sequential over the batch.

    For i = 0..B-1: j* = uniform draw from positives[i]; p~[y_i] <- alpha * bank[j*] + (1 - alpha) * p~[y_i],
    starting from p~ = memory (updates compound for repeated labels; no renormalisation).

    Args:
        memory: (K, D) cluster memory M.
        bank: (N, D) per-image feature bank.
        targets: (B,) pseudo-labels y_i.
        positives: B index arrays P_i (non-empty).
        rng: NumPy random state of the draws.
        alpha: mixing weight.
    Returns:
        ``(p~ (K, D), drawn j* per image)``.
    """
    mixed = memory.clone()
    drawn = []
    for y, pos in zip(targets, positives):
        j = int(rng.choice(pos))
        drawn.append(j)
        mixed[int(y)] = alpha * bank[j] + (1 - alpha) * mixed[int(y)]
    return mixed, drawn
