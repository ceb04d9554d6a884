"""SAN evaluation as the release: test feature v (eval mode, not normalised), squared Euclidean distance,
Market-style CMC / mAP (or the CUHK03 classic metric with ``--use-metric-cuhk03``); no flip, no re-ranking.
The release also ran the decoder on query batches and wrote textures into the save folder: we do not.
Under torchrun the extraction is sharded (every rank its contiguous block of whole test batches, gathered in the
list's order: bit-identical to one process); rank 0 scores and draws, every rank gets the results."""
from __future__ import annotations

from typing import Dict

import torch

from common.data.loaders import build_test_loader
from common.datasets.base import ReidDataset, records_arrays
from common.distributed import broadcast_object, is_main, unwrap
from common.eval.distance import compute_distmat
from common.eval.features import extract_features_sharded
from common.eval.rank import evaluate_rank


def _v(model, images):
    # eval mode: (v, f, x_down1, x_down2, x_down3); images in the model's dtype (float64 with --float64)
    return model(images.to(next(model.parameters()).dtype))[0]


def extract(model, records, args, device, desc: str) -> torch.Tensor:
    """(N, D) features v of ``records`` (torchrun: collective, every rank gets all N rows in order)."""
    def make_loader(items):
        return build_test_loader(items, args.height, args.width, batch_size=args.test_batch_size,
                                 workers=args.workers)
    default = torch.get_default_dtype()
    # --float64: features come back float32 (common.eval.features); so must the empty-shard placeholder, which
    # common.eval.features.extract_features_sharded makes in the default dtype (a float64 one aborts gloo's gather)
    torch.set_default_dtype(torch.float32)
    try:
        return extract_features_sharded(unwrap(model), records, make_loader, device, args.test_batch_size,
                                        forward_fn=_v, progress=args.progress and is_main(), desc=desc).feats
    finally:
        torch.set_default_dtype(default)


def evaluate_features(qf, gf, dataset: ReidDataset, use_metric_cuhk03: bool = False, use_cython: bool = True) -> Dict:
    q_pids, q_cams, _ = records_arrays(dataset.query)
    g_pids, g_cams, _ = records_arrays(dataset.gallery)
    distmat = compute_distmat(qf, gf, metric="euclidean")
    return evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, use_metric_cuhk03=use_metric_cuhk03,
                         use_cython=use_cython)


def evaluate_model(model, dataset: ReidDataset, args, device) -> Dict:
    """Rank-1/5/10/20, mAP, mINP of ``model`` (a :class:`san.model.SAEncoder`) on ``dataset``."""
    qf = extract(model, dataset.query, args, device, f"{dataset.name} query")
    gf = extract(model, dataset.gallery, args, device, f"{dataset.name} gallery")
    return broadcast_object(evaluate_features(qf, gf, dataset, args.use_metric_cuhk03, not args.no_cython)
                            if is_main() else None)


def visualize_ranks(model, dataset: ReidDataset, args, device, out_dir: str, topk: int = 10) -> list:
    """The release's ``--visualize-ranks``: every query's top-``topk`` ranked list as a picture (rank, id and
    camera under each image; green = same identity) in ``out_dir`` (common.eval.visualize). Returns the files."""
    from common.eval.visualize import visualize_ranked_results
    qf = extract(model, dataset.query, args, device, f"{dataset.name} query")
    gf = extract(model, dataset.gallery, args, device, f"{dataset.name} gallery")
    if not is_main():  # torchrun: rank 0 draws
        return []
    return visualize_ranked_results(compute_distmat(qf, gf, metric="euclidean"), dataset.query,
                                    dataset.gallery, out_dir, topk=topk)


def evaluate_histogram(dataset: ReidDataset, args) -> Dict:
    """The colour-histogram reference on the same split (torchrun: rank 0 computes, every rank gets it)."""
    if not is_main():
        return broadcast_object(None)
    from common.eval.histogram import histogram_features
    qf = torch.from_numpy(histogram_features([r.img_path for r in dataset.query]))
    gf = torch.from_numpy(histogram_features([r.img_path for r in dataset.gallery]))
    return broadcast_object(evaluate_features(qf, gf, dataset, args.use_metric_cuhk03, not args.no_cython))
