"""A stand-in for torchreid's ``torchreid.utils.rerank.re_ranking`` (written here from its documented behaviour).

Only for ``bench_rerank.py``: the dense, sorting re-ranking that torchreid and fast-reid users run, with the same
memory and time profile, so that our re-ranking can be timed against it in the same run on this machine (torchreid
itself is not installed here). What it does, step for step as torchreid does it:

1. the (N, N) matrix [[qq, qg], [qg^T, gg]], N = q + g, squared, in float32;
2. each column divided by its maximum, the matrix transposed (a copy);
3. a full argsort of every row (NumPy's default quicksort), kept as int32;
4. a dense float32 (N, N) encoding V: for each row a Python loop builds the k-reciprocal set (k1 + 1 forward
   neighbours whose own k1 + 1 contain the row), expands it by every member's round(k1 / 2) + 1 set that shares
   more than 2/3 of its items with it, and stores exp(-d) / sum;
5. local query expansion: each row replaced by the mean of its k2 nearest rows' V (a second dense float32 matrix);
6. an inverted index (the rows with a non-zero per column) and, per query, the sum of element-wise minima over
   shared columns -> Jaccard 1 - s / (2 - s);
7. ``(1 - lambda) * jaccard + lambda * d`` for the query rows, the gallery columns returned.

Its output differs from ours (torchreid squares the input and keeps V in float32, QAConv and Zhong et al. keep it
in float16 and do not square), so the benchmark compares it by time and memory, and checks the rankings agree.
"""
from __future__ import annotations

import numpy as np


def _reciprocal(rank: np.ndarray, i: int, width: int) -> np.ndarray:
    """Items among row i's first ``width`` neighbours that have i among their own first ``width``."""
    forward = rank[i, :width]
    back = rank[forward, :width]
    return forward[np.nonzero((back == i).any(axis=1))[0]]


def torchreid_style_rerank(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6,
                           lambda_value: float = 0.3) -> np.ndarray:
    """Dense k-reciprocal re-ranking as torchreid does it.

    Args:
        q_g: (q, g) distances. q_q: (q, q). g_g: (g, g).
        k1, k2, lambda_value: the paper's 20, 6, 0.3.
    Returns:
        (q, g) float32 re-ranked distances.
    """
    q = q_g.shape[0]
    d = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    d = np.power(d, 2).astype(np.float32)
    d = np.transpose(1.0 * d / np.max(d, axis=0))
    n = d.shape[0]
    v = np.zeros_like(d).astype(np.float32)
    rank = np.argsort(d).astype(np.int32)
    half = int(np.around(k1 / 2.0)) + 1
    for i in range(n):
        members = _reciprocal(rank, i, k1 + 1)
        expanded = members
        for c in members:
            cand = _reciprocal(rank, c, half)
            if len(np.intersect1d(cand, members)) > 2.0 / 3 * len(cand):
                expanded = np.append(expanded, cand)
        expanded = np.unique(expanded)
        w = np.exp(-d[i, expanded])
        v[i, expanded] = 1.0 * w / np.sum(w)
    d = d[:q]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            v_qe[i, :] = np.mean(v[rank[i, :k2], :], axis=0)
        v = v_qe
        del v_qe
    del rank
    inverted = [np.nonzero(v[:, c] != 0)[0] for c in range(n)]
    jaccard = np.zeros_like(d, dtype=np.float32)
    for i in range(q):
        s = np.zeros((1, n), dtype=np.float32)
        cols = np.nonzero(v[i, :] != 0)[0]
        for c in cols:
            rows = inverted[c]
            s[0, rows] = s[0, rows] + np.minimum(v[i, c], v[rows, c])
        jaccard[i] = 1 - s / (2.0 - s)
    final = jaccard * (1 - lambda_value) + d * lambda_value
    return final[:q, q:]
