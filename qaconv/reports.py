"""What a QAConv run reports after (or instead of) training: the test sets' figures, ``--save_score`` files, the
colour-histogram reference, the results-table rows and ``--visualize-pairs`` pictures; with the test-time
distance and matching-dtype choices they use. Called by ``qaconv/engine.py``.

Under torchrun every rank calls :func:`evaluate_sets` (sharded extraction and gallery blocks, see
``qaconv/evaluate.py``); files and pictures are rank 0's (:func:`visualize_matches` is called on rank 0 only).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from common.datasets.base import records_arrays
from common.eval.distance import compute_distmat
from common.eval.histogram import histogram_features_of_records
from common.eval.rank import evaluate_rank
from common.run import Run
from qaconv.evaluate import evaluate_model, extract_feature_maps, pairwise_scores
from qaconv.model import QAConv, ResMap


def test_distance_mode(args) -> str:
    """HEAD (2.1) ranks by -score, earlier releases by 1 - sigmoid(score / 10). Both rank alike; re-ranking and
    TLift get the sigmoid form (positive distances, the scale TLift's alpha was tuned on), see the README."""
    if args.distance:
        return args.distance
    if args.do_rerank or args.do_tlift:
        return "sigmoid"
    return "neg" if args.version == "2.1" else "sigmoid"


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def matching_dtype(device: torch.device, amp: bool, name: str = "auto") -> Optional[torch.dtype]:
    """Matching dtype: ``name`` if given, else float16 on CUDA with AMP (HEAD's fp16 test), else float32."""
    if name != "auto":
        return _DTYPES[name]
    return torch.float16 if amp and device.type == "cuda" else None



def evaluate_sets(args, run: Run, model: ResMap, matcher: QAConv, label: str, datasets: Dict) -> Dict[str, Dict]:
    out = {}
    for key in args.testset:
        if key not in datasets:
            from qaconv.engine import load_dataset  # lazy: the engine imports this module
            datasets[key] = load_dataset(args, key)
        ds = datasets[key]
        res, dists = evaluate_model(
            model, matcher, ds, args.height, args.width, run.device, fea_batch=args.test_fea_batch,
            workers=args.workers, amp=args.amp, progress=args.progress, prob_batch=args.test_prob_batch,
            gal_batch=args.test_gal_batch, dtype=matching_dtype(run.device, args.amp, args.test_dtype),
            distance=test_distance_mode(args), version=args.version,
            do_rerank=args.do_rerank, do_tlift=args.do_tlift, tau=args.tau, sigma=args.sigma, K=args.tlift_k,
            alpha=args.alpha, use_cython=not args.no_cython, use_metric_cuhk03=ds.protocol == "cuhk03")
        out[key] = res
        run.write_results(f"{label}/{key}", res)
        if args.save_score and run.is_main:
            save_scores(run, key, ds, dists)
    return out


def save_scores(run: Run, key: str, ds, dists: Dict[str, np.ndarray]) -> str:
    """``<run>/<key>_score.mat`` as the original's ``--save_score`` (score = 1 - distance)."""
    import scipy.io as sio
    from qaconv.evaluate import record_times
    q_pids, q_cams, _ = records_arrays(ds.query)
    g_pids, g_cams, _ = records_arrays(ds.gallery)
    q_t, g_t = record_times(ds, ds.query), record_times(ds, ds.gallery)
    data = {"score": 1.0 - dists["dist"], "prob_ids": q_pids, "gal_ids": g_pids, "prob_cams": q_cams,
            "gal_cams": g_cams, "prob_list": np.array([r.img_path for r in ds.query], dtype=object),
            "gal_list": np.array([r.img_path for r in ds.gallery], dtype=object),
            "prob_time": q_t if q_t is not None else np.zeros(0), "gal_time": g_t if g_t is not None else np.zeros(0)}
    for name in ("rerank", "tlift"):
        data[f"score_{name}"] = 1.0 - dists[f"dist_{name}"] if f"dist_{name}" in dists else np.ones(1)
    path = os.path.join(run.dir, f"{key}_score.mat")
    sio.savemat(path + ".tmp.mat", data, oned_as="column", do_compression=True)
    os.replace(path + ".tmp.mat", path)
    return path


def histogram_reference(ds, use_cython: bool) -> Dict[str, float]:
    """A global HSV colour histogram compared by Euclidean distance, scored by the shared evaluator."""
    qf = torch.from_numpy(histogram_features_of_records(ds.query))
    gf = torch.from_numpy(histogram_features_of_records(ds.gallery))
    q_pids, q_cams, _ = records_arrays(ds.query)
    g_pids, g_cams, _ = records_arrays(ds.gallery)
    res = evaluate_rank(compute_distmat(qf, gf), q_pids, g_pids, q_cams, g_cams, use_cython=use_cython,
                        use_metric_cuhk03=ds.protocol == "cuhk03")
    return {k: float(res[k]) for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")}


def result_rows(label: str, results: Dict[str, Dict]) -> List[Tuple[str, Dict]]:
    """Table rows: plain, and re-ranked / TLift variants where computed."""
    rows = []
    for key, res in results.items():
        rows.append((f"{label} / {key}", res))
        for suffix, name in (("_rerank", "+ re-ranking"), ("_tlift", "+ re-ranking + TLift")):
            if f"mAP{suffix}" in res:
                rows.append((f"{label} {name} / {key}",
                             {k[:-len(suffix)]: v for k, v in res.items() if k.endswith(suffix)}))
    return rows


def visualize_matches(args, run: Run, model: ResMap, matcher: QAConv, datasets: Dict) -> List[str]:
    """Correspondence pictures of the first ``--visualize-pairs`` queries with their best gallery match."""
    from qaconv.visualize import visualize_pairs
    written = []
    for key in args.testset:
        ds = datasets[key]
        n = min(args.visualize_pairs, len(ds.query))
        q = extract_feature_maps(model, ds.query[:n], args.height, args.width, run.device, args.test_fea_batch,
                                 args.workers, amp=args.amp, progress=False)
        g = extract_feature_maps(model, ds.gallery, args.height, args.width, run.device, args.test_fea_batch,
                                 args.workers, amp=args.amp, progress=False)
        score = pairwise_scores(matcher, q.feats, g.feats, args.test_prob_batch, args.test_gal_batch,
                                device=run.device)
        q_pids, q_cams, _ = records_arrays(ds.query[:n])
        g_pids, g_cams, _ = records_arrays(ds.gallery)
        junk = torch.from_numpy((q_pids[:, None] == g_pids[None]) & (q_cams[:, None] == g_cams[None]))
        best = score.masked_fill(junk, float("-inf")).argmax(1).tolist()  # the protocol ignores same id + camera
        pairs = [(ds.query[i], ds.gallery[j]) for i, j in enumerate(best)]
        written += visualize_pairs(model, matcher, pairs, args.height, args.width,
                                   os.path.join(run.dir, "matches", key), device=run.device)
    run.log(f"wrote {len(written)} correspondence pictures under {os.path.join(run.dir, 'matches')}")
    return written
