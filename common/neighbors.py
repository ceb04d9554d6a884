"""Exact k-nearest neighbours without an N x N matrix, and the sparse k-reciprocal encoding / Jaccard distance.

Three separate steps, so that clustering (SpCL / cluster-contrast: ``k1=30, k2=6``, pure Jaccard) and test-time
k-reciprocal re-ranking (Zhong et al. 2017: ``k1=20, k2=6, lambda=0.3``, query/gallery rows) share one core:

1. :func:`knn` -- exact top-k by chunked distance blocks. The distance is a callback
   ``block(rows, cols) -> (len(rows), len(cols))`` tensor, so any distance works (squared Euclidean or cosine
   of features, see :func:`feature_distance`, or scores computed block by block). Peak memory is one
   ``row_chunk x col_chunk`` block plus the running ``row_chunk x k`` lists; ties are broken by the smaller
   index (the order of a stable argsort of the full row).
2. :func:`kreciprocal_encoding` -- the sparse matrix ``V`` (CSR, O(N k) entries): k-reciprocal sets R(i), their
   expansion by the half-size sets R(c, round(k1/2)) of members c that overlap R(i) by more than 2/3, weights
   ``softmax(-d(i, j))`` over the expanded set; then :func:`query_expansion` (mean of the V rows of the first
   k2 neighbours).
3. :func:`jaccard_distance` -- ``d(i, j) = 1 - sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk)`` for the pairs that
   share a non-zero column (all other pairs are at distance 1 and are not stored), as a sparse CSR matrix whose
   stored entries include the diagonal. DBSCAN with ``metric='precomputed'`` accepts it directly and, for any
   ``eps < 1``, finds exactly the neighbourhoods of the dense matrix.

Neighbour lists follow the conventions of the dense code: ``initial_rank[i]`` lists i's neighbours nearest first
(i itself first when distances to self are smallest), and the k-reciprocal test on ``initial_rank[:, :k1 + 1]``
(SpCL's clustering code searches only k1 neighbours, so that slice sees k1 columns; re-ranking searches k1 + 1).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

BlockFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PairFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------------- distances
def feature_distance(feats: Union[torch.Tensor, np.ndarray], metric: str = "euclidean",
                     device: Optional[Union[str, torch.device]] = None) -> Tuple[BlockFn, PairFn]:
    """Block and pair distance callbacks over one feature matrix.

    Args:
        feats: (N, D) features.
        metric: ``'euclidean'`` (squared: |x|^2 + |y|^2 - 2 x.y, clamped at 0; on unit-norm features this is
            SpCL's 2 - 2 cos) or ``'cosine'`` (1 - cos).
        device: where the blocks are computed (default: cuda when available, else cpu).
    Returns:
        ``(block, pair)``: ``block(rows, cols)`` -> (len(rows), len(cols)) float32 tensor on ``device``;
        ``pair(a, b)`` -> (P,) float32 numpy distances of the pairs (a[p], b[p]).
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; choose 'euclidean' or 'cosine'")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.as_tensor(np.asarray(feats) if not isinstance(feats, torch.Tensor) else feats).float()
    x = x.reshape(x.shape[0], -1).to(device)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    sq = (x * x).sum(1)

    def block(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        a, b = x[rows.to(x.device)], x[cols.to(x.device)]
        if metric == "cosine":
            return 1.0 - a @ b.t()
        return (sq[rows.to(x.device)][:, None] + sq[cols.to(x.device)][None, :] - 2.0 * (a @ b.t())).clamp_(min=0)

    def pair(ia: np.ndarray, ib: np.ndarray, chunk: int = 0) -> np.ndarray:
        chunk = chunk or max(256, (1 << 24) // max(x.shape[1], 1))      # ~64 MiB of gathered rows per step
        out = np.empty(len(ia), dtype=np.float32)
        for s in range(0, len(ia), chunk):
            ta = torch.as_tensor(np.asarray(ia[s:s + chunk]), dtype=torch.long, device=x.device)
            tb = torch.as_tensor(np.asarray(ib[s:s + chunk]), dtype=torch.long, device=x.device)
            dot = (x[ta] * x[tb]).sum(1)
            d = 1.0 - dot if metric == "cosine" else (sq[ta] + sq[tb] - 2.0 * dot).clamp_(min=0)
            out[s:s + chunk] = d.cpu().numpy()
        return out

    return block, pair


# ------------------------------------------------------------------------------------------------- k-NN
def knn(num_rows: int, num_cols: int, k: int, block: BlockFn, row_chunk: int = 1024, col_chunk: int = 8192,
        device: Optional[Union[str, torch.device]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact k nearest columns of every row, one distance block at a time.

    Args:
        num_rows: number of query items (rows).
        num_cols: number of reference items (columns).
        k: neighbours kept per row (capped at ``num_cols``).
        block: ``block(rows, cols)`` -> (len(rows), len(cols)) distances; rows/cols are int64 index tensors.
        row_chunk: rows per block.
        col_chunk: columns per block.
        device: where index tensors are created (default: cuda when available).
    Returns:
        ``(indices, distances)``: (num_rows, k) int64 and float32 numpy arrays, nearest first; equal distances
        are ordered by column index (as ``np.argsort(dist_row, kind='stable')``).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    k = min(int(k), int(num_cols))
    out_idx = np.empty((num_rows, k), dtype=np.int64)
    out_dist = np.empty((num_rows, k), dtype=np.float32)
    for r0 in range(0, num_rows, row_chunk):
        rows = torch.arange(r0, min(r0 + row_chunk, num_rows), device=device)
        best_d = torch.empty((len(rows), 0), device=device)
        best_i = torch.empty((len(rows), 0), dtype=torch.long, device=device)
        for c0 in range(0, num_cols, col_chunk):
            cols = torch.arange(c0, min(c0 + col_chunk, num_cols), device=device)
            d = block(rows, cols).float().to(device)
            # earlier columns come first in the concatenation, so a stable sort breaks ties by index
            cat_d = torch.cat([best_d, d], 1)
            cat_i = torch.cat([best_i, cols.unsqueeze(0).expand(len(rows), -1)], 1)
            order = torch.sort(cat_d, dim=1, stable=True).indices[:, :k]
            best_d, best_i = cat_d.gather(1, order), cat_i.gather(1, order)
        out_idx[r0:r0 + len(rows)] = best_i.cpu().numpy()
        out_dist[r0:r0 + len(rows)] = best_d.cpu().numpy()
    return out_idx, out_dist


def feature_knn(feats, k: int, metric: str = "euclidean", device=None, **chunks) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`knn` of every feature row against all rows (itself included), with :func:`feature_distance`."""
    block, _ = feature_distance(feats, metric, device)
    n = len(feats)
    return knn(n, n, k, block, device=device, **chunks)


# ------------------------------------------------------------------------------------------------- encoding
def _reciprocal_mask(initial_rank: np.ndarray, width: int, rows: np.ndarray) -> np.ndarray:
    """(len(rows), width) bool: is rows[r] among the first ``width`` neighbours of its j-th neighbour?"""
    fwd = initial_rank[rows, :width]                      # (R, w)
    back = initial_rank[fwd, :width]                      # (R, w, w)
    return (back == rows[:, None, None]).any(-1)


def kreciprocal_sets(initial_rank: np.ndarray, k1: int, row_chunk: int = 2048) -> sp.csr_matrix:
    """Membership of the expanded k-reciprocal sets R*(i) as a 0/1 CSR matrix (N x N).

    R(i) = {j in initial_rank[i, :k1+1] : i in initial_rank[j, :k1+1]}; with h = round(k1 / 2) (NumPy rounding),
    R(c, h) is the same on ``[:, :h+1]``; R*(i) = R(i) united with every R(c, h), c in R(i), for which
    |R(c, h) & R(i)| > 2/3 |R(c, h)|.

    Args:
        initial_rank: (N, K) int neighbour lists (nearest first).
        k1: the k of the k-reciprocal test.
        row_chunk: rows processed at once (memory ~ row_chunk x K^2 x h).
    Returns:
        (N, N) CSR with ones at (i, j), j in R*(i).
    """
    initial_rank = np.asarray(initial_rank, dtype=np.int64)
    n = initial_rank.shape[0]
    w = min(k1 + 1, initial_rank.shape[1])
    h = min(int(np.around(k1 / 2)) + 1, initial_rank.shape[1])
    all_rows = np.arange(n)
    half_mask = np.zeros((n, h), dtype=bool)
    for s in range(0, n, row_chunk):
        half_mask[s:s + row_chunk] = _reciprocal_mask(initial_rank, h, all_rows[s:s + row_chunk])
    half_nbr = initial_rank[:, :h]
    half_size = half_mask.sum(1)                                          # |R(c, h)|
    ri, rj = [], []
    for s in range(0, n, row_chunk):
        rows = all_rows[s:s + row_chunk]
        nbr = initial_rank[rows, :w]                                      # (R, w)
        mask = _reciprocal_mask(initial_rank, w, rows)                    # j in R(i)
        cand = half_nbr[nbr]                                              # (R, w, h): R(c, h) candidates of c
        cand_mask = half_mask[nbr]                                        # (R, w, h)
        in_r = ((cand[..., None] == nbr[:, None, None, :]) & mask[:, None, None, :]).any(-1)   # (R, w, h)
        overlap = (in_r & cand_mask).sum(-1)                              # |R(c, h) & R(i)|
        take = mask & (overlap > 2.0 / 3.0 * half_size[nbr])              # c in R(i) that expand
        add = cand_mask & take[..., None]
        rr = np.broadcast_to(rows[:, None], nbr.shape)
        ri += [rr[mask], np.broadcast_to(rows[:, None, None], cand.shape)[add]]
        rj += [nbr[mask], cand[add]]
    ri, rj = np.concatenate(ri), np.concatenate(rj)
    m = sp.csr_matrix((np.ones(len(ri), dtype=np.float32), (ri, rj)), shape=(n, n))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def kreciprocal_encoding(initial_rank: np.ndarray, pair: PairFn, k1: int, row_chunk: int = 2048) -> sp.csr_matrix:
    """The sparse k-reciprocal feature V: V[i, j] = exp(-d(i, j)) / sum_{j' in R*(i)} exp(-d(i, j')) on R*(i).

    Args:
        initial_rank: (N, K) neighbour lists.
        pair: ``pair(a, b)`` -> (P,) distances of index pairs (the same distance the lists were ranked by).
        k1: see :func:`kreciprocal_sets`.
        row_chunk: see :func:`kreciprocal_sets`.
    Returns:
        (N, N) float32 CSR, each row summing to 1.
    """
    m = kreciprocal_sets(initial_rank, k1, row_chunk)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    d = pair(rows, m.indices).astype(np.float64)
    # softmax(-d) per row; shifting by the row minimum changes nothing mathematically
    row_min = np.full(m.shape[0], np.inf)
    np.minimum.at(row_min, rows, d)
    e = np.exp(-(d - row_min[rows]))
    denom = np.bincount(rows, weights=e, minlength=m.shape[0])
    v = m.copy()
    v.data = (e / denom[rows]).astype(np.float32)
    return v


def query_expansion(v: sp.csr_matrix, initial_rank: np.ndarray, k2: int) -> sp.csr_matrix:
    """Local query expansion: row i becomes the mean of the V rows of initial_rank[i, :k2] (k2 = 1: unchanged)."""
    if k2 <= 1:
        return v
    n = v.shape[0]
    cols = np.asarray(initial_rank)[:, :k2]
    a = sp.csr_matrix((np.full(cols.size, 1.0 / cols.shape[1]), (np.repeat(np.arange(n), cols.shape[1]),
                                                                   cols.ravel())), shape=(n, v.shape[0]))
    out = (a @ v.astype(np.float64)).tocsr()
    out.sort_indices()
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------- Jaccard
def jaccard_distance(v: sp.csr_matrix, rows: Optional[Sequence[int]] = None, cols: Optional[Sequence[int]] = None,
                     row_chunk: int = 1024, max_dist: Optional[float] = None,
                     max_pairs: int = 1 << 22) -> sp.csr_matrix:
    """Sparse Jaccard distance between rows of V: 1 - sum(min) / sum(max), for pairs with an overlap.

    Args:
        v: (N, M) non-negative CSR (the k-reciprocal encoding, after query expansion).
        rows: row items of the result (default all N); e.g. the queries for re-ranking.
        cols: column items (default all N); e.g. the gallery.
        row_chunk: result rows per step (memory ~ the overlapping pairs of that many rows).
        max_pairs: also cut a step's rows so that it expands at most about this many (row, feature, column)
            triples (the peak working memory is ~50 bytes per triple; a single row may exceed it).
        max_dist: also drop stored pairs farther than this (diagonal pairs kept); DBSCAN with ``eps <= max_dist``
            finds the same neighbourhoods, with far fewer stored pairs.
    Returns:
        (len(rows), len(cols)) float32 CSR of distances; only pairs with sum(min) > 0 are stored (the others
        are at distance exactly 1), diagonal pairs (row item = column item) always; values clipped at 0.
    """
    v = sp.csr_matrix(v, dtype=np.float64)
    n = v.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    cols = np.arange(n) if cols is None else np.asarray(cols, dtype=np.int64)
    row_sum = np.asarray(v.sum(1)).ravel()
    vc = v[cols].tocsc()                                   # column item j' in 0..len(cols)-1, feature k
    col_of = np.full(n, -1, dtype=np.int64)
    col_of[cols] = np.arange(len(cols))                    # the column item of each row item, if any
    # per-row count of the triples it expands to, then steps of at most row_chunk rows / max_pairs triples
    col_cnt = np.diff(vc.indptr)
    per_row = np.add.reduceat(np.concatenate([col_cnt[v.indices], [0]]), v.indptr[:-1]) * (np.diff(v.indptr) > 0)
    per_row = per_row[rows]
    bounds, start, acc = [], 0, 0
    for i, c in enumerate(per_row.tolist()):
        if i > start and (i - start >= row_chunk or acc + c > max_pairs):
            bounds.append((start, i))
            start, acc = i, 0
        acc += c
    if len(rows):
        bounds.append((start, len(rows)))
    out = []
    for s, e in bounds:
        r = rows[s:e]
        vr = v[r]                                          # (R, M) CSR
        # every (row item, feature k) entry meets every column item with a non-zero in feature k
        ent_row = np.repeat(np.arange(len(r)), np.diff(vr.indptr))
        cnt = np.diff(vc.indptr)[vr.indices]
        tot = int(cnt.sum())
        first = np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
        pos = np.repeat(vc.indptr[vr.indices] - first, cnt) + np.arange(tot)
        pr, pc = np.repeat(ent_row, cnt), vc.indices[pos]
        pm = np.minimum(np.repeat(vr.data, cnt), vc.data[pos])
        self_r = np.nonzero(col_of[r] >= 0)[0]             # diagonal pairs: always stored
        pr = np.concatenate([pr, self_r])
        pc = np.concatenate([pc, col_of[r][self_r]])
        pm = np.concatenate([pm, np.zeros(len(self_r))])
        smin = sp.csr_matrix((pm, (pr, pc)), shape=(len(r), len(cols)))
        smin.sum_duplicates()
        rr = np.repeat(np.arange(len(r)), np.diff(smin.indptr))
        smax = row_sum[r][rr] + row_sum[cols][smin.indices] - smin.data
        with np.errstate(invalid="ignore", divide="ignore"):
            dist = np.where(smax > 0, 1.0 - smin.data / np.where(smax > 0, smax, 1.0), 1.0)
        smin.data = np.maximum(dist, 0.0)
        if max_dist is not None:
            diag = col_of[r][rr] == smin.indices
            smin.data[~(diag | (smin.data <= max_dist))] = np.nan
            keep = ~np.isnan(smin.data)
            smin = sp.csr_matrix((smin.data[keep], smin.indices[keep], np.concatenate(
                [[0], np.cumsum(np.bincount(rr[keep], minlength=len(r)))])), shape=smin.shape)
        out.append(smin)
    d = sp.vstack(out, format="csr") if out else sp.csr_matrix((0, len(cols)))
    d.sort_indices()
    return d.astype(np.float32)


def dense_jaccard(dist: sp.csr_matrix) -> np.ndarray:
    """A stored-entries-only sparse distance as a dense array with 1 where nothing is stored (for checks)."""
    out = np.ones(dist.shape, dtype=np.float32)
    coo = dist.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


def jaccard_from_features(feats, k1: int = 30, k2: int = 6, metric: str = "euclidean", device=None,
                          search_k: Optional[int] = None, max_dist: Optional[float] = None) -> sp.csr_matrix:
    """SpCL's clustering distance in O(N k) memory: k-NN (k1 neighbours, self included) -> V -> QE -> Jaccard.

    Args:
        feats: (N, D) features (unit-norm for SpCL's 2 - 2 cos).
        k1: neighbours searched and k of the k-reciprocal test; k2: query-expansion size.
        metric: see :func:`feature_distance`.
        search_k: neighbours searched (default k1, as SpCL's faiss search; re-ranking uses k1 + 1).
        max_dist: see :func:`jaccard_distance` (clustering passes DBSCAN's eps).
    Returns:
        (N, N) sparse Jaccard distances (see :func:`jaccard_distance`).
    """
    block, pair = feature_distance(feats, metric, device)
    n = len(feats)
    rank, _ = knn(n, n, search_k or k1, block, device=device)
    v = kreciprocal_encoding(rank, pair, k1)
    v = query_expansion(v, rank, k2)
    return jaccard_distance(v, max_dist=max_dist)
