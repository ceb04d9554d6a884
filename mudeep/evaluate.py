"""MuDeep v2 test: descriptor = 1/2 (phi(x) + phi(flip_lr(x))), phi the concatenated 12 embeddings (B, 6144 for
ResNet-50), L2-normalised as a whole; cosine similarity (dot product of unit vectors) ranked by the shared
evaluator (``common.eval.rank``, Market-1501 protocol: same-id same-camera gallery entries removed).

The original averages the trapezoid AP (the Market-1501 devkit form, ``original_map``) over *all* queries;
the shared evaluator's mAP is the step AP over valid queries. Both are reported (``mAP`` and ``mAP_orig``);
``opt.txt`` carries the original's.

Under torchrun every rank extracts its contiguous, batch-aligned shard of the gallery and query lists
(:func:`common.eval.features.extract_features_sharded`: bit-identical to one process) and receives all features
in order; rank 0 alone computes the distances and both mAPs and broadcasts the results, so every rank returns the
same dict (the distance matrix is rank 0's only). The colour histogram is rank 0's, broadcast.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from common.data.loaders import build_test_loader
from common.datasets.base import ReidDataset, records_arrays
from common.eval.distance import compute_distmat
from common.distributed import broadcast_object, is_main, unwrap
from common.eval.features import Features, extract_features_sharded
from common.eval.rank import evaluate_rank
from mudeep.data import test_transform


def descriptor_forward(model, images):
    """(B, 3, H, W) -> (B, 12 D) concatenated embeddings (extract_features averages flips and normalises)."""
    return model.descriptor(images)


def extract(model, records, args, device, desc: str = "extract") -> Features:
    """Descriptors of ``records`` (N, 12 D), unit rows, in their order. Under torchrun: collective (sharded)."""
    def make_loader(items):
        return build_test_loader(items, args.height, args.width, batch_size=args.test_batch_size,
                                 workers=args.workers, transform=test_transform(args.height, args.width))

    # never the DDP wrapper: its forward synchronises buffers, and the ranks' batch counts may differ
    return extract_features_sharded(unwrap(model), records, make_loader, device, args.test_batch_size,
                                    flip=args.flip_test, amp=args.amp, normalize=True,
                                    forward_fn=descriptor_forward, progress=args.progress, desc=desc)


def original_map(distmat: np.ndarray, q_pids, g_pids, q_cams, g_cams) -> float:
    """The original's mAP: per query, junk (same id and camera) removed, good = same id, other camera;
    AP = sum_i (1/n_good) (p_i + p'_i) / 2 with p_i = (i+1)/(r_i+1), p'_i = i/r_i (1 if r_i = 0), r_i the
    0-based rank of the i-th good item; averaged over all queries (a query without good items counts 0)."""
    total = 0.0
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        good = (g_pids[order][keep] == q_pids[i])
        rows = np.flatnonzero(good)
        n = rows.size
        for j, r in enumerate(rows):
            prec = (j + 1) / (r + 1)
            old = j / r if r != 0 else 1.0
            total += (prec + old) / 2 / n
    return total / distmat.shape[0]


def evaluate_features(qf: Features, gf: Features, dataset: ReidDataset, use_cython: bool = True
                      ) -> Tuple[Dict, np.ndarray]:
    """Returns (results with rank1/5/10/15/20, mAP, mINP, mAP_orig; distmat (num_query, num_gallery))."""
    q_pids, q_cams, _ = records_arrays(dataset.query)
    g_pids, g_cams, _ = records_arrays(dataset.gallery)
    distmat = compute_distmat(qf.feats, gf.feats, metric="cosine")
    res = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, use_cython=use_cython,
                        use_metric_cuhk03=dataset.protocol == "cuhk03")
    res["rank15"] = float(res["cmc"][min(14, len(res["cmc"]) - 1)])
    res["mAP_orig"] = float(original_map(distmat, q_pids, g_pids, q_cams, g_cams))
    return res, distmat


def evaluate_model(model, dataset: ReidDataset, args, device) -> Tuple[Dict, np.ndarray]:
    """Gallery then query features (the original's order), then :func:`evaluate_features`.

    Under torchrun: collective; rank 0 scores, every rank returns its results (distmat None on the others).
    """
    gf = extract(model, dataset.gallery, args, device, f"{dataset.name} gallery")
    qf = extract(model, dataset.query, args, device, f"{dataset.name} query")
    res, distmat = None, None
    if is_main():
        res, distmat = evaluate_features(qf, gf, dataset, not args.no_cython)
    return broadcast_object(res), distmat


def evaluate_histogram(dataset: ReidDataset, use_cython: bool = True) -> Dict:
    """The colour-histogram reference on the same split (torchrun: rank 0's, the same dict on every rank)."""
    return broadcast_object(_histogram(dataset, use_cython) if is_main() else None)


def _histogram(dataset: ReidDataset, use_cython: bool) -> Dict:
    import torch
    from common.eval.histogram import histogram_features
    qf = torch.from_numpy(histogram_features([r.img_path for r in dataset.query]))
    gf = torch.from_numpy(histogram_features([r.img_path for r in dataset.gallery]))
    dummy = np.zeros(0)
    return evaluate_features(Features(qf, dummy, dummy, dummy), Features(gf, dummy, dummy, dummy), dataset,
                             use_cython)[0]


def accuracy_line(epoch: int, res: Dict, decimals: int = 4) -> str:
    """One ``opt.txt`` line as the original writes it (fractions; its mAP)."""
    f = f"%.{decimals}f"
    vals = [res["rank1"], res["rank5"], res["rank10"], res["rank15"], res["rank20"], res["mAP_orig"]]
    names = ["Rank@1", "Rank@5", "Rank@10", "Rank@15", "Rank@20", "mAP"]
    return f"Epoch:{epoch}, " + ", ".join(f"{n}:{f % v}" for n, v in zip(names, vals)) + " \n"
