"""Query x gallery distance matrices, computed in row chunks to bound memory.

``euclidean`` is the SQUARED Euclidean distance ``|q|^2 + |g|^2 - 2 q.g`` (torchreid's
``euclidean_squared_distance`` convention; the ranking is that of the plain Euclidean distance), clamped at 0.
``cosine`` is ``1 - cos(q, g)`` with features L2-normalised inside.

:func:`check_finite_distances` is the evaluators' shared guard against a diverged model: ``+inf`` is a legal
distance that ranks last; ``NaN`` (and ``-inf``, which no metric here produces) is not a distance, ranks last as
``+inf`` and is announced with a :class:`NonFiniteDistanceWarning` naming the count; a matrix with no finite entry
at all raises :class:`common.errors.ReidError`. :func:`rankable_distances` applies that rule.
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import ReidError

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


class NonFiniteDistanceWarning(RuntimeWarning):
    """A distance matrix holds NaN (or -inf) entries; they were ranked last, as +inf."""


def _numpy(distmat: ArrayLike) -> np.ndarray:
    if isinstance(distmat, torch.Tensor):
        distmat = distmat.detach().cpu().numpy()
    return np.asarray(distmat)


def check_finite_distances(distmat: ArrayLike, name: str = "distmat", stacklevel: int = 2) -> np.ndarray:
    """Find the non-finite entries of a distance matrix before it is ranked.

    ``+inf`` entries pass silently (they rank last). ``NaN`` and ``-inf`` entries are counted and announced with
    one :class:`NonFiniteDistanceWarning`, e.g. ``"distmat: 1 of 6 distances is NaN; ranked last (as +inf)"``.

    Args:
        distmat: (num_query, num_gallery) distances (numpy array or tensor; any shape is accepted).
        name: what the matrix is, for the messages (e.g. ``'market query x gallery'``).
        stacklevel: passed to :func:`warnings.warn` (2: the caller's line).
    Returns:
        bool numpy array of ``distmat``'s shape, True where the entry is not finite (NaN, +inf or -inf).
    Raises:
        ReidError: the matrix is not empty and none of its entries is finite (the model has diverged).
    """
    d = _numpy(distmat)
    if not np.issubdtype(d.dtype, np.floating):
        return np.zeros(d.shape, dtype=bool)
    bad = ~np.isfinite(d)
    if not bad.any():
        return bad
    n_nan, n_neg = int(np.isnan(d).sum()), int(np.isneginf(d).sum())
    if bad.all():
        raise ReidError(f"every distance is NaN/inf: the model has diverged ({name}: {d.size} entries, "
                        f"{n_nan} NaN, {d.size - n_nan} inf)",
                        fix="retrain with a lower --lr (a run stops on a non-finite loss and keeps its last good "
                            "checkpoint), or evaluate an earlier checkpoint with --resume")
    if n_nan or n_neg:
        n = n_nan + n_neg
        what = "NaN" if not n_neg else ("-inf" if not n_nan else f"NaN or -inf ({n_nan} NaN, {n_neg} -inf)")
        warnings.warn(f"{name}: {n} of {d.size} distances {'is' if n == 1 else 'are'} {what}; ranked last "
                      f"(as +inf)", NonFiniteDistanceWarning, stacklevel=stacklevel)
    return bad


def rankable_distances(distmat: ArrayLike, name: str = "distmat", stacklevel: int = 3) -> np.ndarray:
    """``distmat`` as a numpy array in which every non-finite entry is ``+inf`` (checked and warned about by
    :func:`check_finite_distances`); a stable argsort of a row then puts them last, in gallery order.

    Args:
        distmat: (num_query, num_gallery) distances.
        name: for the messages.
        stacklevel: of the warning (3: the caller of this function).
    Returns:
        (num_query, num_gallery) numpy array: the input itself when every entry is finite, else a copy.
    Raises:
        ReidError: no entry is finite.
    """
    d = _numpy(distmat)
    bad = check_finite_distances(d, name, stacklevel=stacklevel)
    if not bad.any():
        return d
    d = d.copy()
    d[bad] = np.inf
    return d
