# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython ranking protocols (Market-1501 and CUHK03 classic), bit-identical to the NumPy versions.

The NumPy backend ranks every gallery with a stable argsort of the float32 distances. This backend gets the
same figures without sorting the gallery: the position of a true match in the stable ranking is the number of
kept entries that precede it in the order "(float32 distance, gallery index) ascending, NaN last", so one
O(num_gallery) pass per query (plus a sort of the few true matches) is enough. Per-query AP / INP / CMC are
then computed with the same float64 operations, in the same order, as ``common.eval.rank``.
Distances are cast to float32 a chunk of query rows at a time (no copy when already float32, C-contiguous).
"""
import numpy as np

from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, qsort

# Query rows are cast to float32 in chunks of about this many (row, gallery) elements.
CHUNK_ELEMENTS = 1 << 24

ctypedef struct Key:
    float d
    int64_t g


cdef inline bint _before(float da, int64_t ga, float db, int64_t gb) noexcept nogil:
    """True if (da, ga) comes first in the stable ascending ranking (NaN distances last, ties by index)."""
    if da < db:
        return True
    if da > db:
        return False
    if da == db:
        return ga < gb
    if da != da and db != db:
        return ga < gb
    return db != db  # exactly one NaN: the finite one comes first


cdef int _cmp_keys(const void* a, const void* b) noexcept nogil:
    cdef const Key* ka = <const Key*>a
    cdef const Key* kb = <const Key*>b
    if _before(ka.d, ka.g, kb.d, kb.g):
        return -1
    return 1 if ka.g != kb.g else 0


def rows_per_chunk(num_gallery, chunk_rows=None):
    """Number of query rows cast to float32 at once.

    Args:
        num_gallery (int): gallery size.
        chunk_rows (int, optional): explicit override (>= 1).

    Returns:
        int: rows per chunk.
    """
    if chunk_rows is not None:
        return max(1, int(chunk_rows))
    return max(1, CHUNK_ELEMENTS // max(1, int(num_gallery)))


def _prepare(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    arrays = [np.ascontiguousarray(a, dtype=np.int64).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)]
    if arrays[0].shape[0] != num_q or arrays[2].shape[0] != num_q:
        raise ValueError("q_pids / q_camids must have num_query entries")
    if arrays[1].shape[0] != num_g or arrays[3].shape[0] != num_g:
        raise ValueError("g_pids / g_camids must have num_gallery entries")
    if max_rank < 1:
        raise ValueError("max_rank must be >= 1")
    return distmat, arrays


cdef int64_t _match_positions(const float[::1] row, int64_t qp, int64_t qc, const int64_t[::1] g_pids,
                              const int64_t[::1] g_camids, Key* keys, int64_t* before) noexcept nogil:
    """Sorts the kept true matches of one query into ``keys`` and writes their 0-based positions in the
    filtered ranked list to ``before``. Returns the number of kept true matches."""
    cdef int64_t num_g = row.shape[0], g, n = 0, lo, hi, mid, t
    cdef float d
    for g in range(num_g):
        if g_pids[g] == qp and g_camids[g] != qc:
            keys[n].d = row[g]
            keys[n].g = g
            n += 1
    if n == 0:
        return 0
    qsort(keys, n, sizeof(Key), _cmp_keys)
    for t in range(n + 1):
        before[t] = 0
    for g in range(num_g):
        if g_pids[g] == qp:
            continue  # a true match, or removed (same identity and camera)
        d = row[g]
        if not _before(d, g, keys[n - 1].d, keys[n - 1].g):
            continue  # ranked after every true match
        lo = 0
        hi = n - 1  # first match that g precedes
        while lo < hi:
            mid = (lo + hi) // 2
            if _before(d, g, keys[mid].d, keys[mid].g):
                hi = mid
            else:
                lo = mid + 1
        before[lo] += 1
    for t in range(1, n):
        before[t] += before[t - 1]
    for t in range(n):
        before[t] += t  # non-matches before it + earlier matches = its position
    return n


cdef inline double _ap(const int64_t* pos, int64_t n) noexcept nogil:
    cdef double ap = 0.0
    cdef int64_t t
    for t in range(n):
        ap += <double>(t + 1) / <double>(pos[t] + 1)
    return ap / <double>n


cdef int64_t _market_rows(const float[:, ::1] dist, int64_t q0, const int64_t[::1] q_pids,
                          const int64_t[::1] g_pids, const int64_t[::1] q_camids, const int64_t[::1] g_camids,
                          Key* keys, int64_t* pos, double[:, ::1] all_cmc, double[::1] all_ap,
                          double[::1] all_inp, int64_t num_valid) noexcept nogil:
    cdef int64_t i, k, n, max_rank = all_cmc.shape[1]
    for i in range(dist.shape[0]):
        n = _match_positions(dist[i], q_pids[q0 + i], q_camids[q0 + i], g_pids, g_camids, keys, pos)
        if n == 0:
            continue
        for k in range(max_rank):
            all_cmc[num_valid, k] = 1.0 if k >= pos[0] else 0.0
        all_ap[num_valid] = _ap(pos, n)
        all_inp[num_valid] = <double>n / <double>(pos[n - 1] + 1)
        num_valid += 1
    return num_valid


cdef int64_t _cuhk03_rows(const float[:, ::1] dist, int64_t q0, const int64_t[::1] q_pids,
                          const int64_t[::1] g_pids, const int64_t[::1] q_camids, const int64_t[::1] g_camids,
                          const int64_t[:, ::1] priority, const int64_t[:, ::1] win_idx, Key* keys, int64_t* pos,
                          int64_t[::1] chosen, int64_t[::1] counts, double[:, ::1] all_cmc, double[::1] all_ap,
                          double[::1] all_inp, int64_t num_valid) noexcept nogil:
    cdef int64_t i, k, n, r, t, w, g, c, qp, max_rank = all_cmc.shape[1], num_repeats = priority.shape[0]
    cdef float dc
    for i in range(dist.shape[0]):
        qp = q_pids[q0 + i]
        n = _match_positions(dist[i], qp, q_camids[q0 + i], g_pids, g_camids, keys, pos)
        if n == 0:
            continue
        for r in range(num_repeats):  # sampled true match: the kept one of smallest priority
            chosen[r] = keys[0].g
            for t in range(1, n):
                if priority[r, keys[t].g] < priority[r, chosen[r]]:
                    chosen[r] = keys[t].g
        for k in range(max_rank):
            counts[k] = 0
        for r in range(num_repeats):  # its rank = sampled images of other identities ranked before it
            dc = dist[i, chosen[r]]
            c = 0
            for w in range(win_idx.shape[1]):
                g = win_idx[r, w]
                if g_pids[g] != qp and _before(dist[i, g], g, dc, chosen[r]):
                    c += 1
            for k in range(c, max_rank):
                counts[k] += 1
        for k in range(max_rank):
            all_cmc[num_valid, k] = <double>counts[k] / <double>num_repeats
        all_ap[num_valid] = _ap(pos, n)
        all_inp[num_valid] = <double>n / <double>(pos[n - 1] + 1)
        num_valid += 1
    return num_valid


def _float_rows(distmat, int64_t start, int64_t stop):
    return np.ascontiguousarray(distmat[start:stop], dtype=np.float32)


cpdef tuple eval_market1501_cy(object distmat, object q_pids, object g_pids, object q_camids, object g_camids,
                               int64_t max_rank, object chunk_rows=None):
    """Market-1501 protocol, per valid query (Cython).

    Args:
        distmat (array-like): (num_query, num_gallery) distances; compared as float32.
        q_pids (array-like): (num_query,) int identities. g_pids: (num_gallery,).
        q_camids (array-like): (num_query,) int cameras. g_camids: (num_gallery,).
        max_rank (int): CMC length.
        chunk_rows (int, optional): query rows cast to float32 at once.

    Returns:
        tuple: all_cmc (num_valid, max_rank) float64, all_AP (num_valid,) float64,
        all_INP (num_valid,) float64, num_valid (int).
    """
    distmat, (qp, gp, qc, gc) = _prepare(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    cdef int64_t num_q = distmat.shape[0], num_g = distmat.shape[1]
    all_cmc = np.zeros((num_q, max_rank), dtype=np.float64)
    all_ap = np.zeros(num_q, dtype=np.float64)
    all_inp = np.zeros(num_q, dtype=np.float64)
    pos_buf = np.empty(num_g + 1, dtype=np.int64)
    cdef int64_t[::1] pos = pos_buf
    cdef Key* keys = <Key*>malloc(max(num_g, 1) * sizeof(Key))
    if keys == NULL:
        raise MemoryError()
    cdef int64_t num_valid = 0, start, stop, rows = rows_per_chunk(num_g, chunk_rows)
    try:
        for start in range(0, num_q, rows):
            stop = min(start + rows, num_q)
            num_valid = _market_rows(_float_rows(distmat, start, stop), start, qp, gp, qc, gc, keys, &pos[0],
                                     all_cmc, all_ap, all_inp, num_valid)
    finally:
        free(keys)
    return all_cmc[:num_valid], all_ap[:num_valid], all_inp[:num_valid], int(num_valid)


cpdef tuple eval_cuhk03_cy(object distmat, object q_pids, object g_pids, object q_camids, object g_camids,
                           int64_t max_rank, object priority, object winner, object chunk_rows=None):
    """CUHK03 classic protocol (single gallery shot, repeated sampling), per valid query (Cython).

    Args:
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank, chunk_rows: as in ``eval_market1501_cy``.
        priority (array-like): (num_repeats, num_gallery) int64, a random permutation of the gallery per repeat;
            per repeat each identity is represented by its kept entry of smallest priority.
        winner (array-like): (num_repeats, num_gallery) uint8, 1 where an entry has the smallest priority of all
            entries of its identity; every repeat has one winner per identity.

    Returns:
        tuple: all_cmc (num_valid, max_rank) float64 (CMC averaged over repeats), all_AP, all_INP (num_valid,)
        float64 on the full filtered list, num_valid (int).
    """
    distmat, (qp, gp, qc, gc) = _prepare(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    cdef int64_t num_q = distmat.shape[0], num_g = distmat.shape[1]
    pr = np.ascontiguousarray(priority, dtype=np.int64)
    win = np.asarray(winner, dtype=np.uint8)
    if pr.ndim != 2 or pr.shape[1] != num_g or win.shape != pr.shape or pr.shape[0] < 1:
        raise ValueError("priority / winner must both be (num_repeats >= 1, num_gallery)")
    per_repeat = [np.flatnonzero(w) for w in win]
    if len({idx.size for idx in per_repeat}) != 1:
        raise ValueError("winner must mark the same number of entries (one per identity) in every repeat")
    win_idx = np.ascontiguousarray(np.stack(per_repeat), dtype=np.int64)
    chosen = np.empty(pr.shape[0], dtype=np.int64)
    counts = np.empty(max_rank, dtype=np.int64)
    all_cmc = np.zeros((num_q, max_rank), dtype=np.float64)
    all_ap = np.zeros(num_q, dtype=np.float64)
    all_inp = np.zeros(num_q, dtype=np.float64)
    pos_buf = np.empty(num_g + 1, dtype=np.int64)
    cdef int64_t[::1] pos = pos_buf
    cdef Key* keys = <Key*>malloc(max(num_g, 1) * sizeof(Key))
    if keys == NULL:
        raise MemoryError()
    cdef int64_t num_valid = 0, start, stop, rows = rows_per_chunk(num_g, chunk_rows)
    try:
        for start in range(0, num_q, rows):
            stop = min(start + rows, num_q)
            num_valid = _cuhk03_rows(_float_rows(distmat, start, stop), start, qp, gp, qc, gc, pr, win_idx, keys,
                                     &pos[0], chosen, counts, all_cmc, all_ap, all_inp, num_valid)
    finally:
        free(keys)
    return all_cmc[:num_valid], all_ap[:num_valid], all_inp[:num_valid], int(num_valid)
