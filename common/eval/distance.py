"""Query x gallery distance matrices, computed in row chunks to bound memory.

``euclidean`` is the SQUARED Euclidean distance ``|q|^2 + |g|^2 - 2 q.g`` (torchreid's
``euclidean_squared_distance`` convention; the ranking is that of the plain Euclidean distance), clamped at 0.
``cosine`` is ``1 - cos(q, g)`` with features L2-normalised inside.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[torch.Tensor, np.ndarray]
METRICS = ("euclidean", "cosine")


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() == 1:
        t = t.unsqueeze(0)
    return t.reshape(t.shape[0], -1).float()


def normalize_features(x: ArrayLike, eps: float = 1e-12) -> ArrayLike:
    """L2-normalise each row.

    Args:
        x: (N, D) torch tensor or numpy array (higher ranks are normalised along dim 1).
        eps: lower bound of the norm (zero rows stay zero).
    Returns:
        same type and shape as ``x``; rows of unit norm.
    """
    if isinstance(x, torch.Tensor):
        return F.normalize(x.float() if not x.is_floating_point() else x, p=2, dim=1, eps=eps)
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    norm = np.sqrt((arr * arr).sum(axis=1, keepdims=True))
    return arr / np.maximum(norm, eps)


def compute_distmat(qf: ArrayLike, gf: ArrayLike, metric: str = "euclidean", chunk_size: int = 4096,
                    device: Optional[Union[str, torch.device]] = None) -> np.ndarray:
    """Distance of every query feature to every gallery feature.

    Args:
        qf: (num_query, D) features (tensor or array; higher ranks are flattened to (N, -1)).
        gf: (num_gallery, D) features.
        metric: ``'euclidean'`` (squared Euclidean) or ``'cosine'`` (1 - cosine similarity).
        chunk_size: query rows per block; peak extra memory is about chunk_size x num_gallery floats.
        device: where to compute (e.g. ``'cuda'``); default the device of ``qf`` if a tensor, else CPU.
    Returns:
        (num_query, num_gallery) float32 numpy array (on the CPU).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    if device is None:
        device = qf.device if isinstance(qf, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    q, g = _as_tensor(qf), _as_tensor(gf).to(device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: query {tuple(q.shape)} vs gallery {tuple(g.shape)}")
    chunk_size = max(1, int(chunk_size))
    out = np.empty((q.shape[0], g.shape[0]), dtype=np.float32)
    if metric == "cosine":
        g = F.normalize(g, p=2, dim=1)
    else:
        g_sq = (g * g).sum(dim=1)
    with torch.no_grad():
        for start in range(0, q.shape[0], chunk_size):
            qc = q[start:start + chunk_size].to(device)
            if metric == "cosine":
                d = 1.0 - F.normalize(qc, p=2, dim=1) @ g.t()
            else:
                d = (qc * qc).sum(dim=1, keepdim=True) + g_sq.unsqueeze(0) - 2.0 * (qc @ g.t())
                d = d.clamp_(min=0)
            out[start:start + qc.shape[0]] = d.cpu().numpy()
    return out
