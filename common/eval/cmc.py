"""open-reid style CMC and mAP (the evaluation ShengcaiLiao/QAConv reports).

Differences from :mod:`common.eval.rank` (torchreid style): the CMC has three settings (``CMC_CONFIGS``);
without ``first_match_break`` every true match contributes ``1 / num_matches`` at the rank it would have with
the other true matches removed (k - j for the j-th match at filtered position k); the mAP comes from
scikit-learn. Single-gallery-shot sampling uses ``np.random.default_rng(seed)`` instead of the global
``np.random``, so results are deterministic.

Non-finite distances (open-reid crashes on them in scikit-learn): ``+inf`` ranks last; ``NaN`` ranks last too,
as ``+inf``, with a :class:`common.eval.distance.NonFiniteDistanceWarning` naming how many entries; entries tied
at ``+inf`` keep gallery order in the CMC and form one tied block at the end of the list in the mAP (scikit-learn's
rule for tied scores). A matrix without a single finite entry raises :class:`common.errors.ReidError`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from common.eval.distance import rankable_distances

# open-reid ``evaluate_all`` settings; QAConv reports 'market1501' (first match break) for every test set.
CMC_CONFIGS = {
    "allshots": dict(separate_camera_set=False, single_gallery_shot=False, first_match_break=False),
    "cuhk03": dict(separate_camera_set=True, single_gallery_shot=True, first_match_break=False),
    "market1501": dict(separate_camera_set=False, single_gallery_shot=False, first_match_break=True),
}


def _inputs(distmat, query_ids, gallery_ids, query_cams, gallery_cams):
    """NumPy arrays with open-reid's defaults (ids = indices, query cams 0, gallery cams 1); non-finite distances
    become ``+inf`` (NaN with a warning, see :func:`common.eval.distance.rankable_distances`)."""
    if hasattr(distmat, "detach"):
        distmat = distmat.detach().cpu().numpy()
    distmat = np.asarray(distmat)
    if distmat.ndim == 2:
        distmat = rankable_distances(distmat, "open-reid evaluator distmat", stacklevel=5)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    m, n = distmat.shape
    query_ids = np.arange(m) if query_ids is None else np.asarray(query_ids).reshape(-1)
    gallery_ids = np.arange(n) if gallery_ids is None else np.asarray(gallery_ids).reshape(-1)
    query_cams = np.zeros(m, dtype=np.int64) if query_cams is None else np.asarray(query_cams).reshape(-1)
    gallery_cams = np.ones(n, dtype=np.int64) if gallery_cams is None else np.asarray(gallery_cams).reshape(-1)
    if query_ids.shape[0] != m or query_cams.shape[0] != m or gallery_ids.shape[0] != n or gallery_cams.shape[0] != n:
        raise ValueError(f"ids / cams do not match distmat shape {distmat.shape}")
    return distmat, query_ids, gallery_ids, query_cams, gallery_cams


def _accumulate(ret: np.ndarray, hits: np.ndarray, delta: float, first_match_break: bool) -> None:
    """Add one ranked list's contribution: the j-th true match at filtered position k counts at rank k - j."""
    ranks = hits - np.arange(hits.size)
    ranks = ranks[ranks < ret.size]  # ranks is non-decreasing: open-reid stops at the first one past topk
    if ranks.size == 0:
        return
    if first_match_break:
        ret[ranks[0]] += 1.0
    else:
        np.add.at(ret, ranks, delta)


def cmc(distmat, query_ids=None, gallery_ids=None, query_cams=None, gallery_cams=None, topk: int = 100,
        separate_camera_set: bool = False, single_gallery_shot: bool = False, first_match_break: bool = False,
        seed: int = 0, num_repeats: int = 10) -> np.ndarray:
    """open-reid cumulative matching characteristic.

    A gallery entry is valid for a query if its id or its camera differs from the query's
    (``separate_camera_set`` further requires a different camera). Queries without a valid true match are
    skipped. With ``single_gallery_shot``, each of ``num_repeats`` repeats keeps one random valid entry per
    identity and weighs every match by ``1 / (num_matches * num_repeats)``.

    Args:
        distmat (np.ndarray): (num_query, num_gallery) distances (ranked with a stable argsort).
        query_ids, query_cams (np.ndarray, optional): (num_query,) int.
        gallery_ids, gallery_cams (np.ndarray, optional): (num_gallery,) int.
        topk (int): CMC length.
        separate_camera_set (bool): only gallery entries from other cameras count.
        single_gallery_shot (bool): sample one gallery entry per identity, repeated ``num_repeats`` times.
        first_match_break (bool): only the first true match counts (full weight).
        seed (int): seed of the sampling generator.
        num_repeats (int): sampling repeats (open-reid: 10).

    Returns:
        np.ndarray: (topk,) float64 CMC in [0, 1].

    Raises:
        ValueError: no query has a valid true match.
        ReidError: no distance is finite (the model has diverged).
    Warns:
        NonFiniteDistanceWarning: some distances are NaN (they rank last, as +inf).
    """
    distmat, query_ids, gallery_ids, query_cams, gallery_cams = _inputs(
        distmat, query_ids, gallery_ids, query_cams, gallery_cams)
    rng = np.random.default_rng(seed)
    ret = np.zeros(topk, dtype=np.float64)
    num_valid = 0
    for i in range(distmat.shape[0]):
        ranked = np.argsort(distmat[i], kind="stable")
        gid, gcam = gallery_ids[ranked], gallery_cams[ranked]
        valid = (gid != query_ids[i]) | (gcam != query_cams[i])
        if separate_camera_set:
            valid &= gcam != query_cams[i]
        matches = gid[valid] == query_ids[i]
        if not matches.any():
            continue
        num_valid += 1
        if not single_gallery_shot:
            hits = np.flatnonzero(matches)
            _accumulate(ret, hits, 1.0 / hits.size, first_match_break)
            continue
        # group the valid entries by identity once; each repeat draws one member per group
        vid = gid[valid]
        by_id = np.argsort(vid, kind="stable")
        starts = np.flatnonzero(np.r_[True, vid[by_id][1:] != vid[by_id][:-1]])
        sizes = np.diff(np.r_[starts, vid.size])
        for _ in range(num_repeats):
            picked = np.sort(by_id[starts + rng.integers(0, sizes)])  # sampled list, in ranked order
            hits = np.flatnonzero(matches[picked])
            _accumulate(ret, hits, 1.0 / (hits.size * num_repeats), first_match_break)
    if num_valid == 0:
        raise ValueError("No valid query: no query has a true match among its valid gallery entries.")
    return ret.cumsum() / num_valid


def _ap_trapezoid(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the precision-recall curve by the trapezoidal rule (the old scikit-learn AP QAConv keeps)."""
    from sklearn.metrics import auc, precision_recall_curve

    precision, recall, _ = precision_recall_curve(y_true, y_score)
    return float(auc(recall, precision))


def _finite_scores(dist_row: np.ndarray) -> np.ndarray:
    """Scores ``-distance`` for scikit-learn, which refuses infinities: the ``+inf`` entries of the row get one
    common score below every finite one (a tied last block; all tied if no entry of the row is finite).

    Args: dist_row (n,) distances, finite or ``+inf``. Returns: (n,) float64 finite scores.
    """
    score = -np.asarray(dist_row, dtype=np.float64)
    inf = ~np.isfinite(score)
    if inf.any():
        finite = score[~inf]
        low = finite.min() if finite.size else 0.0
        score[inf] = low - max(1.0, abs(low))
    return score


def mean_ap(distmat, query_ids=None, gallery_ids=None, query_cams=None, gallery_cams=None,
            ap_variant: str = "step", return_per_query: bool = False):
    """open-reid mean average precision with scikit-learn.

    Per query, valid gallery entries are those with a different id or a different camera; queries with no valid
    true match are skipped. The score of an entry is minus its distance.

    Args:
        distmat (np.ndarray): (num_query, num_gallery) distances.
        query_ids, query_cams (np.ndarray, optional): (num_query,) int.
        gallery_ids, gallery_cams (np.ndarray, optional): (num_gallery,) int.
        ap_variant (str): 'step' = ``sklearn.metrics.average_precision_score`` (modern scikit-learn, what
            open-reid calls); 'trapezoid' = ``auc(recall, precision)`` of ``precision_recall_curve``, the
            scikit-learn <= 0.18 definition that QAConv's own ``ranking.py`` re-implements.
        return_per_query (bool): also return the (num_valid,) per-query APs.

    Returns:
        float mAP in [0, 1] (and the per-query array if ``return_per_query``).

    Raises:
        ValueError: unknown ``ap_variant`` or no valid query.
        ReidError: no distance is finite (the model has diverged).
    Warns:
        NonFiniteDistanceWarning: some distances are NaN (they rank last, as +inf, in one tied block).
    """
    from sklearn.metrics import average_precision_score

    if ap_variant not in ("step", "trapezoid"):
        raise ValueError(f"ap_variant must be 'step' or 'trapezoid', got {ap_variant!r}")
    distmat, query_ids, gallery_ids, query_cams, gallery_cams = _inputs(
        distmat, query_ids, gallery_ids, query_cams, gallery_cams)
    aps = []
    for i in range(distmat.shape[0]):
        valid = (gallery_ids != query_ids[i]) | (gallery_cams != query_cams[i])
        y_true = gallery_ids[valid] == query_ids[i]
        if not y_true.any():
            continue
        y_score = _finite_scores(distmat[i][valid])
        if ap_variant == "step":
            aps.append(float(average_precision_score(y_true, y_score)))
        else:
            aps.append(_ap_trapezoid(y_true, y_score))
    if not aps:
        raise ValueError("No valid query: no query has a true match among its valid gallery entries.")
    aps = np.asarray(aps)
    return (float(aps.mean()), aps) if return_per_query else float(aps.mean())


def evaluate_all(distmat, query_ids, gallery_ids, query_cams, gallery_cams, cmc_topk=(1, 5, 10, 20),
                 configs: Optional[dict] = None, ap_variant: str = "step", seed: int = 0) -> dict:
    """mAP and the CMC of each open-reid setting.

    Args:
        distmat (np.ndarray): (num_query, num_gallery) distances.
        query_ids, query_cams (np.ndarray): (num_query,) int. gallery_ids, gallery_cams: (num_gallery,) int.
        cmc_topk (tuple): ranks reported as ``{config}_rank{k}`` (fractions).
        configs (dict, optional): name -> cmc kwargs (default :data:`CMC_CONFIGS`).
        ap_variant (str): see :func:`mean_ap`.
        seed (int): single-gallery-shot sampling seed.

    Raises / Warns: as :func:`cmc` and :func:`mean_ap` (one warning for the whole call).

    Returns:
        dict: ``mAP`` and, per config, ``{name}`` (topk,) CMC array and ``{name}_rank{k}`` floats.
    """
    configs = CMC_CONFIGS if configs is None else configs
    if hasattr(distmat, "detach"):
        distmat = distmat.detach().cpu().numpy()
    distmat = rankable_distances(distmat, "open-reid evaluator distmat")  # checked (and warned) once, not per call
    out = {"mAP": mean_ap(distmat, query_ids, gallery_ids, query_cams, gallery_cams, ap_variant=ap_variant)}
    topk = max(max(cmc_topk), 1)
    for name, params in configs.items():
        curve = cmc(distmat, query_ids, gallery_ids, query_cams, gallery_cams, topk=topk, seed=seed, **params)
        out[name] = curve
        out.update({f"{name}_rank{k}": float(curve[k - 1]) for k in cmc_topk})
    return out
