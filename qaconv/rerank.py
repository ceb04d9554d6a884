"""k-reciprocal re-ranking as QAConv's ``reid/evaluators.py`` applies it (Zhong et al., CVPR 2017, QAConv variant).

Differences from Zhong et al.'s own code, kept on purpose because QAConv's reported re-ranked figures come from
them: the input distances are **not squared**; each column is divided by its maximum and the matrix is then
transposed; the encoding ``V`` is stored in float16, its local query expansion (mean over ``k2`` neighbours) is
rounded back to float16, and the Jaccard similarity is accumulated in float16 in ascending order of the shared
neighbour, exactly as the original's inverted-index loop does.

Deviations (see ``qaconv/README.md``): the neighbour ranking uses a *stable* argsort (ties go to the lower
index; the original's quicksort leaves their order unspecified); the normaliser of each ``V`` row is summed in
float64 instead of float32 (the float16 entries can differ by one unit in the last place); only the
query-vs-gallery block of the Jaccard matrix is computed, which is the only block returned.
"""
from __future__ import annotations

import warnings
from typing import Tuple

import numpy as np

CHUNK_ROWS = 256  # rows processed at once (bounds the (rows, N) temporaries)


def _as_numpy(dist) -> np.ndarray:
    if hasattr(dist, "detach"):  # torch.Tensor, without importing torch here
        dist = dist.detach().cpu().numpy()
    return np.asarray(dist, dtype=np.float32)


def _top_ranks(d0: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` columns of each row's stable ascending ranking.

    Args:
        d0: (N, N) float32 distances.
        k: number of neighbours kept (clipped to N).
    Returns:
        (N, min(k, N)) int64 indices, nearest first.
    """
    n = d0.shape[0]
    k = min(k, n)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, CHUNK_ROWS):
        out[s:s + CHUNK_ROWS] = np.argsort(d0[s:s + CHUNK_ROWS], axis=1, kind="stable")[:, :k]
    return out


def _reciprocal_mask(top: np.ndarray, k: int) -> np.ndarray:
    """Which of each row's first ``k`` neighbours have that row among their own first ``k``.

    Args:
        top: (N, >= k) int ranked neighbour indices.
        k: list length used on both sides (k1 + 1 or round(k1 / 2) + 1).
    Returns:
        (N, k) bool; entry (i, m) is True when i is in the first k of ``top[i, m]``.
    """
    n = top.shape[0]
    fwd = top[:, :k]
    mask = np.empty(fwd.shape, dtype=bool)
    for s in range(0, n, CHUNK_ROWS):
        rows = np.arange(s, min(s + CHUNK_ROWS, n))
        mask[rows] = (fwd[fwd[rows]] == rows[:, None, None]).any(axis=2)
    return mask


def _encode(d0: np.ndarray, top: np.ndarray, k1: int) -> np.ndarray:
    """Gaussian-kernel encoding ``V`` of every row's expanded k-reciprocal set.

    R(i) = k-reciprocal neighbours of i among the first k1+1; for every c in R(i), R_half(c) (same rule with
    round(k1/2)+1, banker's rounding as ``np.around``) is added when more than 2/3 of it lies in R(i).

    Args:
        d0: (N, N) float32 normalised distances.
        top: (N, >= k1 + 1) ranked neighbours (fewer columns when N is small).
        k1: the k of the k-reciprocal sets.
    Returns:
        (N, N) float16 V; row i is exp(-d0[i, j]) / sum over the set, zero outside it.
    """
    n = d0.shape[0]
    kf = min(k1 + 1, n)
    kh = min(int(np.around(k1 / 2)) + 1, n)
    rec = _reciprocal_mask(top, kf)  # (N, kf)
    rec_h = _reciprocal_mask(top, kh)  # (N, kh)
    fwd, fwd_h = top[:, :kf], top[:, :kh]
    v = np.zeros((n, n), dtype=np.float16)
    for s in range(0, n, CHUNK_ROWS):
        rows = np.arange(s, min(s + CHUNK_ROWS, n))
        r_ids, r_ok = fwd[rows], rec[rows]  # (b, kf): candidate c and whether c is in R(i)
        h_ids, h_ok = fwd_h[r_ids], rec_h[r_ids]  # (b, kf, kh): R_half(c) as ids + validity
        in_r = ((h_ids[..., None] == r_ids[:, None, None, :]) & r_ok[:, None, None, :]).any(axis=3)
        size = h_ok.sum(axis=2)
        overlap = (in_r & h_ok).sum(axis=2)
        accept = r_ok & (overlap > 2 / 3 * size)  # (b, kf)
        member = np.zeros((rows.size, n), dtype=bool)
        b_idx = np.broadcast_to(np.arange(rows.size)[:, None], r_ids.shape)
        member[b_idx[r_ok], r_ids[r_ok]] = True
        add = accept[..., None] & h_ok
        b3 = np.broadcast_to(np.arange(rows.size)[:, None, None], h_ids.shape)
        member[b3[add], h_ids[add]] = True
        weight = np.where(member, np.exp(-d0[rows]), np.float32(0)).astype(np.float64)
        total = weight.sum(axis=1, keepdims=True)
        v[rows] = (weight / np.where(total > 0, total, 1.0)).astype(np.float16)
    return v


def _query_expand(v: np.ndarray, top: np.ndarray, k2: int) -> np.ndarray:
    """Local query expansion: row i becomes the mean of the V rows of its first ``k2`` neighbours (float16).

    Args:
        v: (N, N) float16.
        top: (N, >= k2) ranked neighbours.
        k2: number of rows averaged (includes i itself when it ranks first).
    Returns:
        (N, N) float16.
    """
    n = v.shape[0]
    nb = top[:, :min(k2, n)]
    out = np.empty_like(v)
    for s in range(0, n, CHUNK_ROWS):
        # as np.mean on float16 rows: sequential float32 sum, float32 division, rounded to float16
        acc = np.zeros((min(CHUNK_ROWS, n - s), n), dtype=np.float32)
        for m in range(nb.shape[1]):
            acc += v[nb[s:s + CHUNK_ROWS, m]]
        out[s:s + CHUNK_ROWS] = (acc / np.float32(nb.shape[1])).astype(np.float16)
    return out


def _jaccard_qg(v: np.ndarray, query_num: int) -> np.ndarray:
    """Jaccard distance between the query rows and the gallery rows of ``V``, in float16.

    sim(i, j) = sum_k min(V[i, k], V[j, k]), accumulated in float16 in ascending order of k (the order of the
    original's inverted-index loop); distance = 1 - sim / (2 - sim).

    Args:
        v: (N, N) float16 encoding; rows [0, query_num) are queries.
        query_num: q.
    Returns:
        (q, N - q) float16.
    """
    n = v.shape[0]
    sim = np.zeros((query_num, n - query_num), dtype=np.float16)
    rows, cols = np.nonzero(v)
    order = np.argsort(cols, kind="stable")  # group by column, rows ascending inside a column
    rows, cols = rows[order], cols[order]
    bounds = np.searchsorted(cols, np.arange(n + 1))
    for k in range(n):
        r = rows[bounds[k]:bounds[k + 1]]
        qs, gs = r[r < query_num], r[r >= query_num]
        if qs.size == 0 or gs.size == 0:
            continue
        pair_min = np.minimum(v[qs, k][:, None], v[gs, k][None, :])
        block = np.ix_(qs, gs - query_num)
        sim[block] = sim[block] + pair_min
    two, one = np.float16(2), np.float16(1)
    return one - sim / (two - sim)


def k_reciprocal_rerank(dist, query_num: int, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Re-rank query-vs-gallery distances with k-reciprocal encoding (QAConv's ``reranking``).

    Steps: D0 = (D / column-max(D))^T; R*(i) = expanded k-reciprocal set; V[i] = softmax-like weights
    exp(-D0[i, j]) over R*(i) (float16); V[i] <- mean of V over the first k2 neighbours of i (when k2 != 1);
    Jaccard distance between query and gallery rows; final = (1 - lambda) * jaccard + lambda * D0.

    Args:
        dist: (N, N) numpy array or torch tensor, rows and columns ordered [queries; gallery]
            (N = q + g); compared as float32. The column maxima should be positive (QAConv at HEAD feeds
            -score; up to v2.1 it fed 1 - sigmoid(score / 10) in (0, 1)); a warning is issued otherwise.
        query_num: q, the number of leading query rows.
        k1: size of the k-reciprocal neighbourhoods (20).
        k2: neighbours of the local query expansion (6; 1 disables it).
        lambda_value: weight of the original distance (0.3).
    Returns:
        (q, N - q) float32 re-ranked distances.
    Raises:
        ValueError: ``dist`` not square, or ``query_num`` outside [0, N].
    """
    d = _as_numpy(dist)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"dist must be a square (N, N) matrix, got shape {d.shape}")
    n = d.shape[0]
    if not 0 <= query_num <= n:
        raise ValueError(f"query_num={query_num} outside [0, {n}]")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    col_max = d.max(axis=0)
    if np.any(col_max <= 0):
        warnings.warn("k_reciprocal_rerank: some column maxima are <= 0; dividing by them flips or breaks the "
                      "ranking (feed positive distances, e.g. 1 - sigmoid(score / 10)).", RuntimeWarning,
                      stacklevel=2)
    d0 = np.ascontiguousarray((d / col_max[None, :]).T, dtype=np.float32)
    top = _top_ranks(d0, max(k1 + 1, k2))
    v = _encode(d0, top, k1)
    if k2 != 1:
        v = _query_expand(v, top, k2)
    jaccard = _jaccard_qg(v, query_num)
    final = jaccard * np.float16(1 - lambda_value) + d0[:query_num, query_num:] * np.float32(lambda_value)
    return final.astype(np.float32, copy=False)


def full_distance_matrix(qq, qg, gg) -> Tuple[np.ndarray, int]:
    """Assemble the (q+g, q+g) matrix [[qq, qg], [qg^T, gg]] that :func:`k_reciprocal_rerank` takes.

    Args:
        qq: (q, q) query-vs-query distances. qg: (q, g) query-vs-gallery. gg: (g, g) gallery-vs-gallery.
    Returns:
        ((q+g, q+g) float32 matrix, q).
    """
    qq, qg, gg = (_as_numpy(x) for x in (qq, qg, gg))
    q, g = qg.shape
    if qq.shape != (q, q) or gg.shape != (g, g):
        raise ValueError(f"block shapes do not fit: qq {qq.shape}, qg {qg.shape}, gg {gg.shape}")
    full = np.empty((q + g, q + g), dtype=np.float32)
    full[:q, :q], full[:q, q:], full[q:, :q], full[q:, q:] = qq, qg, qg.T, gg
    return full, q
