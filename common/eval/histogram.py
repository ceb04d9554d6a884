"""Colour-histogram re-ID baseline features.

The default is the plain *global* colour histogram, which is what "colour-histogram baseline" means: one joint
``bins x bins x bins`` histogram over all pixels of the (resized) crop, L1-normalised, then square-rooted
(Hellinger / Bhattacharyya embedding, so Euclidean or cosine distance between features is the Hellinger
distance). ``stripes > 1`` concatenates one such histogram per horizontal stripe (a common, stronger variant,
e.g. the colour part of ELF / LOMO-style descriptors); ``joint=False`` uses per-channel histograms instead.
Features of the same image are identical whatever else is in the batch.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import numpy as np
from PIL import Image


def _channels(img: Image.Image, space: str) -> np.ndarray:
    """(H, W, 3) uint8 in the requested colour space."""
    if space == "hsv":
        return np.asarray(img.convert("RGB").convert("HSV"), dtype=np.uint8)
    if space == "rgb":
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    raise ValueError("space must be 'hsv' or 'rgb'")


def histogram_from_array(arr: np.ndarray, bins: int = 8, stripes: int = 1, joint: bool = True) -> np.ndarray:
    """Hellinger colour histogram of one image.

    Args:
        arr: (H, W, 3) uint8 image already in the target colour space.
        bins: bins per channel.
        stripes: number of equal horizontal stripes (1 = global histogram).
        joint: joint 3-D histogram (``bins**3`` per stripe) or concatenated per-channel (``3 * bins``).
    Returns:
        (D,) float32 with D = stripes * (bins**3 if joint else 3 * bins); each stripe L1-normalised then
        square-rooted, the whole vector scaled to unit L2 norm.
    """
    q = (arr.astype(np.int64) * bins) >> 8  # (H, W, 3) bin index per channel
    h = arr.shape[0]
    edges = np.linspace(0, h, stripes + 1).round().astype(int)
    parts = []
    for s in range(stripes):
        block = q[edges[s]:edges[s + 1]].reshape(-1, 3)
        if joint:
            idx = (block[:, 0] * bins + block[:, 1]) * bins + block[:, 2]
            hist = np.bincount(idx, minlength=bins ** 3).astype(np.float64)
        else:
            hist = np.concatenate([np.bincount(block[:, c], minlength=bins) for c in range(3)]).astype(np.float64)
        parts.append(np.sqrt(hist / max(hist.sum(), 1.0)))
    feat = np.concatenate(parts)
    return (feat / max(np.linalg.norm(feat), 1e-12)).astype(np.float32)


def histogram_features(img_paths: Iterable[str], bins: int = 8, space: str = "hsv", stripes: int = 1,
                       joint: bool = True, size: Tuple[int, int] = (128, 64)) -> np.ndarray:
    """Colour-histogram features of image files.

    Args:
        img_paths: image file paths (N of them).
        bins: bins per channel (8 -> 512-D joint histogram).
        space: 'hsv' (default) or 'rgb'.
        stripes: horizontal stripes; 1 (default) = plain global histogram.
        joint: joint 3-D histogram (default) or per-channel histograms.
        size: (H, W) every image is resized to first (None keeps the original size).
    Returns:
        (N, D) float32, see :func:`histogram_from_array`.
    """
    feats = []
    for path in img_paths:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            feats.append(histogram_from_array(_channels(img, space), bins, stripes, joint))
    dim = stripes * (bins ** 3 if joint else 3 * bins)
    return np.stack(feats) if feats else np.zeros((0, dim), np.float32)


def histogram_features_of_records(records: Sequence, **kwargs) -> np.ndarray:
    """:func:`histogram_features` of ``record.img_path`` for each record (``Record`` lists)."""
    return histogram_features([r.img_path for r in records], **kwargs)
