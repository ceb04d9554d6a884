"""Per-epoch pseudo-labels (spec §4): features -> sparse k-reciprocal Jaccard -> DBSCAN -> labels and centres.

Ground-truth identities never enter here; :func:`cluster_quality` compares pseudo-labels with hidden identities for
the log only.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from common.neighbors import jaccard_from_features

# README eps per dataset (spec §10)
EPS = {"market": 0.4, "duke": 0.6, "msmt": 0.7}


def jaccard(features: torch.Tensor, k1: int = 30, k2: int = 6, device=None, max_dist=None) -> sp.csr_matrix:
    """SpCL's clustering distance (k1 neighbours searched, self included) as a sparse (N, N) CSR matrix; pairs
    farther than ``max_dist`` are not stored (DBSCAN with eps <= max_dist gives the same labels)."""
    return jaccard_from_features(features, k1=k1, k2=k2, metric="euclidean", device=device, max_dist=max_dist)


def dbscan(dist, eps: float, min_samples: int = 4) -> np.ndarray:
    """DBSCAN on a precomputed (sparse or dense) distance matrix -> (N,) labels, -1 = outlier."""
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=-1).fit_predict(dist)


def idx_to_labels(labels: np.ndarray) -> Tuple[np.ndarray, int]:
    """Clustered images keep their DBSCAN label; the k-th outlier (in index order) gets ``num_cluster + k``.

    Args:
        labels: (N,) DBSCAN labels (-1 outliers).
    Returns:
        ``(idx2labels (N,) int64, num_cluster)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_cluster = len(set(labels.tolist()) - {-1})
    out = labels.copy()
    outliers = np.nonzero(labels < 0)[0]
    out[outliers] = num_cluster + np.arange(len(outliers))
    return out, num_cluster


def cluster_centers(features: torch.Tensor, idx2labels: np.ndarray, num_cluster: int) -> torch.Tensor:
    """(K, D) L2-normalised mean feature of each cluster 0..K-1 (outliers skipped)."""
    lab = torch.as_tensor(idx2labels)
    keep = lab < num_cluster
    sums = torch.zeros(num_cluster, features.shape[1], dtype=features.dtype)
    sums.index_add_(0, lab[keep], features[keep])
    counts = torch.bincount(lab[keep], minlength=num_cluster).clamp(min=1).unsqueeze(1).to(features.dtype)
    return torch.nn.functional.normalize(sums / counts, dim=1)


def cluster_quality(idx2labels: np.ndarray, num_cluster: int, hidden_ids: np.ndarray) -> Dict[str, float]:
    """Diagnostics against the hidden identities (never used for training).

    Returns:
        ``nmi`` / ``ari`` over all images (outliers as singletons, i.e. ``idx2labels``), ``nmi_clustered`` /
        ``ari_clustered`` over clustered images only, ``purity`` (clustered images whose cluster majority id is
        theirs), ``clusters``, ``outliers``.
    """
    hidden_ids = np.asarray(hidden_ids)
    keep = idx2labels < num_cluster
    out = {"clusters": int(num_cluster), "outliers": int((~keep).sum()),
           "nmi": float(normalized_mutual_info_score(hidden_ids, idx2labels)),
           "ari": float(adjusted_rand_score(hidden_ids, idx2labels))}
    if keep.sum() > 1:
        out["nmi_clustered"] = float(normalized_mutual_info_score(hidden_ids[keep], idx2labels[keep]))
        out["ari_clustered"] = float(adjusted_rand_score(hidden_ids[keep], idx2labels[keep]))
    return out


def core_distances(dist: sp.csr_matrix, min_samples: int = 4) -> np.ndarray:
    """(N,) DBSCAN core distance of each image: its ``min_samples``-th smallest distance, itself included (the
    smallest eps that makes it a core point); ``inf`` where fewer pairs are stored (they lie beyond the stored
    range, e.g. beyond ``max_dist``). The eps of a dataset can be read off this distribution (a k-distance plot).
    """
    dist = dist.tocsr()
    out = np.full(dist.shape[0], np.inf)
    for i in range(dist.shape[0]):
        row = dist.data[dist.indptr[i]:dist.indptr[i + 1]]
        others = np.sort(row[dist.indices[dist.indptr[i]:dist.indptr[i + 1]] != i])
        if len(others) >= min_samples - 1:
            out[i] = 0.0 if min_samples <= 1 else others[min_samples - 2]
    return out


def distance_summary(core: np.ndarray, qs=(10, 25, 50, 75, 90)) -> Dict[str, float]:
    """Percentiles (nearest rank below: ``sorted[floor(q / 100 * (N - 1))]``, so ``inf`` entries give ``inf``, not
    NaN) of the core distances -> ``{'core_p10': ..., ...}``."""
    srt = np.sort(np.asarray(core, dtype=np.float64))
    return {f"core_p{q}": float(srt[int(np.floor(q / 100 * (len(srt) - 1)))]) for q in qs}


def pseudo_labels(features: torch.Tensor, eps: float, k1: int = 30, k2: int = 6, min_samples: int = 4,
                  device=None) -> Tuple[np.ndarray, int, torch.Tensor]:
    """One clustering step.

    Args:
        features: (N, D) unit-norm features of the sorted training images.
    Returns:
        ``(idx2labels (N,), num_cluster K, centres (K, D))``.
    """
    idx2labels, k, centres, _ = pseudo_labels_with_core(features, eps, k1, k2, min_samples, device)
    return idx2labels, k, centres


def pseudo_labels_with_core(features: torch.Tensor, eps: float, k1: int = 30, k2: int = 6, min_samples: int = 4,
                            device=None) -> Tuple[np.ndarray, int, torch.Tensor, np.ndarray]:
    """:func:`pseudo_labels` plus the (N,) core distances (``inf`` beyond eps, where no pair is stored)."""
    dist = jaccard(features, k1, k2, device, max_dist=eps)
    idx2labels, k = idx_to_labels(dbscan(dist, eps, min_samples))
    return idx2labels, k, cluster_centers(features, idx2labels, k), core_distances(dist, min_samples)
