"""Shared ranking evaluator: CMC, mAP and mINP under the Market-1501 and CUHK03 (classic) protocols.

Semantics follow torchreid's ``eval_market1501`` / ``eval_cuhk03``, with mINP as in fast-reid / TransReID.
Two backends give bit-identical figures. The NumPy one (this module) ranks each query's gallery with a
*stable* argsort of the distances cast to float32 (ties go to the lower gallery index, NaN last), in chunks of
query rows. The Cython one (``eval_cylib.rank_cy``, built by ``make eval_cylib``) skips the sort: a true
match's position in that same stable ranking is the number of kept gallery entries ordered before it, which
one pass over the row gives. Per-query values use the same float64 operations in the same order.
"""
from __future__ import annotations

import warnings
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

try:
    from eval_cylib.rank_cy import eval_cuhk03_cy, eval_market1501_cy
    IS_CYTHON_AVAILABLE = True
except ImportError:
    eval_cuhk03_cy = eval_market1501_cy = None
    IS_CYTHON_AVAILABLE = False

_CYTHON_WARNED = False
CHUNK_ELEMENTS = 1 << 24  # (query row, gallery) elements ranked at once: 128 MiB of int64 indices
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


def eval_market1501_numpy(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int,
                          chunk_rows: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Market-1501 protocol per valid query (NumPy).

    Gallery entries with the query's identity *and* camera are removed; a query with no remaining true match
    is skipped.

    Args:
        distmat (np.ndarray): (num_query, num_gallery) distances.
        q_pids, q_camids (np.ndarray): (num_query,) int. g_pids, g_camids (np.ndarray): (num_gallery,) int.
        max_rank (int): CMC length.
        chunk_rows (int, optional): query rows ranked at once.

    Returns:
        all_cmc (num_valid, max_rank) float64, all_AP (num_valid,), all_INP (num_valid,), num_valid (int).
    """
    distmat, (q_pids, g_pids, q_camids, g_camids) = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    cmcs, aps, inps = [], [], []
    for start, order in ranked_chunks(distmat, chunk_rows):
        stop = start + order.shape[0]
        matches = g_pids[order] == q_pids[start:stop, None]
        keep = ~(matches & (g_camids[order] == q_camids[start:stop, None]))
        for i in range(order.shape[0]):
            res = single_query_metrics(matches[i][keep[i]], max_rank)
            if res is not None:
                cmcs.append(res[0])
                aps.append(res[1])
                inps.append(res[2])
    return _stack(cmcs, aps, inps, max_rank)


def _stack(cmcs, aps, inps, max_rank):
    all_cmc = np.stack(cmcs) if cmcs else np.zeros((0, max_rank))
    return all_cmc, np.asarray(aps, dtype=np.float64), np.asarray(inps, dtype=np.float64), len(aps)


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
    ranks = np.arange(max_rank)
    cmcs, aps, inps = [], [], []
    for start, order in ranked_chunks(distmat, chunk_rows):
        for i in range(order.shape[0]):
            qp, qc = q_pids[start + i], q_camids[start + i]
            ranked = order[i]
            kept = ranked[~((g_pids[ranked] == qp) & (g_camids[ranked] == qc))]
            matches = g_pids[kept] == qp
            res = single_query_metrics(matches, max_rank)
            if res is None:
                continue
            pos = np.flatnonzero(matches)
            chosen = pos[np.argmin(priority[:, kept[pos]], axis=1)]  # (num_repeats,) sampled true match
            before = np.cumsum(winner[:, kept] & ~matches, axis=1)  # sampled other identities seen so far
            rank = np.where(chosen > 0, before[np.arange(num_repeats), np.maximum(chosen - 1, 0)], 0)
            cmcs.append((ranks[None, :] >= rank[:, None]).sum(axis=0) / num_repeats)
            aps.append(res[1])
            inps.append(res[2])
    return _stack(cmcs, aps, inps, max_rank)


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
