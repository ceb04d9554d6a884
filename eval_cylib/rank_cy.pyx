# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython ranking protocols (Market-1501 and CUHK03 classic), bit-identical to the NumPy versions.

Both backends rank a query's gallery in the order of a stable ascending argsort of the float32 distances:
ties go to the lower gallery index, NaN comes last. Here each entry has one unsigned 64-bit key that sorts in
exactly that order (``_key``: the float32 bits mapped to an order-preserving integer, -0.0 read as +0.0 and
every NaN as the largest value, in the high 32 bits; the gallery index in the low 32 bits). All keys of a row
are distinct, so the position of a true match in the filtered ranking is a count of smaller keys and no sort
of the gallery is needed.

Per query: the true matches and the removed same-identity, same-camera entries come from the gallery grouped
by identity, and only the true matches' keys are sorted. One pass over the row then skips every entry ranked
after the last true match (one well-predicted compare; most entries for a good model) and counts the others
between consecutive matches. Counting does not search: a monotone affine map (``rank_bucket.h``, a loop the
compiler vectorises) sends each distance to one of 64 buckets per true match, a table built per query gives the
bin of every bucket that holds no match, and only entries in a bucket holding one take the exact (branch-free)
binary search on the keys. Weak rankings (almost the whole gallery before the last match, as with uniform
distances) so cost little more than good ones.
Same-identity entries are counted by that pass too and taken out afterwards. Rows whose first or last match
distance is not finite use the binary search for every entry. Per-query AP / INP / CMC use the same float64
operations, in the same order, as ``common.eval.rank``.
Distances are cast to float32 a chunk of query rows at a time (no copy when already float32, C-contiguous).
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy

# Query rows are cast to float32 in chunks of about this many (row, gallery) elements.
CHUNK_ELEMENTS = 1 << 24
# Most buckets of the per-query distance table (64 per true match).
cdef enum:
    MAX_BUCKETS = 1 << 16
    BLOCK = 1024  # row entries bucketed at once (a stack buffer)
cdef float INF32 = float("inf")


cdef inline uint64_t _key(float d, int64_t g) noexcept nogil:
    """Order key of gallery entry ``g`` at distance ``d``: ascending keys = the stable ranking, NaN last."""
    cdef float z = d + <float>0.0  # -0.0 + 0.0 = +0.0 (round to nearest): equal zeros tie, as in the sort
    cdef uint32_t u, k
    memcpy(&u, &z, 4)
    k = u ^ (<uint32_t>(-<int32_t>(u >> 31)) | <uint32_t>0x80000000u)  # negatives: all bits flipped
    k |= <uint32_t>(-<int32_t>((u & <uint32_t>0x7FFFFFFFu) > <uint32_t>0x7F800000u))  # any NaN: 0xFFFFFFFF
    return (<uint64_t>k << 32) | <uint64_t>g


cdef inline int64_t _num_below(const uint64_t* keys, int64_t n, uint64_t k) noexcept nogil:
    """Number of ``keys[0:n]`` (sorted, n >= 1) below ``k``; branch-free, ceil(log2 n) steps."""
    cdef const uint64_t* base = keys
    cdef int64_t half
    while n > 1:
        half = n >> 1
        base += half * (base[half] < k)
        n -= half
    return (base - keys) + (base[0] < k)


cdef int _cmp_u64(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0], y = (<const uint64_t*>b)[0]
    return (x > y) - (x < y)


cdef inline void _sort_keys(uint64_t* keys, int64_t n) noexcept nogil:
    cdef int64_t i, j
    cdef uint64_t v
    if n > 24:
        qsort(keys, n, sizeof(uint64_t), _cmp_u64)
        return
    for i in range(1, n):  # insertion sort: a query has few true matches
        v = keys[i]
        j = i - 1
        while j >= 0 and keys[j] > v:
            keys[j + 1] = keys[j]
            j -= 1
        keys[j + 1] = v


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
    """Checks shapes and groups the gallery by identity.

    Returns:
        distmat, [q_pids, g_pids, q_camids, g_camids] int64, by_pid (num_gallery,) int64 gallery indices sorted
        by identity (ascending index within one), q_lo / q_hi (num_query,) int64: query i's identity occupies
        ``by_pid[q_lo[i]:q_hi[i]]``.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    if num_g >= 1 << 32:
        raise ValueError(f"the gallery has {num_g} entries; at most 2**32 - 1 are supported")
    arrays = [np.ascontiguousarray(a, dtype=np.int64).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)]
    if arrays[0].shape[0] != num_q or arrays[2].shape[0] != num_q:
        raise ValueError("q_pids / q_camids must have num_query entries")
    if arrays[1].shape[0] != num_g or arrays[3].shape[0] != num_g:
        raise ValueError("g_pids / g_camids must have num_gallery entries")
    if max_rank < 1:
        raise ValueError("max_rank must be >= 1")
    by_pid = np.argsort(arrays[1], kind="stable").astype(np.int64)
    sorted_pids = arrays[1][by_pid]
    q_lo = np.searchsorted(sorted_pids, arrays[0], side="left").astype(np.int64)
    q_hi = np.searchsorted(sorted_pids, arrays[0], side="right").astype(np.int64)
    return distmat, arrays, by_pid, q_lo, q_hi


ctypedef struct Work:
    uint64_t* keys     # (num_gallery,) sorted keys of the current query's kept true matches
    uint64_t* removed  # (num_gallery,) keys of its removed entries (same identity and camera)
    int64_t* pos       # (num_gallery + 1,) bin counts, then positions
    int32_t* table     # (MAX_BUCKETS + 3,) bin of each distance bucket, -1 where a true match falls
    int64_t* hist      # (MAX_BUCKETS + 3,) entries per bucket


cdef inline void _bin_by_search(const float[::1] row, const uint64_t* keys, int64_t n,
                                int64_t* pos) noexcept nogil:
    """Generic pass (any values, NaN and inf included): bin every entry ranked before the last match."""
    cdef int64_t g
    cdef uint64_t k, last = keys[n - 1]
    for g in range(row.shape[0]):
        k = _key(row[g], g)
        if k < last:
            pos[_num_below(keys, n, k)] += 1


cdef extern from "rank_bucket.h" nogil:
    int32_t rank_bucket(float d, float lo, float scale, float hi, int32_t top)
    void rank_bucket_block(const float* d, int64_t n, float lo, float scale, float hi, int32_t top, int32_t* out)


cdef inline void _bin_by_table(const float[::1] row, const uint64_t* keys, int64_t n, Work* w,
                               int32_t num_buckets, float lo, float scale) noexcept nogil:
    """Same counts as ``_bin_by_search`` when the first and last match distances ``lo`` < ``hi`` and
    hi - lo are finite and ``scale`` = num_buckets / (hi - lo) is finite (so no entry below ``hi`` overflows).

    ``rank_bucket`` (rank_bucket.h) maps distances monotonically to buckets 0..top = num_buckets + 1, and
    everything after ``hi`` (NaN included) to top + 1, so bucket(d) < bucket(m) implies d < m and
    bucket(d) > bucket(m) implies d > m: all entries of a bucket that holds no true match lie between the same
    two matches, and ``table`` stores that bin. Buckets holding a match store -1 and send their entries to the
    exact binary search; with 64 buckets per match few entries take it. The buckets of a block of the row are
    computed first by a vectorised loop; entries after the last match are then skipped by one compare, and the
    others only counted per bucket (``hist``, added to their bin at the end), which keeps the pass free of the
    store / load conflicts of a histogram with a handful of bins.
    """
    cdef int64_t g0, i, m, t, c, num_g = row.shape[0], last_g = <int64_t>(keys[n - 1] & 0xFFFFFFFFu)
    cdef int32_t b, top = num_buckets + 1
    cdef float hi = row[last_g]
    cdef int32_t buf[BLOCK]
    cdef const float* p
    cdef int32_t* table = w.table
    cdef int64_t* hist = w.hist
    cdef int64_t* pos = w.pos
    for b in range(top + 2):
        table[b] = 0
        hist[b] = 0
    for t in range(n):
        table[rank_bucket(row[<int64_t>(keys[t] & 0xFFFFFFFFu)], lo, scale, hi, top)] = -1
    t = 0
    for b in range(top + 2):  # bin of an empty bucket = number of matches in the buckets below it (n after hi)
        if table[b] < 0:
            while t < n and rank_bucket(row[<int64_t>(keys[t] & 0xFFFFFFFFu)], lo, scale, hi, top) == b:
                t += 1
        else:
            table[b] = <int32_t>t
    g0 = 0
    while g0 < num_g:
        m = min(<int64_t>BLOCK, num_g - g0)
        p = &row[g0]
        rank_bucket_block(p, m, lo, scale, hi, top, buf)
        for i in range(m):
            b = buf[i]
            if b <= top:  # else ranked after the last match
                if table[b] < 0:
                    pos[_num_below(keys, n, _key(p[i], g0 + i))] += 1  # n if after the last match
                else:
                    hist[b] += 1
        g0 += m
    pos[n - 1] -= 1  # the last match itself (in its own bucket) fell in bin n - 1
    for b in range(top + 1):
        c = table[b]
        if c >= 0:
            pos[c] += hist[b]


cdef int64_t _match_positions(const float[::1] row, int64_t qc, const int64_t[::1] g_camids,
                              const int64_t* same, int64_t num_same, Work* w) noexcept nogil:
    """Sorts the kept true matches of one query into ``w.keys`` (their ranking keys) and writes their 0-based
    positions in the filtered ranked list to ``w.pos``.

    ``same[0:num_same]`` are the gallery entries of the query's identity: true matches unless in the query's
    camera (removed). Returns the number of kept true matches.
    """
    cdef int64_t g, j, n = 0, m = 0, t
    cdef int32_t num_buckets
    cdef uint64_t last
    cdef float lo, hi, scale
    cdef uint64_t* keys = w.keys
    cdef int64_t* pos = w.pos
    for j in range(num_same):
        g = same[j]
        if g_camids[g] != qc:
            keys[n] = _key(row[g], g)
            n += 1
        else:
            w.removed[m] = _key(row[g], g)
            m += 1
    if n == 0:
        return 0
    _sort_keys(keys, n)
    last = keys[n - 1]
    for t in range(n + 1):
        pos[t] = 0
    # pos[t] first counts every entry whose key lies between keys[t - 1] and keys[t] (keys[t - 1] included)
    lo = row[<int64_t>(keys[0] & 0xFFFFFFFFu)]
    hi = row[<int64_t>(last & 0xFFFFFFFFu)]
    num_buckets = <int32_t>min(max(64 * n, 64), MAX_BUCKETS)
    scale = <float>num_buckets / (hi - lo)
    if n > 1 and lo < hi and -INF32 < lo and hi - lo < INF32 and scale < INF32:
        _bin_by_table(row, keys, n, w, num_buckets, lo, scale)
    else:
        _bin_by_search(row, keys, n, pos)
    for t in range(n - 1):
        pos[t] -= 1  # match t itself fell in bin t (none of the keys below it equals it)
    for j in range(m):
        if w.removed[j] < last:
            pos[_num_below(keys, n, w.removed[j])] -= 1
    for t in range(1, n):
        pos[t] += pos[t - 1]  # kept non-matches before match t
    for t in range(n):
        pos[t] += t  # + earlier matches = its position
    return n


cdef inline double _ap(const int64_t* pos, int64_t n) noexcept nogil:
    cdef double ap = 0.0
    cdef int64_t t
    for t in range(n):
        ap += <double>(t + 1) / <double>(pos[t] + 1)
    return ap / <double>n


cdef int64_t _market_rows(const float[:, ::1] dist, int64_t q0, const int64_t[::1] q_camids,
                          const int64_t[::1] g_camids, const int64_t[::1] by_pid, const int64_t[::1] q_lo,
                          const int64_t[::1] q_hi, Work* w, double[:, ::1] all_cmc, double[::1] all_ap,
                          double[::1] all_inp, int64_t num_valid) noexcept nogil:
    cdef int64_t i, k, n, max_rank = all_cmc.shape[1]
    cdef int64_t* pos = w.pos
    for i in range(dist.shape[0]):
        n = _match_positions(dist[i], q_camids[q0 + i], g_camids, &by_pid[0] + q_lo[q0 + i],
                             q_hi[q0 + i] - q_lo[q0 + i], w)
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
                          const int64_t[::1] by_pid, const int64_t[::1] q_lo, const int64_t[::1] q_hi,
                          const int64_t[:, ::1] priority, const int64_t[:, ::1] win_idx, Work* w,
                          int64_t[::1] counts, double[:, ::1] all_cmc, double[::1] all_ap, double[::1] all_inp,
                          int64_t num_valid) noexcept nogil:
    cdef int64_t i, k, n, r, t, j, g, c, qp, chosen, max_rank = all_cmc.shape[1], num_repeats = priority.shape[0]
    cdef uint64_t kc
    cdef uint64_t* keys = w.keys
    cdef int64_t* pos = w.pos
    for i in range(dist.shape[0]):
        qp = q_pids[q0 + i]
        n = _match_positions(dist[i], q_camids[q0 + i], g_camids, &by_pid[0] + q_lo[q0 + i],
                             q_hi[q0 + i] - q_lo[q0 + i], w)
        if n == 0:
            continue
        for k in range(max_rank):
            counts[k] = 0
        for r in range(num_repeats):
            chosen = <int64_t>(keys[0] & 0xFFFFFFFFu)  # sampled true match: the kept one of smallest priority
            for t in range(1, n):
                g = <int64_t>(keys[t] & 0xFFFFFFFFu)
                if priority[r, g] < priority[r, chosen]:
                    chosen = g
            kc = _key(dist[i, chosen], chosen)
            c = 0  # its rank = sampled images of other identities ranked before it
            for j in range(win_idx.shape[1]):
                g = win_idx[r, j]
                c += (g_pids[g] != qp) & (_key(dist[i, g], g) < kc)
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


cdef class _Scratch:
    """Per-call buffers (see ``Work``), freed with the object."""
    cdef Work w

    def __cinit__(self, int64_t num_g):
        cdef size_t size = <size_t>max(num_g, 1)
        self.w.keys = <uint64_t*>malloc(size * sizeof(uint64_t))
        self.w.removed = <uint64_t*>malloc(size * sizeof(uint64_t))
        self.w.pos = <int64_t*>malloc((size + 1) * sizeof(int64_t))
        self.w.table = <int32_t*>malloc((MAX_BUCKETS + 3) * sizeof(int32_t))
        self.w.hist = <int64_t*>malloc((MAX_BUCKETS + 3) * sizeof(int64_t))
        if (self.w.keys == NULL or self.w.removed == NULL or self.w.pos == NULL or self.w.table == NULL
                or self.w.hist == NULL):
            raise MemoryError()

    def __dealloc__(self):
        free(self.w.keys)
        free(self.w.removed)
        free(self.w.pos)
        free(self.w.table)
        free(self.w.hist)


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
    distmat, (qp, gp, qc, gc), by_pid, q_lo, q_hi = _prepare(distmat, q_pids, g_pids, q_camids, g_camids,
                                                             max_rank)
    cdef int64_t num_q = distmat.shape[0], num_g = distmat.shape[1]
    all_cmc = np.zeros((num_q, max_rank), dtype=np.float64)
    all_ap = np.zeros(num_q, dtype=np.float64)
    all_inp = np.zeros(num_q, dtype=np.float64)
    cdef _Scratch s = _Scratch(num_g)
    cdef int64_t num_valid = 0, start, stop, rows = rows_per_chunk(num_g, chunk_rows)
    for start in range(0, num_q, rows):
        stop = min(start + rows, num_q)
        num_valid = _market_rows(_float_rows(distmat, start, stop), start, qc, gc, by_pid, q_lo, q_hi, &s.w,
                                 all_cmc, all_ap, all_inp, num_valid)
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
    distmat, (qp, gp, qc, gc), by_pid, q_lo, q_hi = _prepare(distmat, q_pids, g_pids, q_camids, g_camids,
                                                             max_rank)
    cdef int64_t num_q = distmat.shape[0], num_g = distmat.shape[1]
    pr = np.ascontiguousarray(priority, dtype=np.int64)
    win = np.asarray(winner, dtype=np.uint8)
    if pr.ndim != 2 or pr.shape[1] != num_g or win.shape != pr.shape or pr.shape[0] < 1:
        raise ValueError("priority / winner must both be (num_repeats >= 1, num_gallery)")
    per_repeat = [np.flatnonzero(w) for w in win]
    if len({idx.size for idx in per_repeat}) != 1:
        raise ValueError("winner must mark the same number of entries (one per identity) in every repeat")
    win_idx = np.ascontiguousarray(np.stack(per_repeat), dtype=np.int64)
    counts = np.empty(max_rank, dtype=np.int64)
    all_cmc = np.zeros((num_q, max_rank), dtype=np.float64)
    all_ap = np.zeros(num_q, dtype=np.float64)
    all_inp = np.zeros(num_q, dtype=np.float64)
    cdef _Scratch s = _Scratch(num_g)
    cdef int64_t num_valid = 0, start, stop, rows = rows_per_chunk(num_g, chunk_rows)
    for start in range(0, num_q, rows):
        stop = min(start + rows, num_q)
        num_valid = _cuhk03_rows(_float_rows(distmat, start, stop), start, qp, gp, qc, gc, by_pid, q_lo, q_hi, pr,
                                 win_idx, &s.w, counts, all_cmc, all_ap, all_inp, num_valid)
    return all_cmc[:num_valid], all_ap[:num_valid], all_inp[:num_valid], int(num_valid)
