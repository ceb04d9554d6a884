"""Image transforms of the Bag-of-Tricks (reid-strong-baseline) recipe, with torch-RNG random erasing.

Training: Resize((h, w)) -> RandomHorizontalFlip -> Pad + RandomCrop((h, w)) -> [ColorJitter] -> ToTensor ->
Normalize -> RandomErasing. Testing: Resize -> ToTensor -> Normalize. Every random choice is drawn from torch's
global RNG (torchvision's transforms do so, and :class:`RandomErasing` here does too), so ``torch.manual_seed``
in the main process, or the per-worker seeding of :mod:`common.data.loaders`, makes augmentation reproducible.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Default fill of the official RandomErasing class (CIFAR-10 channel means); BoT's build_transforms passes the
# Normalize mean instead (cfg.INPUT.PIXEL_MEAN), and so does build_transforms below. Both are applied after Normalize.
ERASE_FILL = (0.4914, 0.4822, 0.4465)


class RandomErasing:
    """Random erasing (Zhong et al. 2020) as reid-strong-baseline applies it, on a (C, H, W) tensor.

    With probability ``probability``, up to 100 attempts draw a target area ``U(sl, sh) * H * W`` and an aspect
    ratio ``U(r1, 1 / r1)``; rectangle height ``round(sqrt(area * aspect))`` and width
    ``round(sqrt(area / aspect))``. The first rectangle strictly smaller than the image in both sides is placed
    uniformly (top-left corner in ``[0, H - h] x [0, W - w]``) and each channel is filled with ``mean[c]``
    (1-channel tensors get ``mean[0]``). If no attempt fits, the image is returned unchanged.

    Args:
        probability: chance of erasing an image.
        sl: minimum erased area fraction.
        sh: maximum erased area fraction.
        r1: minimum aspect ratio (the maximum is ``1 / r1``).
        mean: fill value per channel.
    """

    def __init__(self, probability: float = 0.5, sl: float = 0.02, sh: float = 0.4, r1: float = 0.3,
                 mean: Sequence[float] = ERASE_FILL):
        if not (0.0 <= probability <= 1.0):
            raise ValueError(f"RandomErasing probability must be in [0, 1], got {probability}")
        if not (0.0 < sl <= sh <= 1.0) or not (0.0 < r1 <= 1.0):
            raise ValueError(f"RandomErasing needs 0 < sl <= sh <= 1 and 0 < r1 <= 1, got sl={sl} sh={sh} r1={r1}")
        self.probability, self.sl, self.sh, self.r1 = probability, sl, sh, r1
        self.mean = tuple(float(m) for m in mean)

    @staticmethod
    def _uniform(a: float, b: float) -> float:
        return a + (b - a) * torch.rand(()).item()

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Erase one rectangle of ``img`` in place.

        Args:
            img: (C, H, W) float tensor (normally already normalised).
        Returns:
            the same tensor object, possibly with one rectangle overwritten.
        """
        if torch.rand(()).item() >= self.probability:
            return img
        channels, height, width = img.shape[-3:]
        area = height * width
        for _ in range(100):
            target_area = self._uniform(self.sl, self.sh) * area
            aspect = self._uniform(self.r1, 1.0 / self.r1)
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if h < height and w < width:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                if channels == 3:
                    for c in range(3):
                        img[c, top:top + h, left:left + w] = self.mean[c]
                else:
                    img[0, top:top + h, left:left + w] = self.mean[0]
                return img
        return img

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(probability={self.probability}, sl={self.sl}, sh={self.sh}, "
                f"r1={self.r1}, mean={self.mean})")


def build_transforms(height: int, width: int, is_train: bool, flip_p: float = 0.5, pad: int = 10,
                     random_erase_p: float = 0.5, color_jitter: float = 0.0,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """The train or test transform of the BoT recipe.

    Args:
        height: output image height.
        width: output image width.
        is_train: build the augmenting training transform (else the deterministic test transform).
        flip_p: horizontal flip probability (0 disables the flip).
        pad: zero padding before the random crop back to (height, width) (0 disables pad + crop).
        random_erase_p: random erasing probability (0 disables it); erased pixels get the values ``mean``
            (after Normalize), as reid-strong-baseline's ``RandomErasing(mean=cfg.INPUT.PIXEL_MEAN)``.
        color_jitter: jitter strength s; s > 0 adds ``ColorJitter(brightness=s, contrast=s, saturation=s,
            hue=0)`` after the crop. 0 (the BoT default) leaves it out.
        mean: Normalize mean.
        std: Normalize std.
    Returns:
        a ``torchvision.transforms.Compose`` mapping a PIL image to a (3, height, width) float tensor.
    """
    resize = T.Resize((height, width), interpolation=InterpolationMode.BILINEAR)
    to_tensor = [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if not is_train:
        return T.Compose([resize] + to_tensor)
    steps = [resize]
    if flip_p > 0:
        steps.append(T.RandomHorizontalFlip(p=flip_p))
    if pad > 0:
        steps += [T.Pad(pad), T.RandomCrop((height, width))]
    if color_jitter > 0:
        s = float(color_jitter)
        steps.append(T.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0))
    steps += to_tensor
    if random_erase_p > 0:
        steps.append(RandomErasing(probability=random_erase_p, mean=mean))
    return T.Compose(steps)
