"""Temporal Lifting (TLift, Liao & Shao, ECCV 2020): re-weight matching scores by the time stamps of the gallery
images that co-occurring probes match best (ShengcaiLiao/QAConv ``reid/tlift.py``).

For a probe i of camera c_p and a gallery camera c_g (the same camera included):

1. N(i) = probes of camera c_p whose time differs from i's by less than ``tau`` (i included).
2. thr = the K-th largest value of the scores of N(i) against the gallery of c_g, flattened (its minimum when
   there are at most K values).
3. Pivots = the gallery column of every such score >= thr, with multiplicity (a gallery image picked by several
   co-occurring probes counts several times; ties can give more than K pivots).
4. W[i, a] = mean over the pivots q of exp(-(t_a - t_q)^2 / sigma^2) for every gallery image a of c_g.

Output = (W + alpha) * in_score elementwise. Probes (or gallery images) whose camera is outside
[0, num_cams) keep W = 0, i.e. alpha * score.

Deviations (see ``qaconv/README.md``): W is computed in float64 (the original uses the score's dtype, float32
in practice) and the result is cast back to the score's floating dtype; a gallery camera without images is
skipped (the original raises IndexError).
"""
from __future__ import annotations

import numpy as np


def _vec(x, name: str, n: int) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x).reshape(-1)
    if x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} entries, expected {n}")
    return x


def tlift_weights(in_score: np.ndarray, gal_cam_id: np.ndarray, gal_time: np.ndarray, prob_cam_id: np.ndarray,
                  prob_time: np.ndarray, num_cams: int, tau: float = 100, sigma: float = 200,
                  K: int = 10) -> np.ndarray:
    """The temporal weights W of TLift (before the ``(W + alpha) * score`` fusion).

    Args:
        in_score: (P, G) similarities.
        gal_cam_id: (G,) int 0-based cameras. gal_time: (G,) time stamps (seconds).
        prob_cam_id: (P,) int 0-based cameras. prob_time: (P,) time stamps (seconds).
        num_cams: cameras 0..num_cams-1 are processed (QAConv: max gallery camera + 1).
        tau: co-occurrence window (strict ``<``).
        sigma: width of the Gaussian of the time difference.
        K: number of top scores defining the pivots.
    Returns:
        (P, G) float64 W in [0, 1].
    """
    if hasattr(in_score, "detach"):
        in_score = in_score.detach().cpu().numpy()
    score = np.asarray(in_score)
    if score.ndim != 2:
        raise ValueError(f"in_score must be (num_probes, num_gallery), got shape {score.shape}")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    num_p, num_g = score.shape
    g_cam, p_cam = _vec(gal_cam_id, "gal_cam_id", num_g), _vec(prob_cam_id, "prob_cam_id", num_p)
    g_time = _vec(gal_time, "gal_time", num_g).astype(np.float64)
    p_time = _vec(prob_time, "prob_time", num_p).astype(np.float64)
    w = np.zeros((num_p, num_g), dtype=np.float64)
    for cg in range(int(num_cams)):
        g_idx = np.flatnonzero(g_cam == cg)
        if g_idx.size == 0:
            continue
        dt = g_time[g_idx][:, None] - g_time[g_idx][None, :]
        kernel = np.exp(-(dt ** 2) / float(sigma) ** 2)  # (n_g, n_g), symmetric
        for cp in range(int(num_cams)):
            p_idx = np.flatnonzero(p_cam == cp)
            if p_idx.size == 0:
                continue
            sub = score[np.ix_(p_idx, g_idx)]  # (n_p, n_g)
            near = np.abs(p_time[p_idx][:, None] - p_time[p_idx][None, :]) < tau  # (n_p, n_p)
            counts = np.zeros((p_idx.size, g_idx.size), dtype=np.float64)  # pivot multiplicity per column
            for i in range(p_idx.size):
                block = sub[near[i]]
                flat = block.reshape(-1)
                if flat.size > K:
                    thr = np.partition(flat, flat.size - K)[flat.size - K]
                else:
                    thr = flat.min()
                counts[i] = (block >= thr).sum(axis=0)
            w[np.ix_(p_idx, g_idx)] = (counts @ kernel) / counts.sum(axis=1, keepdims=True)
    return w


def tlift(in_score, gal_cam_id, gal_time, prob_cam_id, prob_time, num_cams: int, tau: float = 100,
          sigma: float = 200, K: int = 10, alpha: float = 0.2) -> np.ndarray:
    """TLift score refinement: ``(W + alpha) * in_score`` with W from :func:`tlift_weights`.

    The default ``alpha`` suits scores in [0, 1] dominated by small negatives-pair values (sigmoid or
    re-ranked scores, as QAConv feeds ``1 - reranked distance``); feed sigmoid(score) rather than raw logits.

    Args:
        in_score: (P, G) similarities (numpy array or torch tensor).
        gal_cam_id: (G,) int 0-based cameras. gal_time: (G,) seconds.
        prob_cam_id: (P,) int 0-based cameras. prob_time: (P,) seconds.
        num_cams: number of cameras (QAConv passes max gallery camera + 1).
        tau: co-occurrence window in seconds (100).
        sigma: temporal sensitivity in seconds (200).
        K: top retrievals defining the pivot set (10).
        alpha: regulariser of the multiplicative fusion (0.2).
    Returns:
        (P, G) numpy array, the score's floating dtype (float64 for integer input).
    """
    if hasattr(in_score, "detach"):
        in_score = in_score.detach().cpu().numpy()
    score = np.asarray(in_score)
    out_dtype = score.dtype if np.issubdtype(score.dtype, np.floating) else np.float64
    w = tlift_weights(score, gal_cam_id, gal_time, prob_cam_id, prob_time, num_cams, tau, sigma, K)
    return ((w + alpha) * score).astype(out_dtype, copy=False)
