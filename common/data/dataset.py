"""Map-style image dataset over :class:`common.datasets.base.Record` lists.

Each item is ``(img, pid, camid, index)``: the (optionally transformed) image, its person id, its 0-based camera
id and its position in the record list, so that features extracted through a loader can be matched back to
records even when the loader reorders them.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from common.datasets.base import Record


class ImageReadError(OSError):
    """An image file is missing or cannot be decoded. The message names the path and the likely fix."""


def read_image(path: str) -> Image.Image:
    """Open an image file as an RGB PIL image (fully decoded, file closed).

    Args:
        path: image file path.
    Returns:
        the image in RGB mode (grey-scale and palette images are converted; IR images become 3 equal channels).
    Raises:
        ImageReadError: when the file is missing or is not a readable image.
    """
    if not os.path.isfile(path):
        raise ImageReadError(
            f"image file {path!r} does not exist. Fix: check --data-dir (the dataset root must contain the "
            f"benchmark's folders), re-extract the dataset archive, or delete a stale cached split file.")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageReadError(
            f"cannot decode image {path!r} ({type(e).__name__}: {e}). Fix: the file is truncated or not an "
            f"image; re-download / re-extract the dataset, or remove the file and rebuild the split.") from e


class ImageDataset:
    """Images of a list of records.

    Args:
        records: sequence of :class:`Record` (or any ``(img_path, pid, camid, ...)`` tuples).
        transform: callable applied to the PIL image (e.g. :func:`common.data.transforms.build_transforms`);
            ``None`` returns the PIL image itself.
        root: optional folder prepended to relative ``img_path`` values.
    """

    def __init__(self, records: Sequence[Record], transform: Optional[Callable] = None, root: Optional[str] = None):
        self.records = list(records)
        self.transform = transform
        self.root = root

    def __len__(self) -> int:
        return len(self.records)

    def path(self, index: int) -> str:
        """The file path of record ``index`` (joined with ``root`` when relative)."""
        p = self.records[index][0]
        if self.root and not os.path.isabs(p):
            p = os.path.join(self.root, p)
        return p

    def __getitem__(self, index: int) -> Tuple[object, int, int, int]:
        """Load one image.

        Args:
            index: position in ``records``.
        Returns:
            (img, pid, camid, index): img is the transformed image (for the standard transforms a float tensor of
            shape (3, H, W)) or a PIL RGB image when ``transform`` is None.
        """
        rec = self.records[index]
        img = read_image(self.path(index))
        if self.transform is not None:
            img = self.transform(img)
        return img, int(rec[1]), int(rec[2]), int(index)
