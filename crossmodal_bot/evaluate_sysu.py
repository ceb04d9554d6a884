"""SYSU-MM01 cross-modality evaluation: infrared queries against a per-trial sampled RGB gallery.

Protocol (camera ids 0-based as everywhere in this repo: SYSU camera k has camid k-1):
    * query: every IR image (cameras 3 and 6 -> camids 2, 5) of the test identities;
    * gallery, per trial t (t = 0..9), drawn as the standard Python protocol (mangye16's
      ``process_gallery_sysu``), image for image: Python's ``random`` seeded with t, identities ascending, for
      each the allowed RGB cameras ascending (all-search: cameras 1, 2, 4, 5 -> camids 0, 1, 3, 4; indoor-search:
      cameras 1, 2 -> camids 0, 1), each (identity, camera) cell's files sorted, one ``random.choice`` per cell
      (single-shot). Multi-shot (10): ``random.sample`` of 10 per cell from the same stream; a cell with fewer
      than 10 images gives all of them (and consumes no draw);
    * a camera-3 query never sees camera-2 gallery images (same place). Following mangye16's ``eval_sysu``
      (Cross-Modal-Re-ID-baseline, eval_metrics.py, ``remove = (q_camid == 3) & (g_camids[order] == 2)``)
      *every* camera-2 gallery entry is removed for such a query, whatever its identity;
    * CMC on the ranked list with repeated identities removed (only the first occurrence of each gallery
      identity is kept, as the dataset authors' code and mangye16's ``new_cmc``); AP and INP on the full list
      (after the removal); queries without any match are skipped;
    * rank-1/10/20, mAP and mINP are averaged over the trials.

Reference:
    Wu et al., "RGB-Infrared Cross-Modality Person Re-Identification", ICCV 2017.
    Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021 (mINP).
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

SYSU_QUERY_CAMIDS = (2, 5)
SYSU_GALLERY_CAMIDS = {"all": (0, 1, 3, 4), "indoor": (0, 1)}
_RULE_QUERY_CAMID, _RULE_GALLERY_CAMID = 2, 1  # camera 3 queries vs camera 2 gallery


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def pairwise_distance(qf, gf, metric: str = "euclidean") -> np.ndarray:
    """Distances between query and gallery features.

    Args:
        qf: (M, D); gf: (N, D) (tensors or arrays).
        metric: ``'euclidean'`` (squared Euclidean; same ranking as Euclidean) or ``'cosine'`` (1 - cosine).
    Returns:
        (M, N) float64 array.
    """
    q = torch.as_tensor(_as_numpy(qf), dtype=torch.float64)
    g = torch.as_tensor(_as_numpy(gf), dtype=torch.float64)
    if metric == "cosine":
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
        return (1.0 - q @ g.t()).numpy()
    if metric != "euclidean":
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    d = q.pow(2).sum(1, keepdim=True) + g.pow(2).sum(1).unsqueeze(0) - 2.0 * q @ g.t()
    return d.clamp(min=0).numpy()


def sample_sysu_gallery(g_pids, g_camids, mode: str = "all", shots: int = 1, seed: int = 0,
                        g_paths: Optional[Sequence[str]] = None) -> np.ndarray:
    """Indices of one trial's gallery in the full RGB gallery, drawn as the standard Python protocol.

    ``rng = random.Random(seed)`` (the same stream as ``random.seed(seed)``); identities ascending; for each, the
    allowed cameras ascending; the cell's candidates sorted by file path (``g_paths``; without it, in their given
    order, which is the sorted order for the SYSU-MM01 parser); single-shot: ``rng.choice(candidates)``;
    ``shots > 1``: ``rng.sample(candidates, shots)``, or all candidates (no draw) when the cell has fewer.

    Args:
        g_pids: (G,) identities of the full gallery; g_camids: (G,) 0-based cameras.
        mode: ``'all'`` (camids 0, 1, 3, 4) or ``'indoor'`` (camids 0, 1).
        shots: images per identity and camera (1 single-shot, 10 multi-shot).
        seed: the trial number.
        g_paths: (G,) file paths of the gallery images, to sort each cell by (optional).
    Returns:
        (G',) int64 indices in the protocol's gallery order: cell by cell (identity, then camera), the drawn
        images of a multi-shot cell in increasing index order.
    """
    if mode not in SYSU_GALLERY_CAMIDS:
        raise ValueError(f"mode must be 'all' or 'indoor', got {mode!r}")
    g_pids, g_camids = _as_numpy(g_pids), _as_numpy(g_camids)
    if g_paths is not None and len(g_paths) != len(g_pids):
        raise ValueError(f"g_paths has {len(g_paths)} entries for {len(g_pids)} gallery images")
    rng = random.Random(seed)
    chosen: List[int] = []
    for pid in sorted(set(g_pids.tolist())):
        for cam in SYSU_GALLERY_CAMIDS[mode]:
            cand = np.flatnonzero((g_pids == pid) & (g_camids == cam)).tolist()
            if not cand:
                continue
            if g_paths is not None:
                cand = sorted(cand, key=lambda i: str(g_paths[i]))
            if shots == 1:
                chosen.append(rng.choice(cand))
            else:
                chosen.extend(sorted(cand) if len(cand) <= shots else sorted(rng.sample(cand, shots)))
    return np.asarray(chosen, dtype=np.int64)


def sysu_trial_view(distmat: np.ndarray, q_camids, g_pids, g_camids, mode: str = "all", shots: int = 1,
                    seed: int = 0, g_paths: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """What one trial ranks: its sampled gallery columns, with the camera rule written into the distances.

    For ranked-list pictures, which rank a distance matrix as given: a camera-3 query's distance to every
    camera-2 entry becomes ``+inf`` (so those entries come last and can be cut off by a top-k), as
    :func:`eval_sysu` drops them.

    Args:
        distmat: (Q, G) distances to the FULL RGB gallery; q_camids: (Q,); g_pids, g_camids: (G,) (0-based).
        mode, shots, seed, g_paths: as :func:`sample_sysu_gallery` (trial ``seed``).
    Returns:
        (distances (Q, G') float64 with ``inf`` on the excluded pairs, cols (G',) int64 indices into the gallery).
    """
    q_camids, g_camids = _as_numpy(q_camids), _as_numpy(g_camids)
    cols = sample_sysu_gallery(g_pids, g_camids, mode, shots, seed, g_paths)
    view = np.asarray(distmat, dtype=np.float64)[:, cols].copy()
    view[np.ix_(q_camids == _RULE_QUERY_CAMID, g_camids[cols] == _RULE_GALLERY_CAMID)] = np.inf
    return view, cols


def eval_sysu(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, max_rank: int = 20) -> Dict:
    """CMC (identity de-duplicated), mAP and mINP under the SYSU camera rule (0-based camids).

    Args:
        distmat: (Q, G) distances, smaller is closer.
        q_pids, q_camids: (Q,); g_pids, g_camids: (G,).
        max_rank: CMC length (cut to the number of distinct gallery identities if smaller; the curve is padded
            with its last value when a query sees fewer distinct identities).
    Returns:
        dict: ``cmc`` (max_rank,) array, ``mAP``, ``mINP`` and ``num_valid`` (queries with a match).
    Raises:
        ValueError: no query has a match in the gallery.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids, q_camids, g_camids = (_as_numpy(a) for a in (q_pids, g_pids, q_camids, g_camids))
    max_rank = min(max_rank, len(np.unique(g_pids)))
    order = np.argsort(distmat, axis=1, kind="stable")
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        idx = order[i]
        if q_camids[i] == _RULE_QUERY_CAMID:
            idx = idx[g_camids[idx] != _RULE_GALLERY_CAMID]
        ranked = g_pids[idx]
        matches = ranked == q_pids[i]
        if not matches.any():
            continue
        _, first = np.unique(ranked, return_index=True)
        dedup = ranked[np.sort(first)]
        cmc = np.cumsum(dedup == q_pids[i])[:max_rank].clip(max=1).astype(np.float64)
        cmcs.append(np.pad(cmc, (0, max_rank - len(cmc)), mode="edge"))
        hits = np.cumsum(matches)
        pos = np.flatnonzero(matches)
        aps.append(float(np.mean(hits[pos] / (pos + 1.0))))
        inps.append(float(hits[pos[-1]] / (pos[-1] + 1.0)))
    if not cmcs:
        raise ValueError("no query identity appears in the gallery")
    return {"cmc": np.mean(cmcs, axis=0), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)),
            "num_valid": len(cmcs)}


def _summary(res: Dict) -> Dict:
    cmc = res["cmc"]
    out = {f"rank{k}": float(cmc[min(k, len(cmc)) - 1]) for k in (1, 5, 10, 20)}
    out.update(mAP=res["mAP"], mINP=res["mINP"])
    return out


def evaluate_sysu(q_feats, q_pids, q_camids, g_feats, g_pids, g_camids, mode: str = "all", shots: int = 1,
                  trials: int = 10, metric: str = "euclidean", max_rank: int = 20,
                  seeds: Optional[Sequence[int]] = None, g_paths: Optional[Sequence[str]] = None) -> Dict:
    """The full SYSU-MM01 test: ``trials`` sampled galleries (seeds 0..trials-1), figures averaged.

    The distances to the full gallery are computed once; each trial ranks its sampled columns.

    Args:
        q_feats: (Q, D) IR query features; q_pids, q_camids: (Q,) (camids 2 and 5).
        g_feats: (G, D) features of the FULL RGB gallery; g_pids, g_camids: (G,) (camids 0, 1, 3, 4).
        mode: ``'all'`` or ``'indoor'``; shots: 1 or 10; trials: number of trials.
        metric: ``'euclidean'`` or ``'cosine'`` (features are used as given; normalise them beforehand for
            BoT's FEAT_NORM).
        seeds: explicit trial seeds (default ``range(trials)``).
        g_paths: (G,) gallery file paths, to sort each (identity, camera) cell by before the draw (see
            :func:`sample_sysu_gallery`; without it the given order, sorted for the SYSU-MM01 parser).
    Returns:
        dict of fractions in [0, 1]: ``rank1``, ``rank5``, ``rank10``, ``rank20``, ``mAP``, ``mINP`` (means over
        the trials), ``cmc`` (list, mean curve), ``trials`` (list of per-trial dicts with the same keys plus
        ``seed`` and ``gallery_size``), ``protocol`` (str).
    """
    q_pids, q_camids, g_pids, g_camids = (_as_numpy(a) for a in (q_pids, q_camids, g_pids, g_camids))
    distmat = pairwise_distance(q_feats, g_feats, metric)
    seeds = list(range(trials)) if seeds is None else list(seeds)
    per_trial, cmcs = [], []
    for seed in seeds:
        cols = sample_sysu_gallery(g_pids, g_camids, mode, shots, seed, g_paths)
        res = eval_sysu(distmat[:, cols], q_pids, g_pids[cols], q_camids, g_camids[cols], max_rank)
        cmcs.append(res["cmc"])
        per_trial.append(dict(_summary(res), seed=int(seed), gallery_size=int(len(cols))))
    out = {k: float(np.mean([t[k] for t in per_trial])) for k in ("rank1", "rank5", "rank10", "rank20", "mAP",
                                                                  "mINP")}
    out["cmc"] = np.mean(cmcs, axis=0).tolist()
    out["trials"] = per_trial
    out["protocol"] = f"sysu-{mode}-search-{'single' if shots == 1 else 'multi'}-shot x{len(seeds)}"
    return out
