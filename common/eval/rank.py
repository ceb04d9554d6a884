"""Shared ranking evaluator: CMC, mAP and mINP under the Market-1501 and CUHK03 (classic) protocols.

Semantics follow torchreid's ``eval_market1501`` / ``eval_cuhk03``, with mINP as in fast-reid / TransReID.
Both backends rank each query's gallery in the order of a *stable* ascending argsort of the distances cast to
float32 (ties go to the lower gallery index, NaN last) and give bit-identical figures, but neither sorts the
gallery: a true match's position in that ranking is the number of kept gallery entries ordered before it.

The NumPy backend (this module) works on chunks of query rows. The true matches of each query come from the
gallery grouped by identity; one vectorised compare per chunk keeps the entries that lie at or below each
query's last true match (few for a good model, most of the gallery for a weak one), and only those are sorted
(``np.sort`` of float32 values, without indices) and searched for each true match; ties with a match are
resolved by gallery index afterwards. The Cython backend (``eval_cylib.rank_cy``, built by
``make eval_cylib``) counts in one pass over the row. Per-query values use the same float64 operations in the
same order. ``ranked_chunks`` (the full stable argsort) is kept as the reference ranking.
"""
from __future__ import annotations

import warnings
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from common.eval.distance import check_finite_distances

try:
    from eval_cylib.rank_cy import eval_cuhk03_cy, eval_market1501_cy
    IS_CYTHON_AVAILABLE = True
except ImportError:
    eval_cuhk03_cy = eval_market1501_cy = None
    IS_CYTHON_AVAILABLE = False

_CYTHON_WARNED = False
CHUNK_ELEMENTS = 1 << 24  # (query row, gallery) elements processed at once (ranked_chunks: 128 MiB of int64)
RANKS = (1, 5, 10, 20)


def _warn_no_cython() -> None:
    global _CYTHON_WARNED
    if not _CYTHON_WARNED:
        _CYTHON_WARNED = True
        warnings.warn("The Cython evaluator (eval_cylib.rank_cy) is not built; falling back to the slower NumPy "
                      "evaluator (same figures). Build it with `make eval_cylib`.", RuntimeWarning, stacklevel=3)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check(distmat, q_pids, g_pids, q_camids, g_camids):
    distmat = _to_numpy(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    ids = [np.ascontiguousarray(_to_numpy(a), dtype=np.int64).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)]
    for arr, n, name in zip(ids, (num_q, num_g, num_q, num_g), ("q_pids", "g_pids", "q_camids", "g_camids")):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries, distmat {distmat.shape} needs {n}")
    return distmat, ids


def ranked_chunks(distmat: np.ndarray, chunk_rows: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
    """Stable ascending ranking of the gallery, a chunk of query rows at a time.

    Args:
        distmat (np.ndarray): (num_query, num_gallery) distances, compared as float32.
        chunk_rows (int, optional): rows per chunk; default keeps a chunk near ``CHUNK_ELEMENTS`` elements.

    Yields:
        (start, order): first query row of the chunk and its (rows, num_gallery) int64 gallery indices.
    """
    num_q, num_g = distmat.shape
    rows = max(1, int(chunk_rows)) if chunk_rows is not None else max(1, CHUNK_ELEMENTS // max(1, num_g))
    for start in range(0, num_q, rows):
        block = np.asarray(distmat[start:start + rows], dtype=np.float32)
        yield start, np.argsort(block, axis=1, kind="stable").astype(np.int64, copy=False)


def single_query_metrics(raw_matches: np.ndarray, max_rank: int) -> Optional[Tuple[np.ndarray, float, float]]:
    """CMC, AP and INP of one query from its filtered ranked list (the building block of every protocol).

    Args:
        raw_matches (np.ndarray): (num_kept,) bool, True where the ranked, filtered gallery entry is a true match.
        max_rank (int): CMC length; a list shorter than ``max_rank`` is padded with its last value (1).

    Returns:
        ``None`` if there is no true match, else (cmc (max_rank,) float64 of 0/1, AP, INP) where
        AP = mean over true matches of precision at their positions and INP = num_matches / (1-based position
        of the last match).
    """
    pos = np.flatnonzero(raw_matches)
    if pos.size == 0:
        return None
    n = pos.size
    cmc = (np.arange(max_rank) >= pos[0]).astype(np.float64)
    precision = np.arange(1, n + 1, dtype=np.float64) / (pos + 1)
    ap = np.cumsum(precision)[-1] / n  # sequential sum: same order of float additions as the Cython loop
    return cmc, float(ap), float(n / (pos[-1] + 1))


def order_keys(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Unsigned 64-bit keys whose ascending order is the stable ranking of float32 ``values``.

    High 32 bits: the float32 bits mapped to an order-preserving integer (-0.0 as +0.0, every NaN as the largest
    value); low 32 bits: the gallery ``index``, which breaks ties as a stable sort does.

    Args:
        values (np.ndarray): (...,) float32 distances.
        index (np.ndarray): (...,) gallery indices (< 2**32), broadcastable to ``values``.

    Returns:
        np.ndarray: (...,) uint64 keys.
    """
    u = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = +0.0
    k = np.where(u >> np.uint32(31), ~u, u | np.uint32(0x80000000))
    k[(u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)] = np.uint32(0xFFFFFFFF)  # NaN
    return (k.astype(np.uint64) << np.uint64(32)) | np.asarray(index, dtype=np.uint64)


def _by_identity(g_pids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Gallery indices grouped by identity (ascending within one) and the identity of each."""
    by_pid = np.argsort(g_pids, kind="stable")
    return by_pid, g_pids[by_pid]


def _float_blocks(distmat: np.ndarray, chunk_rows: Optional[int]) -> Iterator[Tuple[int, np.ndarray]]:
    num_q, num_g = distmat.shape
    rows = max(1, int(chunk_rows)) if chunk_rows is not None else max(1, CHUNK_ELEMENTS // max(1, num_g))
    for start in range(0, num_q, rows):
        yield start, np.ascontiguousarray(distmat[start:start + rows], dtype=np.float32)


def match_positions(block: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray,
                    by_pid: np.ndarray, sorted_pids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the kept true matches in each query's filtered ranking, without sorting the gallery.

    With the stable ranking order "(float32 distance, gallery index) ascending, NaN last", the 0-based position
    of true match t of a query in its filtered list (same identity and camera removed) is
    (entries of the row ranked before it) - (same-identity entries ranked before it) + (matches before it).
    The first term only involves entries at or below the query's last match: they are selected with one
    compare per entry, and only they are sorted, as bare float32 values (the whole row when they are most of
    it), then searched for each match.

    Args:
        block (np.ndarray): (rows, num_gallery) float32 distances.
        q_pids, q_camids (np.ndarray): (rows,) int64 identities and cameras of the queries.
        g_camids (np.ndarray): (num_gallery,) int64 cameras.
        by_pid, sorted_pids (np.ndarray): (num_gallery,) from ``_by_identity(g_pids)``.

    Returns:
        rows, cols, pos (np.ndarray): (num_matches,) int64: query row (ascending), gallery index and filtered
        position of every kept true match, each query's matches in ranking order.
    """
    num_rows, num_g = block.shape
    lo = np.searchsorted(sorted_pids, q_pids, side="left")
    cnt = np.searchsorted(sorted_pids, q_pids, side="right") - lo
    row_start = np.cumsum(cnt) - cnt
    rows = np.repeat(np.arange(num_rows), cnt)
    cols = by_pid[np.arange(rows.size) - np.repeat(row_start - lo, cnt)]
    vals = block[rows, cols]
    order = np.lexsort((cols, vals, rows))  # each query's same-identity entries in ranking order
    rows, cols, vals = rows[order], cols[order], vals[order]
    is_match = g_camids[cols] != q_camids[rows]
    same_before = np.arange(rows.size) - row_start[rows]
    seen = np.cumsum(is_match) - is_match
    match_before = seen - seen[row_start[rows]] if rows.size else seen
    keep = np.flatnonzero(is_match)
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    pos = match_before[keep] - same_before[keep]
    num = np.bincount(rows, minlength=num_rows)
    first = np.cumsum(num) - num
    valid = np.flatnonzero(num)
    last_val = np.full(num_rows, np.nan, dtype=np.float32)  # rows without a match: select nothing
    last_val[valid] = vals[first[valid] + num[valid] - 1]
    last_val[np.isnan(last_val) & (num > 0)] = np.inf  # a NaN last match: every non-NaN entry precedes it
    selected = block <= last_val[:, None]
    num_selected = np.count_nonzero(selected, axis=1)
    for r in valid:
        seg = slice(first[r], first[r] + num[r])
        # weak ranking (most of the row selected): sorting the whole row is cheaper than extracting first; the
        # extra entries rank after the last match and change no count below
        ranked = np.sort(block[r] if 2 * num_selected[r] > num_g else block[r][selected[r]])
        v = vals[seg]
        below = np.searchsorted(ranked, v, side="left")  # a NaN match: all non-NaN entries
        tied = np.flatnonzero(np.searchsorted(ranked, v, side="right") - below > 1)
        for t in tied:  # equal distances: entries of lower gallery index come first
            below[t] += np.count_nonzero(block[r, :cols[seg][t]] == v[t])
        for t in np.flatnonzero(np.isnan(v)):
            below[t] += np.count_nonzero(np.isnan(block[r, :cols[seg][t]]))
        pos[seg] += below
    return rows, cols, pos


def _per_query_metrics(rows: np.ndarray, pos: np.ndarray, num_rows: int, max_rank: int
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CMC, AP and INP of every query with a true match, from ``match_positions`` output.

    Same float64 operations as :func:`single_query_metrics`: AP sums precision t / pos_t sequentially (a
    cumulative sum along each zero-padded row) and divides by the number of matches.

    Returns:
        valid (num_valid,) query rows, cmc (num_valid, max_rank), ap (num_valid,), inp (num_valid,).
    """
    num = np.bincount(rows, minlength=num_rows)
    valid = np.flatnonzero(num)
    first = (np.cumsum(num) - num)[valid]
    n = num[valid]
    rank_in_row = np.arange(rows.size) - np.repeat(first, n)
    precision = np.zeros((valid.size, int(n.max()) if n.size else 0))
    precision[np.repeat(np.arange(valid.size), n), rank_in_row] = (rank_in_row + 1.0) / (pos + 1)
    ap = np.cumsum(precision, axis=1)[np.arange(valid.size), n - 1] / n if n.size else np.zeros(0)
    inp = n / (pos[first + n - 1] + 1)
    cmc = (np.arange(max_rank)[None, :] >= pos[first][:, None]).astype(np.float64)
    return valid, cmc, ap, inp


def eval_market1501_numpy(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int,
                          chunk_rows: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Market-1501 protocol per valid query (NumPy).

    Gallery entries with the query's identity *and* camera are removed; a query with no remaining true match
    is skipped.

    Args:
        distmat (np.ndarray): (num_query, num_gallery) distances.
        q_pids, q_camids (np.ndarray): (num_query,) int. g_pids, g_camids (np.ndarray): (num_gallery,) int.
        max_rank (int): CMC length.
        chunk_rows (int, optional): query rows processed at once.

    Returns:
        all_cmc (num_valid, max_rank) float64, all_AP (num_valid,), all_INP (num_valid,), num_valid (int).
    """
    distmat, (q_pids, g_pids, q_camids, g_camids) = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    by_pid, sorted_pids = _by_identity(g_pids)
    cmcs, aps, inps = [], [], []
    for start, block in _float_blocks(distmat, chunk_rows):
        stop = start + block.shape[0]
        rows, _, pos = match_positions(block, q_pids[start:stop], q_camids[start:stop], g_camids, by_pid,
                                       sorted_pids)
        _, cmc, ap, inp = _per_query_metrics(rows, pos, block.shape[0], max_rank)
        cmcs.append(cmc)
        aps.append(ap)
        inps.append(inp)
    return _concat(cmcs, aps, inps, max_rank)


def _concat(cmcs, aps, inps, max_rank):
    all_ap = np.concatenate(aps) if aps else np.zeros(0)
    all_cmc = np.concatenate(cmcs) if cmcs else np.zeros((0, max_rank))
    return all_cmc, all_ap, np.concatenate(inps) if inps else np.zeros(0), int(all_ap.size)


def cuhk03_draws(g_pids, num_repeats: int = 10, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Random draws of the CUHK03 single-gallery-shot sampling, shared by both backends.

    Per repeat, every gallery entry gets a random priority (a permutation of the gallery); each identity is
    represented by its kept entry of smallest priority, which is a uniform draw among that identity's kept
    entries, as torchreid's ``np.random.choice``. The draws are made once for all queries.

    Args:
        g_pids (np.ndarray): (num_gallery,) int identities.
        num_repeats (int): number of sampling repeats.
        seed (int): seed of ``np.random.default_rng``.

    Returns:
        priority (num_repeats, num_gallery) int64 and winner (num_repeats, num_gallery) uint8, 1 where the
        entry has the smallest priority among all entries of its identity.
    """
    g_pids = np.asarray(g_pids, dtype=np.int64).reshape(-1)
    num_g = g_pids.shape[0]
    rng = np.random.default_rng(seed)
    priority = np.empty((num_repeats, num_g), dtype=np.int64)
    winner = np.zeros((num_repeats, num_g), dtype=np.uint8)
    for r in range(num_repeats):
        priority[r] = rng.permutation(num_g)
        order = np.lexsort((priority[r], g_pids))  # by identity, then priority
        first = np.ones(num_g, dtype=bool)
        first[1:] = g_pids[order[1:]] != g_pids[order[:-1]]
        winner[r, order[first]] = 1
    return priority, winner


def eval_cuhk03_numpy(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int, priority: np.ndarray,
                      winner: np.ndarray, chunk_rows: Optional[int] = None
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """CUHK03 classic protocol per valid query (NumPy): CMC averaged over single-gallery-shot samplings.

    Args:
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank, chunk_rows: as in :func:`eval_market1501_numpy`.
        priority, winner (np.ndarray): (num_repeats, num_gallery) draws from :func:`cuhk03_draws`.

    Returns:
        all_cmc (num_valid, max_rank) float64, all_AP (num_valid,), all_INP (num_valid,) on the full filtered
        list, num_valid (int).
    """
    distmat, (q_pids, g_pids, q_camids, g_camids) = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    priority, winner = np.asarray(priority, dtype=np.int64), np.asarray(winner, dtype=bool)
    num_repeats = priority.shape[0]
    win_idx = np.stack([np.flatnonzero(w) for w in winner])  # (num_repeats, num_ids) sampled entries
    win_pids = g_pids[win_idx]
    by_pid, sorted_pids = _by_identity(g_pids)
    ranks = np.arange(max_rank)
    cmcs, aps, inps = [], [], []
    for start, block in _float_blocks(distmat, chunk_rows):
        stop = start + block.shape[0]
        rows, cols, pos = match_positions(block, q_pids[start:stop], q_camids[start:stop], g_camids, by_pid,
                                          sorted_pids)
        valid, _, ap, inp = _per_query_metrics(rows, pos, block.shape[0], max_rank)
        first = np.searchsorted(rows, valid)
        last = np.searchsorted(rows, valid, side="right")
        cmc = np.empty((valid.size, max_rank))
        for i, r in enumerate(valid):
            matches = cols[first[i]:last[i]]
            chosen = matches[np.argmin(priority[:, matches], axis=1)]  # (num_repeats,) sampled true match
            chosen_key = order_keys(block[r, chosen], chosen)
            before = (order_keys(block[r, win_idx], win_idx) < chosen_key[:, None]) & (win_pids != q_pids[start + r])
            rank = np.count_nonzero(before, axis=1)  # sampled images of other identities ranked before it
            cmc[i] = (ranks[None, :] >= rank[:, None]).sum(axis=0) / num_repeats
        cmcs.append(cmc)
        aps.append(ap)
        inps.append(inp)
    return _concat(cmcs, aps, inps, max_rank)


def similarity_to_distance(scores):
    """Turn similarity scores (higher = more alike) into distances for the evaluator.

    The evaluator only uses the order of each query's row, so the negation keeps the ranking exactly
    (ascending distance = descending similarity). Works on NumPy arrays and torch tensors.

    Args:
        scores: (num_query, num_gallery) similarities.

    Returns:
        (num_query, num_gallery) ``-scores``.
    """
    return -scores


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, use_metric_cuhk03: bool = False,
                  use_cython: bool = True, num_repeats: int = 10, seed: int = 0) -> Dict:
    """Evaluate a ranking with CMC, mAP and mINP.

    Market-1501 protocol (default): per query, gallery entries sharing the query's identity and camera are
    removed; queries left with no true match are skipped (counted in ``num_skipped_query``). CUHK03 classic
    protocol (``use_metric_cuhk03``): as torchreid, the CMC is averaged over ``num_repeats`` samplings keeping
    one random kept image per gallery identity; AP/INP use the full filtered list. Deviation from torchreid,
    which draws with the unseeded global ``np.random`` per query: the draws come from
    ``np.random.default_rng(seed)`` via :func:`cuhk03_draws`, once for all queries, so results are
    deterministic and the Cython and NumPy backends agree exactly.

    Args:
        distmat (np.ndarray or torch.Tensor): (num_query, num_gallery) distances (smaller = more similar;
            see :func:`similarity_to_distance`). Compared as float32.
        q_pids (np.ndarray): (num_query,) int. g_pids (np.ndarray): (num_gallery,) int.
        q_camids (np.ndarray): (num_query,) int. g_camids (np.ndarray): (num_gallery,) int.
        max_rank (int): CMC length; reduced (with a warning) to num_gallery if larger.
        use_metric_cuhk03 (bool): CUHK03 classic protocol instead of Market-1501.
        use_cython (bool): use the Cython backend when built (warns once and uses NumPy otherwise).
        num_repeats (int): CUHK03 sampling repeats.
        seed (int): CUHK03 sampling seed.

    Returns:
        dict: ``cmc`` (max_rank,) float64 fractions; ``rank1``, ``rank5``, ``rank10``, ``rank20``, ``mAP``,
        ``mINP`` floats in [0, 1]; ``num_valid_query``, ``num_skipped_query`` ints; ``backend``
        ('cython' or 'numpy').

    Raises:
        ValueError: bad shapes, or no query has a valid gallery match.
    """
    distmat, (q_pids, g_pids, q_camids, g_camids) = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty evaluation problem: distmat shape {distmat.shape}")
    check_finite_distances(distmat, "query x gallery distances", stacklevel=3)  # warns on NaN; all non-finite raises
    if max_rank < 1 or num_repeats < 1:
        raise ValueError("max_rank and num_repeats must be >= 1")
    if num_g < max_rank:
        warnings.warn(f"Number of gallery samples ({num_g}) is smaller than max_rank ({max_rank}); "
                      f"max_rank is reduced to {num_g}.", UserWarning, stacklevel=2)
        max_rank = num_g
    inner_rank = min(max(max_rank, max(RANKS)), num_g)  # so rank-20 is exact even when max_rank < 20
    if use_cython and not IS_CYTHON_AVAILABLE:
        _warn_no_cython()
    backend = "cython" if use_cython and IS_CYTHON_AVAILABLE else "numpy"
    args = (distmat, q_pids, g_pids, q_camids, g_camids, inner_rank)
    if use_metric_cuhk03:
        draws = cuhk03_draws(g_pids, num_repeats, seed)
        fn = eval_cuhk03_cy if backend == "cython" else eval_cuhk03_numpy
        all_cmc, all_ap, all_inp, num_valid = fn(*args, *draws)
    else:
        fn = eval_market1501_cy if backend == "cython" else eval_market1501_numpy
        all_cmc, all_ap, all_inp, num_valid = fn(*args)
    if num_valid == 0:
        raise ValueError(f"All {num_q} queries were skipped: none has a true match in the gallery once "
                         "same-identity same-camera gallery images are removed. Check the pids / camids.")
    cmc_full = all_cmc.sum(axis=0) / num_valid
    results = {"cmc": cmc_full[:max_rank]}
    for k in RANKS:
        # past the gallery size every valid query has met its match, and cmc_full[-1] == 1
        results[f"rank{k}"] = float(cmc_full[min(k, inner_rank) - 1])
    results.update(mAP=float(np.mean(all_ap)), mINP=float(np.mean(all_inp)), num_valid_query=int(num_valid),
                   num_skipped_query=int(num_q - num_valid), backend=backend)
    return results


def format_results(results: Dict, name: str) -> str:
    """One header line and one row of percentages (rank-1/5/10/20, mAP, mINP).

    Args:
        results (dict): output of :func:`evaluate_rank`.
        name (str): label of the row (e.g. the test set).

    Returns:
        str: two lines of text.
    """
    keys = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
    width = max(len(name), 8)
    head = f"{'':<{width}} " + " ".join(f"{k:>7}" for k in ("R1", "R5", "R10", "R20", "mAP", "mINP"))
    row = f"{name:<{width}} " + " ".join(f"{100 * results[k]:6.2f}%" for k in keys)
    extra = (f"  ({results.get('num_valid_query', '?')} valid / {results.get('num_skipped_query', '?')} skipped "
             f"queries, {results.get('backend', '?')})")
    return head + "\n" + row + extra
