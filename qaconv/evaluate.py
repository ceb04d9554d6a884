"""Test-time side of QAConv: feature maps, chunked QAConv scores, distances, metrics, re-ranking and TLift.

Protocol (ShengcaiLiao/QAConv ``reid/evaluators.py``): feature maps of query and gallery with the test transform
(bicubic resize, ``ToTensor``, no ``Normalize``); QAConv scores of every (query, gallery) pair computed chunk by
chunk with the matcher in eval mode; distance = -score (HEAD; ``mode='sigmoid'`` gives the
1 - sigmoid(score / 10) of versions <= 2.1); open-reid rank-1 ('market1501' CMC setting for every test set) and
scikit-learn mAP. With TLift (only for test sets with time stamps): the (q+g)^2 QAConv distance matrix,
k-reciprocal re-ranking, score = 1 - re-ranked distance, TLift, distance = 1 - lifted score.

Every distance matrix is also scored by the shared torchreid-style :func:`common.eval.rank.evaluate_rank`
(rank-1/5/10/20, mAP, mINP), so QAConv compares with the other methods under one evaluator.
"""
from __future__ import annotations

import copy
import warnings
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from common.data.loaders import build_test_loader
from common.datasets.base import Record, records_arrays
from common.distributed import broadcast_object, gather_features, gather_rows, is_distributed, is_main, shard_range
from common.eval.cmc import CMC_CONFIGS, evaluate_all
from common.eval.features import Features, extract_features, inference_context
from common.eval.rank import evaluate_rank
from common.progress import bar as progress_bar
from common.rerank import rerank_sparse, stitched_block_fn
from qaconv.rerank import full_distance_matrix, k_reciprocal_rerank

#: q + g from which re-ranking never builds the (q + g)^2 matrix (common.rerank, same distances as the dense code)
SPARSE_RERANK_MIN_ITEMS = 8192
from qaconv.tlift import tlift
from qaconv.transforms import build_test_transform

RANKS = (1, 5, 10, 20)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def extract_feature_maps(model: nn.Module, records: Sequence[Record], height: int, width: int, device,
                         batch_size: int = 256, workers: int = 4, amp: bool = False, progress: bool = True,
                         desc: str = "extract") -> Features:
    """Feature maps of ``records`` in record order with the QAConv test transform (no flip, no extra norm).

    Args:
        model: backbone returning (B, C, h, w) maps (L2-normalised per location by the model itself).
        records: query or gallery records.
        height, width: input image size (384 x 128 in the original).
        device: device the model is on.
        batch_size: images per batch (``--test_fea_batch`` 256).
        workers: DataLoader workers.
        amp: autocast to float16 on CUDA (the original runs the whole model in float16); ignored on CPU.
        progress: show a progress bar.
        desc: progress bar label.
    Returns:
        :class:`common.eval.features.Features`; ``feats`` (N, C, h, w) float32 CPU.
    """
    loader = build_test_loader(records, height, width, batch_size=batch_size, workers=workers,
                               transform=build_test_transform(height, width))
    return extract_features(model, loader, device, flip=False, amp=amp, normalize=False, progress=progress,
                            desc=desc)


def sharded_feature_maps(model: nn.Module, records: Sequence[Record], height: int, width: int, device,
                         batch_size: int = 256, workers: int = 4, amp: bool = False, progress: bool = True,
                         desc: str = "extract") -> Features:
    """:func:`extract_feature_maps` of all ``records`` with each rank extracting its :func:`shard_range` (whole
    batches of ``batch_size``, so bit-identical to one process), gathered in record order on every rank.
    Alone: :func:`extract_feature_maps` itself. Every rank must call it."""
    if not is_distributed():
        return extract_feature_maps(model, records, height, width, device, batch_size, workers, amp, progress, desc)
    part = shard_range(len(records), align=batch_size)
    mine = list(records[part.start:part.stop]) or list(records[:1])  # an empty shard still shows the map shape
    local = extract_feature_maps(model, mine, height, width, device, batch_size, workers, amp, progress, desc)
    if not len(part):
        local = Features(local.feats[:0], local.pids[:0], local.camids[:0], local.indices[:0])
    return gather_features(local)


def sharded_pairwise_scores(matcher: nn.Module, prob: torch.Tensor, gal: torch.Tensor, prob_batch: int = 128,
                            gal_batch: int = 128, device="cpu", dtype: Optional[torch.dtype] = None,
                            progress: bool = False) -> torch.Tensor:
    """:func:`pairwise_scores` of all probes against the gallery, each rank scoring its :func:`shard_range` of
    gallery maps (whole chunks of ``gal_batch``, the single-process chunks, hence bit-identical); the (P, G_r)
    blocks are gathered in gallery order into the (P, G) float32 CPU matrix on every rank. Alone:
    :func:`pairwise_scores` itself. Every rank must call it."""
    if not is_distributed():
        return pairwise_scores(matcher, prob, gal, prob_batch, gal_batch, device, dtype, progress)
    part = shard_range(gal.shape[0], align=gal_batch)
    block = pairwise_scores(matcher, prob, gal[part.start:part.stop], prob_batch, gal_batch, device, dtype,
                            progress)
    return gather_rows(block, dim=1)


def _resolve_dtype(dtype: Optional[torch.dtype], device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype in HALF_DTYPES and device.type != "cuda":
        warnings.warn(f"pairwise_scores: {dtype} is only used on CUDA; computing in float32 on {device}.",
                      RuntimeWarning, stacklevel=3)
        return torch.float32
    return dtype


def _matcher_for(matcher: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``matcher`` itself when its floating tensors already live on ``device`` in ``dtype``, else a converted copy
    (the caller's module is never converted in place, unlike the original's ``Evaluator``)."""
    tensors = [t for t in list(matcher.parameters()) + list(matcher.buffers()) if t.is_floating_point()]
    if all(t.device == device and t.dtype == dtype for t in tensors):
        return matcher
    return copy.deepcopy(matcher).to(device=device, dtype=dtype)


def pairwise_scores(matcher: nn.Module, prob: torch.Tensor, gal: torch.Tensor, prob_batch: int = 128,
                    gal_batch: int = 128, device="cpu", dtype: Optional[torch.dtype] = None,
                    progress: bool = False) -> torch.Tensor:
    """QAConv scores of every (probe, gallery) pair, computed in (prob_batch x gal_batch) chunks.

    The matcher runs in eval mode (every submodule's mode is restored afterwards) under ``torch.inference_mode``;
    in eval mode QAConv is pair-local, so the result does not depend on the chunk sizes. Only one probe chunk and
    one gallery chunk are on ``device`` at a time; the feature tensors may stay on the CPU.

    Args:
        matcher: ``matcher(prob (p, C, h, w), gal (g, C, h, w)) -> (p, g)`` raw logits (larger = more similar).
        prob: (P, C, h, w) probe maps. gal: (G, C, h, w) gallery maps.
        prob_batch: probes per chunk (``--test_prob_batch`` 128).
        gal_batch: gallery maps per chunk (``--test_gal_batch`` 128).
        device: where the chunks and the matcher run.
        dtype: chunk and matcher dtype; None = float32. float16 / bfloat16 (the original: float16) only on CUDA;
            on other devices they fall back to float32 with a warning. A matcher whose tensors are not already
            on ``device`` in ``dtype`` is run as a converted deep copy.
        progress: show a progress bar over probe chunks.
    Returns:
        (P, G) float32 CPU scores.
    Raises:
        ValueError: bad shapes or chunk sizes, or a matcher output of the wrong shape.
    """
    if prob.dim() != 4 or gal.dim() != 4 or prob.shape[1:] != gal.shape[1:]:
        raise ValueError(f"prob and gal must be (N, C, h, w) maps of one shape, got {tuple(prob.shape)} and "
                         f"{tuple(gal.shape)}")
    if prob_batch < 1 or gal_batch < 1:
        raise ValueError(f"chunk sizes must be >= 1, got prob_batch={prob_batch}, gal_batch={gal_batch}")
    device = torch.device(device)
    dtype = _resolve_dtype(dtype, device)
    num_p, num_g = prob.shape[0], gal.shape[0]
    score = torch.empty(num_p, num_g, dtype=torch.float32)
    net = _matcher_for(matcher, device, dtype)
    with inference_context(net), torch.inference_mode():
        for i in progress_bar(desc="QAConv scores", progress=progress, iterable=range(0, num_p, prob_batch)):
            p = prob[i:i + prob_batch].to(device=device, dtype=dtype, non_blocking=True)
            for k in range(0, num_g, gal_batch):
                g = gal[k:k + gal_batch].to(device=device, dtype=dtype, non_blocking=True)
                s = net(p, g)
                if s.shape != (p.shape[0], g.shape[0]):
                    raise ValueError(f"matcher returned shape {tuple(s.shape)} for {p.shape[0]} probes and "
                                     f"{g.shape[0]} gallery maps")
                score[i:i + p.shape[0], k:k + g.shape[0]] = s.float().cpu()
    return score


def score_to_distance(score, mode: str = "neg"):
    """Turn QAConv logits into distances.

    ``'neg'``: distance = -score (QAConv HEAD; default of every entry point here: :func:`evaluate_qaconv`
    and its re-ranking input). ``'sigmoid'``: distance = 1 - sigmoid(score / 10) in (0, 1) (QAConv <= 2.1 and
    the v2.0 graph sampler). Both keep the ranking; they differ as inputs of re-ranking / TLift.

    Args:
        score: (P, G) torch tensor or numpy array.
        mode: 'neg' or 'sigmoid'.
    Returns:
        (P, G) distances, same type as ``score``.
    """
    if mode == "neg":
        return -score
    if mode == "sigmoid":
        if isinstance(score, torch.Tensor):
            return 1 - torch.sigmoid(score / 10)
        return 1 - 1 / (1 + np.exp(-np.asarray(score) / 10))
    raise ValueError(f"mode must be 'neg' or 'sigmoid', got {mode!r}")


def record_times(dataset, records: Sequence[Record]) -> Optional[np.ndarray]:
    """Time stamps in seconds for TLift: (frame + camera sync offset) / fps.

    ``Record.frame`` is what the parser stores (Market: frame made continuous per camera over its sequences;
    Duke: raw frame, with ``extra['sync_offsets']`` (frames, indexed by 0-based camid) added here; RandPerson:
    scene offset + frame; synthetic: global frame); ``extra['fps']`` is the frame rate.

    Args:
        dataset: object with an ``extra`` dict (a :class:`common.datasets.base.ReidDataset`) or the dict itself.
        records: the records to time-stamp.
    Returns:
        (N,) float64 seconds, or None when the dataset has no fps or any record has no frame (-1).
    """
    extra = dataset if isinstance(dataset, dict) else getattr(dataset, "extra", {})
    fps = extra.get("fps")
    if fps is None:
        return None
    _, camids, frames = records_arrays(records)
    if np.any(frames < 0):
        return None
    frames = frames.astype(np.float64)
    offsets = extra.get("sync_offsets")
    if offsets is not None:
        offsets = np.asarray(offsets, dtype=np.float64)
        if camids.size and (camids.min() < 0 or camids.max() >= offsets.size):
            raise ValueError(f"camera ids {camids.min()}..{camids.max()} outside the {offsets.size} sync offsets")
        frames = frames + offsets[camids]
    return frames / float(fps)


def rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, suffix: str = "", use_cython: bool = True,
                 use_metric_cuhk03: bool = False) -> Dict[str, float]:
    """Shared-evaluator and open-reid figures of one distance matrix, as a flat dict of floats.

    Args:
        dist: (Q, G) distances (smaller = more similar).
        q_pids, q_cams: (Q,) int. g_pids, g_cams: (G,) int.
        suffix: appended to every key (e.g. '_rerank').
        use_cython: passed to :func:`common.eval.rank.evaluate_rank`.
        use_metric_cuhk03: CUHK03 classic protocol in the shared evaluator (open-reid always uses 'market1501').
    Returns:
        ``rank1, rank5, rank10, rank20, mAP, mINP`` (shared torchreid-style evaluator) and
        ``openreid_rank1/5/10/20, openreid_mAP`` (open-reid CMC 'market1501' + scikit-learn step AP, what
        QAConv reports), each with ``suffix``; fractions in [0, 1].
    """
    if hasattr(dist, "detach"):
        dist = dist.detach().cpu().numpy()
    dist = np.asarray(dist, dtype=np.float32)
    shared = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=min(50, dist.shape[1]),
                           use_metric_cuhk03=use_metric_cuhk03, use_cython=use_cython)
    openreid = evaluate_all(dist, q_pids, g_pids, q_cams, g_cams, cmc_topk=RANKS,
                            configs={"market1501": CMC_CONFIGS["market1501"]})
    out = {f"rank{k}{suffix}": float(shared[f"rank{k}"]) for k in RANKS}
    out[f"mAP{suffix}"] = float(shared["mAP"])
    out[f"mINP{suffix}"] = float(shared["mINP"])
    out.update({f"openreid_rank{k}{suffix}": float(openreid[f"market1501_rank{k}"]) for k in RANKS})
    out[f"openreid_mAP{suffix}"] = float(openreid["mAP"])
    return out


def _maps_and_ids(x: Union[Features, torch.Tensor], records: Optional[Sequence[Record]], name: str):
    if isinstance(x, Features):
        maps, pids, cams = x.feats, x.pids, x.camids
    else:
        maps, pids, cams = x, None, None
    if records is not None:
        pids, cams, _ = records_arrays(records)
    if pids is None:
        raise ValueError(f"{name}: pass Features or the records, so identities and cameras are known")
    if len(pids) != maps.shape[0]:
        raise ValueError(f"{name}: {maps.shape[0]} maps but {len(pids)} identities")
    return maps, np.asarray(pids, dtype=np.int64), np.asarray(cams, dtype=np.int64)


def self_block_transposed(version: Optional[str]) -> bool:
    """Whether a release builds the query-query and gallery-gallery blocks of the re-ranking matrix transposed.

    1.0 / 1.1 computed ``qq[i, j]`` with image j as the kernel and image i as the convolved map, i.e. our
    ``matcher(prob=j, gal=i)``; 1.2 and later (and the query-gallery block of every release) put the first
    argument on the rows: ``qq[i, j] = matcher(prob=i, gal=j)``. The v1 matcher is not symmetric, so the two differ.
    """
    return version is not None and str(version) in ("1.0", "1.1")


def evaluate_qaconv(matcher: nn.Module, query: Union[Features, torch.Tensor], gallery: Union[Features, torch.Tensor],
                    query_records: Optional[Sequence[Record]] = None,
                    gallery_records: Optional[Sequence[Record]] = None, *,
                    query_times: Optional[np.ndarray] = None, gallery_times: Optional[np.ndarray] = None,
                    prob_batch: int = 128, gal_batch: int = 128, device="cpu", dtype: Optional[torch.dtype] = None,
                    distance: str = "neg", do_rerank: bool = False, do_tlift: bool = False, k1: int = 20,
                    k2: int = 6, lambda_value: float = 0.3, tau: float = 100, sigma: float = 200, K: int = 10,
                    alpha: float = 0.2, use_cython: bool = True, use_metric_cuhk03: bool = False,
                    progress: bool = False, return_dists: bool = False, version: Optional[str] = None,
                    sparse_rerank_min: int = SPARSE_RERANK_MIN_ITEMS):
    """Evaluate QAConv matching of query against gallery maps, optionally with re-ranking and TLift.

    Plain: dist = score_to_distance(pairwise_scores(query, gallery), distance) -> :func:`rank_metrics`.
    Under torchrun every rank calls this: the (Q, G) scores are computed by gallery blocks across the ranks
    (:func:`sharded_pairwise_scores`); rank 0 alone computes the figures, re-ranking and TLift and broadcasts the
    figures (the other ranks return them with ``dists = {'dist': the plain distances}``).
    Re-ranking (``do_rerank``, or ``do_tlift`` with time stamps): qq and gg distances with QAConv too, the
    (q+g)^2 matrix [[qq, qg], [qg^T, gg]] (for ``version`` 1.0 / 1.1 with qq and gg transposed, see
    :func:`self_block_transposed`), :func:`qaconv.rerank.k_reciprocal_rerank` (k1, k2, lambda) -> keys with suffix
    ``_rerank``. TLift (``do_tlift`` and both time arrays given): score = 1 - re-ranked
    distance, :func:`qaconv.tlift.tlift` with num_cams = max gallery camera + 1, distance = 1 - lifted score ->
    suffix ``_tlift``. ``do_tlift`` without time stamps warns and skips TLift (as the original, it then skips
    re-ranking too unless ``do_rerank``).

    Args:
        matcher: the QAConv matcher (see :func:`pairwise_scores`).
        query, gallery: :class:`Features` or (N, C, h, w) tensors of maps.
        query_records, gallery_records: records giving pids and cameras (override those in Features).
        query_times, gallery_times: (Q,), (G,) seconds (see :func:`record_times`) for TLift.
        prob_batch, gal_batch, device, dtype: see :func:`pairwise_scores`.
        distance: 'neg' (HEAD, default) or 'sigmoid' (<= v2.1); see :func:`score_to_distance`.
        do_rerank: report re-ranked figures.
        do_tlift: report re-ranked and TLift figures when time stamps are given.
        k1, k2, lambda_value: re-ranking parameters (20, 6, 0.3).
        tau, sigma, K, alpha: TLift parameters (100, 200, 10, 0.2).
        use_cython, use_metric_cuhk03: options of the shared evaluator.
        progress: progress bars for the score computation.
        return_dists: also return the distance matrices.
        version: the QAConv release (``args.version``); only the orientation of the re-ranking's qq and gg
            blocks depends on it. None: as 1.2 and later.
        sparse_rerank_min: from this many query + gallery images on, re-ranking uses
            :func:`common.rerank.rerank_sparse` (top-k lists from QAConv score blocks, sparse V, Jaccard only for
            query-gallery pairs; the same distances as the dense code, without the (q+g)^2 matrix).
    Returns:
        dict of floats (see :func:`rank_metrics`; keys with '', '_rerank', '_tlift' suffixes), and with
        ``return_dists`` a second dict with 'dist' (Q, G) and, when computed, 'dist_rerank', 'dist_tlift'
        (float32 numpy).
    """
    q_maps, q_pids, q_cams = _maps_and_ids(query, query_records, "query")
    g_maps, g_pids, g_cams = _maps_and_ids(gallery, gallery_records, "gallery")
    chunk = dict(prob_batch=prob_batch, gal_batch=gal_batch, device=device, dtype=dtype, progress=progress)
    metric_kw = dict(use_cython=use_cython, use_metric_cuhk03=use_metric_cuhk03)

    dist = score_to_distance(sharded_pairwise_scores(matcher, q_maps, g_maps, **chunk), distance).numpy()
    dists = {"dist": dist}
    if not is_main():  # torchrun: rank 0 scores, re-ranks and lifts; the others receive its figures
        results = broadcast_object(None)
        return (results, dists) if return_dists else results
    results = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, **metric_kw)

    has_times = query_times is not None and gallery_times is not None
    if do_tlift and not has_times:
        warnings.warn("evaluate_qaconv: do_tlift needs query and gallery time stamps; TLift skipped.",
                      RuntimeWarning, stacklevel=2)
    if do_rerank or (do_tlift and has_times):
        if len(q_pids) + len(g_pids) >= sparse_rerank_min:  # never the (q + g)^2 matrix: blocks on demand
            maps, transposed = torch.cat([q_maps, g_maps]), self_block_transposed(version)
            quiet = dict(chunk, progress=False)

            def self_block(rows, cols):  # qq or gg entries of the concatenated index space
                a, b = maps[torch.as_tensor(rows)], maps[torch.as_tensor(cols)]
                s = pairwise_scores(matcher, b, a, **quiet).t() if transposed else pairwise_scores(matcher, a, b,
                                                                                                  **quiet)
                return score_to_distance(s, distance).numpy()

            dist_rerank = rerank_sparse(stitched_block_fn(dist, self_block), len(q_pids), len(g_pids), k1=k1, k2=k2,
                                        lambda_value=lambda_value)
        else:
            qq = score_to_distance(pairwise_scores(matcher, q_maps, q_maps, **chunk), distance)
            gg = score_to_distance(pairwise_scores(matcher, g_maps, g_maps, **chunk), distance)
            if self_block_transposed(version):
                qq, gg = qq.t(), gg.t()
            full, num_q = full_distance_matrix(qq, dist, gg)
            del qq, gg
            dist_rerank = k_reciprocal_rerank(full, num_q, k1=k1, k2=k2, lambda_value=lambda_value)
            del full
        results.update(rank_metrics(dist_rerank, q_pids, g_pids, q_cams, g_cams, "_rerank", **metric_kw))
        dists["dist_rerank"] = dist_rerank
        if do_tlift and has_times:
            score_tlift = tlift(1 - dist_rerank, g_cams, np.asarray(gallery_times), q_cams,
                                np.asarray(query_times), num_cams=int(g_cams.max()) + 1, tau=tau, sigma=sigma,
                                K=K, alpha=alpha)
            dist_tlift = (1 - score_tlift).astype(np.float32)
            results.update(rank_metrics(dist_tlift, q_pids, g_pids, q_cams, g_cams, "_tlift", **metric_kw))
            dists["dist_tlift"] = dist_tlift
    if is_distributed():
        broadcast_object(results)
    return (results, dists) if return_dists else results


def evaluate_model(model: nn.Module, matcher: nn.Module, dataset, height: int, width: int, device,
                   fea_batch: int = 256, workers: int = 4, amp: bool = False, progress: bool = True,
                   **kwargs) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Extract the query and gallery maps of ``dataset`` and run :func:`evaluate_qaconv` on them (under torchrun:
    sharded extraction, :func:`sharded_feature_maps`; every rank calls it).

    Time stamps come from :func:`record_times` (TLift is skipped for datasets without them).

    Args:
        model: backbone; matcher: QAConv matcher; dataset: a ReidDataset (query, gallery, extra).
        height, width: input size. device: where both run. fea_batch: images per extraction batch.
        workers, amp, progress: see :func:`extract_feature_maps`.
        **kwargs: options of :func:`evaluate_qaconv` (``return_dists`` is forced on).
    Returns:
        (metrics dict of floats, distances dict).
    """
    qf = sharded_feature_maps(model, dataset.query, height, width, device, fea_batch, workers, amp, progress,
                              desc=f"{dataset.name} query")
    gf = sharded_feature_maps(model, dataset.gallery, height, width, device, fea_batch, workers, amp, progress,
                              desc=f"{dataset.name} gallery")
    kwargs["return_dists"] = True
    kwargs.setdefault("device", device)
    kwargs.setdefault("progress", progress)
    return evaluate_qaconv(matcher, qf, gf, dataset.query, dataset.gallery,
                           query_times=record_times(dataset, dataset.query),
                           gallery_times=record_times(dataset, dataset.gallery), **kwargs)
