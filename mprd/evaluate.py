"""Evaluation (spec §9): unit-norm features of query and gallery, squared Euclidean distances, the shared
Market-1501-protocol evaluator (the original uses open-reid's ``mean_ap`` / ``cmc``, which give the same mAP and
rank-k on this protocol), and the colour-histogram reference.

Under torchrun every extraction is sharded across the ranks and gathered in the list's order (bit-identical to one
process, :func:`common.eval.features.extract_features_sharded`); rank 0 scores and broadcasts the figures."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from common.data.loaders import build_test_loader
from common.datasets.base import records_arrays
from common.eval.distance import compute_distmat
from common.distributed import broadcast_object, is_main, unwrap
from common.eval.features import extract_features_sharded
from common.eval.histogram import histogram_features_of_records
from common.eval.rank import evaluate_rank


def extract(model, records, args, device, desc: str = "extract") -> torch.Tensor:
    """(N, D) float32 CPU features of ``records`` in order (test transform, eval mode, L2-normalised), on every rank
    (torchrun: each rank extracts whole test batches of its shard; collective)."""
    def make_loader(items):
        return build_test_loader(items, args.height, args.width, args.test_batch_size, args.workers)
    return extract_features_sharded(unwrap(model), records, make_loader, device, args.test_batch_size, normalize=True,
                                    progress=args.progress, desc=desc).feats


def rank_results(qf, gf, dataset, use_cython: bool = True) -> Dict:
    """Market-1501-protocol results of query features ``qf`` against gallery features ``gf``."""
    q_pids, q_cams, _ = records_arrays(dataset.query)
    g_pids, g_cams, _ = records_arrays(dataset.gallery)
    dist = compute_distmat(qf, gf, metric="euclidean")
    res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, use_cython=use_cython)
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in res.items() if k != "cmc"}


def evaluate_model(model, dataset, args, device) -> Dict:
    qf = extract(model, dataset.query, args, device, "query")
    gf = extract(model, dataset.gallery, args, device, "gallery")
    return broadcast_object(rank_results(qf, gf, dataset, not args.no_cython) if is_main() else None)


def evaluate_histogram(dataset, args) -> Dict:
    """The global HSV colour histogram (``common.eval.histogram``) on the same protocol."""
    size = (args.height, args.width)
    qf = torch.from_numpy(histogram_features_of_records(dataset.query, size=size))
    gf = torch.from_numpy(histogram_features_of_records(dataset.gallery, size=size))
    return rank_results(qf, gf, dataset, not args.no_cython)
