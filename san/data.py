"""SAN's data pipeline: (person image, texture target) pairs, the release's torchreid transforms, P x K loader.

Image transform (train): ``Random2DTranslation`` (p 0.5: resize to 1.125 x and random-crop back) -> horizontal
flip (p 0.5) -> ToTensor -> ImageNet Normalize -> RandomErasing (p 0.5, filled with the ImageNet mean constants
in normalised space, the torchreid quirk). Test: resize, ToTensor, Normalize.
Texture: resized to (height, 2 x width) when its size differs (the release requires files of that size), ToTensor,
Normalize(0.5, 0.5) -> [-1, 1]; never flipped or cropped, as in the release (spec §10b-7).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torchvision.transforms as T
from torch.utils.data import RandomSampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from common.data.dataset import read_image
from common.data.loaders import EpochDataLoader, EpochWorkerSeeder
from common.data.samplers import RandomIdentitySampler
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomErasing
from common.datasets.base import Record


class Random2DTranslation:
    """With probability ``p``: resize to (round(1.125 H), round(1.125 W)) and random-crop (H, W); else resize to
    (H, W). Bilinear. Randomness from torch's global RNG (saved in checkpoints; workers are reseeded)."""

    def __init__(self, height: int, width: int, p: float = 0.5):
        self.height, self.width, self.p = height, width, p

    def __call__(self, img):
        if torch.rand(()).item() >= self.p:
            return TF.resize(img, [self.height, self.width], InterpolationMode.BILINEAR)
        nh, nw = int(round(self.height * 1.125)), int(round(self.width * 1.125))
        img = TF.resize(img, [nh, nw], InterpolationMode.BILINEAR)
        top = int(torch.randint(nh - self.height + 1, ()).item())
        left = int(torch.randint(nw - self.width + 1, ()).item())
        return TF.crop(img, top, left, self.height, self.width)


def build_image_transform(height: int, width: int, is_train: bool, random_erase: float = 0.5) -> T.Compose:
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not is_train:
        return T.Compose([T.Resize((height, width), interpolation=InterpolationMode.BILINEAR)] + norm)
    steps = [Random2DTranslation(height, width), T.RandomHorizontalFlip()] + norm
    if random_erase > 0:
        steps.append(RandomErasing(probability=random_erase, mean=IMAGENET_MEAN))
    return T.Compose(steps)


def load_texture(path: str, height: int, width: int) -> torch.Tensor:
    """A texture file as a (3, height, width) tensor in [-1, 1] (bilinear resize if its size differs)."""
    img = read_image(path)
    if img.size != (width, height):
        img = TF.resize(img, [height, width], InterpolationMode.BILINEAR)
    return TF.to_tensor(img) * 2.0 - 1.0


class PairedDataset:
    """Items ``(img (3, H, W), pid, camid, index, texture (3, H, 2W) or an empty tensor)``.

    Args:
        records: the images.
        texture_paths: one texture file per record, or None (no decoder: the baseline).
        transform: image transform; tex_size: (height, width) of the targets (H, 2W).
    """

    def __init__(self, records: Sequence[Record], texture_paths: Optional[Sequence[str]], transform, tex_size):
        self.records, self.texture_paths = list(records), texture_paths
        self.transform, self.tex_size = transform, tex_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        r = self.records[index]
        img = self.transform(read_image(r.img_path))
        tex = (load_texture(self.texture_paths[index], *self.tex_size) if self.texture_paths is not None
               else torch.zeros(0))
        return img, int(r.pid), int(r.camid), int(index), tex


def build_san_train_loader(records: Sequence[Record], texture_paths: Optional[Sequence[str]], height: int,
                           width: int, batch_size: int, num_instances: int = 4, identity_sampler: bool = True,
                           workers: int = 4, seed: int = 0, random_erase: float = 0.5) -> EpochDataLoader:
    """P x K (``identity_sampler``; the README command's RandomIdentitySampler) or shuffled batches, drop_last.

    Returns:
        an :class:`EpochDataLoader` (call ``set_epoch``) of (imgs, pids, camids, indices, textures) batches.
    """
    ds = PairedDataset(records, texture_paths, build_image_transform(height, width, True, random_erase),
                       (height, 2 * width))
    gen = torch.Generator()
    sampler = (RandomIdentitySampler(records, batch_size, num_instances, seed=seed) if identity_sampler
               else RandomSampler(ds, generator=gen))
    return EpochDataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                           pin_memory=torch.cuda.is_available(), generator=gen,
                           worker_init_fn=EpochWorkerSeeder(seed) if workers > 0 else None, seed=seed)
