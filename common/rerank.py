"""Sparse, selecting k-reciprocal re-ranking: the result of ``qaconv.rerank.k_reciprocal_rerank`` without (q+g)^2.

The dense code (Zhong et al. 2017 as QAConv applies it) holds the full (N, N) distance matrix, N = q + g. This
module never does: the distance is a callback ``block_fn(rows, cols) -> (len(rows), len(cols))`` over the
concatenated [queries; gallery] index space, called on bounded blocks. Steps, each reproducing a convention of
the dense code:

1. D0 = (D / column-max(D))^T, i.e. D0[i, j] = D[j, i] / max_r D[r, i] (float32 division). One pass over
   column blocks of D gives each D0 row's maximum and its ``keep`` smallest raw entries, by
   ``np.argpartition`` (selection, not a sort). The candidates are then divided by the maximum and stable-sorted
   by (value, index). The first K = max(k1 + 1, k2) of them equal a stable argsort of the whole D0 row whenever
   the K-th value is strictly below every value the row's discarded entries can take (they are >= the largest
   raw candidate, and division by a positive maximum is monotone); any other row (ties across the cut, a column
   maximum <= 0 or non-finite) is recomputed in full and stable-sorted, so the lists are always exact.
2. Expanded k-reciprocal sets from those lists with ``common.neighbors.kreciprocal_sets`` (same R(i), same
   round(k1/2) half sets, same > 2/3 overlap rule); V[i] = exp(-D0[i, R*(i)]) / sum in float64, stored in
   float16, as a CSR matrix of O(N k) entries. D0 values of members outside the candidate list come from small
   extra blocks.
3. Local query expansion: float32 sum of the float16 rows of the first k2 neighbours in neighbour order
   (``csr + csr`` adds entry-wise, and adding an absent entry is adding an exact 0, as the dense loop does),
   divided by float32(k2), rounded to float16.
4. Jaccard only for query-gallery pairs that share a column, accumulated in float16 in ascending column order
   (the dense inverted-index loop's order); 1 - sim / (2 - sim) in float16; pairs sharing nothing get 1.
5. final = float16(jaccard * float16(1 - lambda)) + D0[:q, q:] * float32(lambda), the D0 block kept from the
   blocks of step 1 (no second pass over the distances).

Equality with the dense code: identical float operations in identical order, with one difference: the dense
code sums each V row's weights over the whole length-N row (NumPy pairwise summation, zeros included), this
module over the members only. For distances in [0, 1] after the normalisation the weights are float32 numbers
in (1/e, 1] and the float64 sum of < 2^20 of them is exact in either order, so the results are bit-identical;
otherwise they can differ by one float64 rounding before the float16 cast.

Peak memory: O(N * keep) for the lists, O(N k^2) for V, one ``row_chunk x col_chunk`` block, and the returned
(q, g) float32 matrix.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

from common.eval.distance import compute_distmat
from common.neighbors import kreciprocal_sets

BlockFn = Callable[[np.ndarray, np.ndarray], Union[np.ndarray, torch.Tensor]]

__all__ = ["rerank_sparse", "rerank_features", "neighbour_lists", "stitched_block_fn"]


def _block(block_fn: BlockFn, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """block_fn(rows, cols) as a float32 (len(rows), len(cols)) numpy array."""
    b = block_fn(rows, cols)
    if isinstance(b, torch.Tensor):
        b = b.detach().cpu().numpy()
    b = np.asarray(b, dtype=np.float32)
    if b.shape != (len(rows), len(cols)):
        raise ValueError(f"block_fn returned shape {b.shape}, expected {(len(rows), len(cols))}")
    return b


def _d0_rows(block_fn: BlockFn, rows: np.ndarray, cols: np.ndarray, col_max: np.ndarray) -> np.ndarray:
    """D0[rows][:, cols] = D[cols, rows]^T / col_max[rows] (float32), (len(rows), len(cols))."""
    return _block(block_fn, cols, rows).T / col_max[:, None]


def neighbour_lists(block_fn: BlockFn, n: int, k: int, keep: Optional[int] = None, row_chunk: int = 1024,
                    col_chunk: int = 8192, store: Optional[np.ndarray] = None
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Exact first ``k`` columns of a stable argsort of every row of D0 = (D / column-max(D))^T.

    Args:
        block_fn: distance blocks of D over [0, n).
        n: number of items.
        k: neighbours per row (clipped to n).
        keep: raw candidates selected per row (default k + 16; clipped to n).
        row_chunk: D0 rows per step. col_chunk: D0 columns per block.
        store: optional (q, g) float32 array, filled with D0[:q, n - g:] from the same blocks (the re-ranking's
            original-distance term, so that it needs no second pass).
    Returns:
        ``(top, top_d0, cand, cand_d0, col_max, fallback)``: (n, k) int64 neighbours nearest first, their (n, k)
        float32 D0 values, the (n, keep) int64 candidates in the same stable order with their D0 values
        (used to look up D0 without new blocks), (n,) float32 column maxima, the number of rows recomputed
        in full.
    """
    k = min(int(k), n)
    keep = min(n, max(k, int(keep) if keep is not None else k + 16))
    top = np.empty((n, k), dtype=np.int64)
    cand = np.empty((n, keep), dtype=np.int64)
    cand_d0 = np.empty((n, keep), dtype=np.float32)
    col_max = np.empty(n, dtype=np.float32)
    fallback = 0
    sq, g0 = (store.shape[0], n - store.shape[1]) if store is not None else (0, n)
    for r0 in range(0, n, row_chunk):
        rows = np.arange(r0, min(r0 + row_chunk, n))
        b = len(rows)
        best_v = np.empty((b, 0), dtype=np.float32)
        best_i = np.empty((b, 0), dtype=np.int64)
        cmax = np.full(b, -np.inf, dtype=np.float32)
        for c0 in range(0, n, col_chunk):
            cols = np.arange(c0, min(c0 + col_chunk, n))
            raw = _block(block_fn, cols, rows).T  # (b, |C|) = D[cols, rows]^T, D0 rows before division
            cmax = np.maximum(cmax, raw.max(axis=1))  # NaN propagates, as ndarray.max
            if store is not None and r0 < sq and cols[-1] >= g0:
                c_a = max(c0, g0)
                store[r0:min(r0 + b, sq), c_a - g0:cols[-1] + 1 - g0] = raw[:min(b, sq - r0), c_a - c0:]
            m = best_v.shape[1]
            cat_v = np.concatenate([best_v, raw], axis=1)
            if cat_v.shape[1] > keep:
                sel = np.argpartition(cat_v, keep - 1, axis=1)[:, :keep]
                best_v = np.take_along_axis(cat_v, sel, 1)
                old = np.take_along_axis(best_i, np.minimum(sel, max(m - 1, 0)), 1) if m else 0
                best_i = np.where(sel < m, old, sel - m + c0)
            else:
                best_v = cat_v
                best_i = np.concatenate([best_i, np.broadcast_to(cols, raw.shape)], axis=1)
            del cat_v, raw
        col_max[rows] = cmax
        if store is not None and r0 < sq:
            store[r0:min(r0 + b, sq)] /= cmax[:min(b, sq - r0), None]
        # normalise the candidates and sort them stably by (D0 value, index)
        y = best_v / cmax[:, None]
        order = _stable_order(y, best_i)
        y, idx = np.take_along_axis(y, order, 1), np.take_along_axis(best_i, order, 1)
        if keep < n:
            bound = best_v.max(axis=1) / cmax  # D0 value of the largest raw candidate: a floor for the rest
            exact = (y[:, k - 1] < bound) & np.isfinite(cmax) & (cmax > 0)
        else:
            exact = np.ones(b, dtype=bool)
        redo = np.nonzero(~exact)[0]
        fallback += len(redo)
        step = min(64, row_chunk)
        for s in range(0, len(redo), step):  # the whole D0 row, stable argsort
            rr = redo[s:s + step]
            full = np.concatenate([_d0_rows(block_fn, rows[rr], np.arange(c0, min(c0 + col_chunk, n)), cmax[rr])
                                   for c0 in range(0, n, col_chunk)], axis=1)
            o = np.argsort(full, axis=1, kind="stable")[:, :keep]
            idx[rr], y[rr] = o, np.take_along_axis(full, o, 1)
        cand[rows], cand_d0[rows] = idx, y
        top[rows] = idx[:, :k]
    return top, cand_d0[:, :k].copy(), cand, cand_d0, col_max, fallback


def _stable_order(y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-row order sorting by (y ascending, NaN last, then idx ascending): argsort of idx, then stable y."""
    o1 = np.argsort(idx, axis=1, kind="stable")
    o2 = np.argsort(np.take_along_axis(y, o1, 1), axis=1, kind="stable")
    return np.take_along_axis(o1, o2, 1)


def _member_d0(block_fn: BlockFn, ri: np.ndarray, rj: np.ndarray, cand: np.ndarray, cand_d0: np.ndarray,
               col_max: np.ndarray, row_chunk: int = 128, col_chunk: int = 8192) -> np.ndarray:
    """D0[ri, rj] (float32) for pairs sorted by ri: from the candidate lists, else from extra blocks of at most
    ``row_chunk x col_chunk``."""
    n, keep = cand.shape
    out = np.empty(len(ri), dtype=np.float32)
    # position of rj in row ri's candidate list: candidates sorted by index per row, then searchsorted
    srt = np.argsort(cand, axis=1, kind="stable")
    cand_s = np.take_along_axis(cand, srt, 1)
    d0_s = np.take_along_axis(cand_d0, srt, 1)
    flat = (ri * n + rj)
    key = (np.arange(n)[:, None] * n + cand_s).ravel()  # globally sorted: rows ascending, indices ascending
    pos = np.minimum(np.searchsorted(key, flat), key.size - 1)
    hit = key[pos] == flat
    out[hit] = d0_s.ravel()[pos[hit]]
    miss = np.nonzero(~hit)[0]
    if len(miss):
        mi, mj = ri[miss], rj[miss]
        starts = np.searchsorted(mi, np.arange(0, n + row_chunk, row_chunk))
        for a, z in zip(starts[:-1], starts[1:]):
            if z <= a:
                continue
            urow, r_inv = np.unique(mi[a:z], return_inverse=True)
            ucol, c_inv = np.unique(mj[a:z], return_inverse=True)
            blk = np.concatenate([_d0_rows(block_fn, urow, ucol[c:c + col_chunk], col_max[urow])
                                  for c in range(0, len(ucol), col_chunk)], axis=1)
            out[miss[a:z]] = blk[r_inv, c_inv]
    return out


def _encode(block_fn: BlockFn, top: np.ndarray, cand: np.ndarray, cand_d0: np.ndarray, col_max: np.ndarray,
            k1: int, row_chunk: int, col_chunk: int) -> sp.csr_matrix:
    """V as (N, N) CSR with float32 data holding float16 values: exp(-D0) / row sum over R*(i)."""
    n = top.shape[0]
    members = kreciprocal_sets(top, k1)  # 0/1 CSR, sorted indices
    members.sort_indices()
    ri = np.repeat(np.arange(n), np.diff(members.indptr))
    rj = members.indices.astype(np.int64)
    w = np.exp(-_member_d0(block_fn, ri, rj, cand, cand_d0, col_max, min(128, row_chunk), col_chunk))
    w = w.astype(np.float64)
    total = np.bincount(ri, weights=w, minlength=n) if len(ri) else np.zeros(n)
    # NaN weights: bincount would still sum them to NaN, as the dense row sum does
    total = np.where(total > 0, total, 1.0)
    vals = (w / total[ri]).astype(np.float16).astype(np.float32)
    return sp.csr_matrix((vals, rj, members.indptr.copy()), shape=(n, n))


def _query_expand(v: sp.csr_matrix, top: np.ndarray, k2: int) -> sp.csr_matrix:
    """Row i <- float16(float32 sum of V rows top[i, :k2] in that order / float32(k2))."""
    nb = top[:, :min(k2, top.shape[0])]
    acc = v[nb[:, 0]]
    for m in range(1, nb.shape[1]):
        acc = acc + v[nb[:, m]]  # float32 entry-wise, as acc += v[...] on dense float32 rows
    acc = acc.tocsr()
    acc.sort_indices()
    acc.data = (acc.data / np.float32(nb.shape[1])).astype(np.float16).astype(np.float32)
    return acc


def _jaccard_sim_rows(vq: sp.csr_matrix, vg_csc: sp.csc_matrix) -> np.ndarray:
    """float16 sum over shared columns k (ascending) of min(Vq[i, k], Vg[j, k]) -> (rows, g) float16."""
    nq, g = vq.shape[0], vg_csc.shape[0]
    sim = np.zeros((nq, g), dtype=np.float16)
    qrow = np.repeat(np.arange(nq), np.diff(vq.indptr))
    cnt = np.diff(vg_csc.indptr)[vq.indices]  # gallery rows sharing each query entry's column
    tot = int(cnt.sum())
    if tot == 0:
        return sim
    start = np.repeat(vg_csc.indptr[vq.indices], cnt)
    offs = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    pos = start + offs
    pq = np.repeat(qrow, cnt)
    pg = vg_csc.indices[pos].astype(np.int64)
    pm = np.minimum(np.repeat(vq.data, cnt).astype(np.float16), vg_csc.data[pos].astype(np.float16))
    # entries come ordered by (query row, column k); a stable sort by (query row, gallery row) keeps k ascending
    pair = pq * g + pg
    o = np.argsort(pair, kind="stable")
    pair, pm = pair[o], pm[o]
    first = np.r_[True, pair[1:] != pair[:-1]]
    gid = np.cumsum(first) - 1
    rank_in = np.arange(len(pair)) - np.nonzero(first)[0][gid]
    acc = np.zeros(int(gid[-1]) + 1, dtype=np.float16)
    by_t = np.argsort(rank_in, kind="stable")  # the t-th shared column of every pair, t = 0, 1, ...
    bounds = np.searchsorted(rank_in[by_t], np.arange(int(rank_in.max()) + 2))
    for a, z in zip(bounds[:-1], bounds[1:]):
        sel = by_t[a:z]  # each pair at most once: a vectorised float16 step of every pair's sequential sum
        acc[gid[sel]] = acc[gid[sel]] + pm[sel]
    up = pair[first]
    sim[up // g, up % g] = acc
    return sim


def rerank_sparse(block_fn: BlockFn, num_query: int, num_gallery: int, k1: int = 20, k2: int = 6,
                  lambda_value: float = 0.3, keep: Optional[int] = None, row_chunk: int = 512,
                  col_chunk: int = 8192, query_chunk: int = 256, stats: Optional[dict] = None) -> np.ndarray:
    """k-reciprocal re-ranking equal to ``qaconv.rerank.k_reciprocal_rerank`` on the matrix ``block_fn`` defines.

    Args:
        block_fn: ``block_fn(rows, cols)`` -> (len(rows), len(cols)) distances (numpy or torch) of D, the
            (q+g, q+g) matrix over [queries; gallery]; rows/cols are int64 numpy index arrays. Called only on
            blocks of at most ``row_chunk x col_chunk`` (and small extra blocks).
        num_query: q. num_gallery: g.
        k1: k-reciprocal neighbourhood size (20). k2: query-expansion size (6; 1 disables it).
        lambda_value: weight of the original distance (0.3).
        keep: raw candidates selected per row before the exact stable ordering (default max(k1+1, k2) + 16).
        row_chunk, col_chunk: block shape of the neighbour pass. query_chunk: query rows per Jaccard step.
        stats: optional dict, filled with 'fallback_rows' (rows recomputed in full because of ties) and 'nnz_v'.
    Returns:
        (q, g) float32 re-ranked distances.
    Raises:
        ValueError: negative sizes, or k1/k2 < 1.
    """
    q, g = int(num_query), int(num_gallery)
    if q < 0 or g < 0:
        raise ValueError(f"num_query and num_gallery must be >= 0, got {q}, {g}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    n = q + g
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    k = min(max(k1 + 1, k2), n)
    out = np.empty((q, g), dtype=np.float32)  # D0[:q, q:] first, the re-ranked distances in the end
    top, _, cand, cand_d0, col_max, fallback = neighbour_lists(block_fn, n, k, keep, row_chunk, col_chunk, out)
    if np.any(col_max <= 0):
        warnings.warn("rerank_sparse: some column maxima are <= 0; dividing by them flips or breaks the ranking "
                      "(feed positive distances).", RuntimeWarning, stacklevel=2)
    v = _encode(block_fn, top, cand, cand_d0, col_max, k1, row_chunk, col_chunk)
    del cand, cand_d0
    if k2 != 1:
        v = _query_expand(v, top, k2)
    if stats is not None:
        stats.update(fallback_rows=int(fallback), nnz_v=int(v.nnz))
    vg = v[q:].tocsc()
    vg.sort_indices()
    one, two = np.float16(1), np.float16(2)
    w_j, w_d = np.float16(1 - lambda_value), np.float32(lambda_value)
    for s in range(0, q, query_chunk):
        rows = np.arange(s, min(s + query_chunk, q))
        vq = v[rows]
        vq.sort_indices()
        sim = _jaccard_sim_rows(vq, vg)
        jac = one - sim / (two - sim)
        out[rows] = jac * w_j + out[rows] * w_d
    return out


def stitched_block_fn(qg: np.ndarray, self_block: BlockFn) -> BlockFn:
    """block_fn of [[qq, qg], [qg^T, gg]] from the (q, g) distances at hand and a callback for the self blocks.

    The layout of ``qaconv.rerank.full_distance_matrix``: the query-gallery block is ``qg``, the gallery-query
    block its transpose, and only the query-query / gallery-gallery entries are new work.

    Args:
        qg: (q, g) float32 query-vs-gallery distances.
        self_block: ``self_block(rows, cols)`` -> distances of items of one side ([0, q) or [q, q+g), in the
            concatenated index space; it is only called with rows and cols on the same side).
    Returns:
        ``block_fn(rows, cols)`` -> (len(rows), len(cols)) float32 numpy array.
    """
    qg = np.asarray(qg, dtype=np.float32)
    q = qg.shape[0]

    def block_fn(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows, cols = np.asarray(rows), np.asarray(cols)
        out = np.empty((len(rows), len(cols)), dtype=np.float32)
        rq, cq = rows < q, cols < q
        if rq.any() and (~cq).any():
            out[np.ix_(rq, ~cq)] = qg[np.ix_(rows[rq], cols[~cq] - q)]
        if (~rq).any() and cq.any():
            out[np.ix_(~rq, cq)] = qg[np.ix_(cols[cq], rows[~rq] - q)].T
        for rm, cm in ((rq, cq), (~rq, ~cq)):
            if rm.any() and cm.any():
                out[np.ix_(rm, cm)] = _block(self_block, rows[rm], cols[cm])
        return out

    return block_fn


def rerank_features(qf, gf, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, metric: str = "euclidean",
                    device: Optional[Union[str, torch.device]] = None, **kwargs) -> np.ndarray:
    """:func:`rerank_sparse` on feature distances (``common.eval.distance.compute_distmat`` blocks).

    Args:
        qf: (q, D) query features. gf: (g, D) gallery features (tensors or arrays).
        k1, k2, lambda_value: see :func:`rerank_sparse`.
        metric: 'euclidean' (squared, clamped at 0) or 'cosine', as the evaluator.
        device: where blocks are computed (default cpu).
        **kwargs: passed to :func:`rerank_sparse` (keep, row_chunk, col_chunk, query_chunk, stats).
    Returns:
        (q, g) float32 re-ranked distances.
    """
    qt = qf if isinstance(qf, torch.Tensor) else torch.as_tensor(np.asarray(qf))
    gt = gf if isinstance(gf, torch.Tensor) else torch.as_tensor(np.asarray(gf))
    feats = torch.cat([qt.reshape(len(qt), -1).float(), gt.reshape(len(gt), -1).float()], 0)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    feats = feats.to(dev)

    def take(idx: np.ndarray) -> torch.Tensor:
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
            return feats[int(idx[0]):int(idx[-1]) + 1]  # a contiguous range: a view, no copy
        return feats[torch.as_tensor(idx, device=dev)]

    def block_fn(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return compute_distmat(take(rows), take(cols), metric=metric, chunk_size=len(rows) or 1, device=dev)

    return rerank_sparse(block_fn, len(qt), len(gt), k1=k1, k2=k2, lambda_value=lambda_value, **kwargs)
