"""Test-time evaluation of the BoT model on one dataset, and the colour-histogram reference.

The test feature is the BNNeck output f_i, L2-normalised (the original's FEAT_NORM), compared with the Euclidean
distance (squared; same ranking). Market-style benchmarks go through ``common.eval.rank.evaluate_rank``; SYSU-MM01
(``dataset.protocol == 'sysu'``) through :mod:`crossmodal_bot.evaluate_sysu`.

Under torchrun every rank extracts its contiguous shard of the query and gallery lists (batch-aligned, so the
features are bit-identical to one process) and all ranks receive every feature in order; rank 0 alone computes the
distances and scores, and broadcasts the results, so every rank returns the same dict (the distance matrix is
rank 0's only).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from common.data.loaders import build_test_loader
from common.datasets.base import ReidDataset, records_arrays
from common.eval.distance import compute_distmat
from common.distributed import broadcast_object, is_main, unwrap
from common.eval.features import extract_features_sharded
from common.eval.rank import evaluate_rank


def extract_query_gallery(model, dataset: ReidDataset, height: int, width: int, device, batch_size: int = 128,
                          workers: int = 4, flip: bool = False, amp: bool = False, progress: bool = True):
    """Features of the query and gallery sets.

    Under torchrun: collective (every rank extracts its shard and gets all features, see the module doc).

    Returns:
        (query Features, gallery Features); ``.feats`` are (N, C) float32, L2-normalised.
    """
    out = []
    model = unwrap(model)  # never the DDP wrapper: its forward synchronises buffers, ranks' batch counts differ

    def make_loader(records):
        return build_test_loader(records, height, width, batch_size=batch_size, workers=workers)

    for name, records in (("query", dataset.query), ("gallery", dataset.gallery)):
        out.append(extract_features_sharded(model, records, make_loader, device, batch_size, flip=flip, amp=amp,
                                            normalize=True, progress=progress, desc=f"{dataset.name} {name}"))
    return out[0], out[1]


def evaluate_features(qf: torch.Tensor, gf: torch.Tensor, dataset: ReidDataset, metric: str = "euclidean",
                      use_cython: bool = True, sysu_mode: str = "all", sysu_shots: int = 1,
                      sysu_trials: int = 10) -> Tuple[Dict, np.ndarray]:
    """Rank and score query features against gallery features with the dataset's protocol.

    Args:
        qf: (num_query, C) features; gf: (num_gallery, C) features.
    Returns:
        (results dict, distmat (num_query, num_gallery) or None for SYSU, whose gallery changes per trial).
    """
    q_pids, q_cams, _ = records_arrays(dataset.query)
    g_pids, g_cams, _ = records_arrays(dataset.gallery)
    if dataset.protocol == "sysu":
        from crossmodal_bot.evaluate_sysu import evaluate_sysu
        res = evaluate_sysu(qf, q_pids, q_cams, gf, g_pids, g_cams, mode=sysu_mode, shots=sysu_shots,
                            trials=sysu_trials, metric=metric)
        return res, None
    distmat = compute_distmat(qf, gf, metric=metric)
    res = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, use_cython=use_cython,
                        use_metric_cuhk03=(dataset.protocol == "cuhk03"))
    return res, distmat


def evaluate_model(model, dataset: ReidDataset, args, device) -> Tuple[Dict, np.ndarray]:
    """Extract features with ``model`` and evaluate them (see :func:`evaluate_features`).

    Under torchrun: collective; rank 0 scores and every rank returns its results (distmat None elsewhere).
    """
    qf, gf = extract_query_gallery(model, dataset, args.height, args.width, device, args.test_batch_size,
                                   args.workers, flip=args.flip_test, amp=args.amp, progress=args.progress)
    res, distmat = None, None
    if is_main():
        res, distmat = evaluate_features(qf.feats, gf.feats, dataset, args.test_metric, not args.no_cython,
                                         args.sysu_mode, args.sysu_shots, args.sysu_trials)
    return broadcast_object(res), distmat


def evaluate_histogram(dataset: ReidDataset, use_cython: bool = True, **sysu) -> Dict:
    """The colour-histogram reference on the same split (global colour histogram, Euclidean on Hellinger maps)."""
    from common.eval.histogram import histogram_features
    qf = torch.from_numpy(histogram_features([r.img_path for r in dataset.query]))
    gf = torch.from_numpy(histogram_features([r.img_path for r in dataset.gallery]))
    return evaluate_features(qf, gf, dataset, "euclidean", use_cython, **sysu)[0]
