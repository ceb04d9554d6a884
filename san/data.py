"""SAN's data pipeline: (person image, texture target) pairs, the release's torchreid transforms, P x K loader.

Image transform (train): ``Random2DTranslation`` (p 0.5: resize to 1.125 x and random-crop back) -> horizontal
flip (p 0.5) -> ToTensor -> ImageNet Normalize -> RandomErasing (p 0.5, filled with the ImageNet mean constants
in normalised space, the torchreid quirk). Test: resize, ToTensor, Normalize.
Texture: resized to (height, 2 x width) when its size differs (the release requires files of that size), ToTensor,
Normalize(0.5, 0.5) -> [-1, 1]; never flipped or cropped, as in the release (spec §10b-7).
Under torchrun every rank builds the same global sampler (base ``--seed``) and takes its contiguous share of each
global batch (:class:`common.distributed.DistributedBatchSampler`: P / W whole identities); the augmentation is the
rank's own (``rank_seed``). ``--train-batch-size`` stays the global batch.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torchvision.transforms as T
from torch.utils.data import BatchSampler, RandomSampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from common.data.dataset import read_image
from common.data.loaders import EpochDataLoader, EpochWorkerSeeder
from common.data.samplers import RandomIdentitySampler
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomErasing
from common.datasets.base import Record
from common.distributed import DistributedBatchSampler, get_rank, get_world_size, rank_seed


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


def build_image_transform(height: int, width: int, is_train: bool, random_erase: float = 0.5,
                          translate_p: float = 0.5, flip_p: float = 0.5) -> T.Compose:
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not is_train:
        return T.Compose([T.Resize((height, width), interpolation=InterpolationMode.BILINEAR)] + norm)
    steps = [Random2DTranslation(height, width, translate_p), T.RandomHorizontalFlip(flip_p)] + norm
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
                           workers: int = 4, seed: int = 0, random_erase: float = 0.5, translate_p: float = 0.5,
                           flip_p: float = 0.5, rank: Optional[int] = None,
                           world_size: Optional[int] = None) -> EpochDataLoader:
    """P x K (``identity_sampler``; the README command's RandomIdentitySampler) or shuffled batches, drop_last.

    ``translate_p`` / ``flip_p``: probabilities of the random translation and flip (0.5 in the release).
    Under torchrun: this rank's share of every global batch (``rank`` / ``world_size`` default to this process's;
    others build another rank's loader, e.g. in a test).
    Returns:
        an :class:`EpochDataLoader` (call ``set_epoch``) of (imgs, pids, camids, indices, textures) batches of
        ``batch_size`` images alone, ``batch_size / W`` on each of W ranks.
    """
    ds = PairedDataset(records, texture_paths,
                       build_image_transform(height, width, True, random_erase, translate_p, flip_p),
                       (height, 2 * width))
    gen = torch.Generator()
    sampler = (RandomIdentitySampler(records, batch_size, num_instances, seed=seed) if identity_sampler
               else RandomSampler(ds, generator=gen))
    world = get_world_size() if world_size is None else int(world_size)
    rank = get_rank() if rank is None else int(rank)
    if world == 1:  # one process: exactly as before torchrun support
        return EpochDataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                               pin_memory=torch.cuda.is_available(), generator=gen,
                               worker_init_fn=EpochWorkerSeeder(seed) if workers > 0 else None, seed=seed)
    # the loader generator (seeded from the un-ranked seed each epoch) drives the shuffle: the same on every rank;
    # the workers' augmentation seeds are the rank's own
    share = DistributedBatchSampler(BatchSampler(sampler, batch_size, drop_last=True),
                                    num_instances if identity_sampler else 1,
                                    pids=[r.pid for r in records] if identity_sampler else None,
                                    rank=rank, world_size=world)
    return EpochDataLoader(ds, batch_sampler=share, num_workers=workers, pin_memory=torch.cuda.is_available(),
                           generator=gen,
                           worker_init_fn=EpochWorkerSeeder(rank_seed(seed, rank)) if workers > 0 else None,
                           seed=seed)
