"""QAConv's image transforms: the test transform, the three training regimes, and ``RandomOcclusion``.

As in ShengcaiLiao/QAConv, images are **not** normalised by the ImageNet mean and std: they reach the network as
``ToTensor()`` values in [0, 1], although the backbone is ImageNet-pretrained.

Regimes (``build_train_transform(..., regime=...)``):

* ``none``: resize only (QAConv 1.1/1.2 start with it and switch once the training accuracy passes ``--acc_thr``).
* ``flip_occlusion`` (QAConv 1.0, and 1.1 after the switch): flip, resize, random occlusion.
* ``full`` (QAConv 1.2 after the switch; 2.x from the start): resize, pad 10, random crop, flip, rotation of at
  most 5 degrees, colour jitter, random occlusion.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image
from torchvision import transforms as T

REGIMES = ("none", "flip_occlusion", "full")


class RandomOcclusion:
    """Paste a white square at a random place of a PIL image (QAConv's block occlusion).

    The side is ``randint(max(1, floor(S * min_size)), floor(S * max_size))`` with ``S = min(H, W)`` (upper bound
    exclusive, NumPy's global generator, as the original); the top-left corner is ``(randint(W - s),
    randint(H - s))``. ``max_size == 0`` disables it.

    Args:
        min_size: smallest side as a fraction of ``S``.
        max_size: largest side (exclusive) as a fraction of ``S``.
    """

    def __init__(self, min_size: float = 0.0, max_size: float = 0.8):
        if not 0 <= min_size <= max_size <= 1:
            raise ValueError(f"RandomOcclusion needs 0 <= min_size <= max_size <= 1, got {min_size}, {max_size}")
        self.min_size, self.max_size = float(min_size), float(max_size)

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.max_size == 0:
            return img
        w, h = img.size
        s_img = min(w, h)
        lo, hi = max(1, int(s_img * self.min_size)), int(s_img * self.max_size)
        if hi <= lo:
            return img
        side = int(np.random.randint(lo, hi))
        x0 = int(np.random.randint(w - side)) if w > side else 0
        y0 = int(np.random.randint(h - side)) if h > side else 0
        out = img.copy()
        out.paste((255, 255, 255), (x0, y0, x0 + side, y0 + side))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


def _resize(height: int, width: int) -> T.Resize:
    return T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC)


def build_test_transform(height: int, width: int) -> T.Compose:
    """``Resize((height, width), bicubic) -> ToTensor()``: (3, height, width) float in [0, 1]."""
    return T.Compose([_resize(height, width), T.ToTensor()])


def build_train_transform(height: int, width: int, regime: str = "full", min_size: float = 0.0,
                          max_size: float = 0.8, pad: int = 10, rotation: float = 5.0) -> T.Compose:
    """The training transform of one regime (see the module docstring); output (3, height, width) in [0, 1].

    Args:
        height: network input height.
        width: network input width.
        regime: ``none``, ``flip_occlusion`` or ``full``.
        min_size: ``RandomOcclusion`` smallest side fraction (``--min_size``).
        max_size: ``RandomOcclusion`` largest side fraction (``--max_size``; 0 disables occlusion).
        pad: zero padding before the random crop (``full`` only).
        rotation: largest rotation in degrees (``full`` only).
    """
    if regime == "none":
        return build_test_transform(height, width)
    if regime == "flip_occlusion":
        return T.Compose([T.RandomHorizontalFlip(0.5), _resize(height, width),
                          RandomOcclusion(min_size, max_size), T.ToTensor()])
    if regime == "full":
        return T.Compose([
            _resize(height, width), T.Pad(pad), T.RandomCrop((height, width)), T.RandomHorizontalFlip(0.5),
            T.RandomRotation(rotation),
            T.ColorJitter(brightness=(0.5, 2.0), contrast=(0.5, 2.0), saturation=(0.5, 2.0), hue=(-0.1, 0.1)),
            RandomOcclusion(min_size, max_size), T.ToTensor()])
    raise ValueError(f"unknown augmentation regime {regime!r}; choose one of {REGIMES}")


def regime_for(version: str, switched: bool) -> str:
    """The regime a QAConv version trains with, before (``switched=False``) or after the ``--acc_thr`` switch.

    Args:
        version: '1.0', '1.1', '1.2', '2.0' or '2.1'.
        switched: whether the training accuracy has passed ``--acc_thr`` (1.1 and 1.2 only).
    Returns:
        a name of :data:`REGIMES`.
    """
    if version == "1.0":
        return "flip_occlusion"
    if version in ("1.1", "1.2"):
        if not switched:
            return "none"
        return "flip_occlusion" if version == "1.1" else "full"
    if version in ("2.0", "2.1"):
        return "full"
    raise ValueError(f"unknown QAConv version {version!r}")


def describe(transform: Optional[T.Compose]) -> str:
    """One line naming the steps of a Compose (for the log)."""
    if transform is None:
        return "none"
    return " -> ".join(type(t).__name__ for t in transform.transforms)
