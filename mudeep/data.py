"""Transforms, training loader and the original's plain-folder datasets (``TRAIN.ROOT``, ``TEST.QUERY``,
``TEST.GALLERY``).

Train: Resize to exactly (H, W), bicubic -> RandomHorizontalFlip(0.5) -> ToTensor -> Normalize(ImageNet) ->
RandomErasing(p 0.5, area 0.02-0.4, aspect 0.3-3.33, fill 0 = the mean colour after Normalize). Test: Resize
(bicubic) -> ToTensor -> Normalize. No padding / cropping.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional

import torch
from torch.utils.data import BatchSampler
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

from common.data.dataset import ImageDataset
from common.data.loaders import EpochDataLoader, EpochWorkerSeeder
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomErasing
from common.datasets.base import ReidDataset, Record, relabel
from common.distributed import DistributedBatchSampler, get_rank, get_world_size, rank_seed
from common.errors import ReidError
from mudeep.sampler import MuDeepSampler

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def train_transform(height: int, width: int, flip_p: float = 0.5, erasing_p: float = 0.5) -> T.Compose:
    steps = [T.Resize((height, width), interpolation=InterpolationMode.BICUBIC)]
    if flip_p > 0:
        steps.append(T.RandomHorizontalFlip(flip_p))
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if erasing_p > 0:
        steps.append(RandomErasing(probability=erasing_p, mean=(0.0, 0.0, 0.0)))
    return T.Compose(steps)


def test_transform(height: int, width: int) -> T.Compose:
    return T.Compose([T.Resize((height, width), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def build_train_loader(records, args, rank: Optional[int] = None,
                       world_size: Optional[int] = None) -> EpochDataLoader:
    """P*K batches read in the order of :class:`MuDeepSampler`, drop_last, seeded per epoch.

    Under torchrun (``world_size`` > 1; default: this process's) every rank draws the same global order (the
    sampler keeps the base ``--seed``) and takes its contiguous share of each global batch: P / W whole K-blocks
    (:class:`common.distributed.DistributedBatchSampler`); augmentation is seeded per rank (rank 0 keeps the
    single-process seed). ``rank`` / ``world_size`` build another rank's loader (tests).

    Returns:
        a loader with ``set_epoch(e)`` and ``identity_sampler`` (the :class:`MuDeepSampler`), yielding (images
        (B, 3, H, W), labels (B,), camids (B,), indices (B,)), B = P*K alone, P*K / W on each of W ranks.
    """
    sampler = MuDeepSampler(records, k=args.K, repeat=args.repeat, seed=args.seed)
    dataset = ImageDataset(records, train_transform(args.height, args.width, args.flip_p, args.erasing_p))
    world = get_world_size() if world_size is None else int(world_size)
    rank = get_rank() if rank is None else int(rank)
    if world == 1:  # one process: exactly the loader of before torchrun support
        loader = EpochDataLoader(dataset, batch_size=args.P * args.K, sampler=sampler, num_workers=args.workers,
                                 drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                                 worker_init_fn=EpochWorkerSeeder(args.seed) if args.workers > 0 else None,
                                 seed=args.seed)
    else:
        share = DistributedBatchSampler(BatchSampler(sampler, args.P * args.K, drop_last=True), args.K,
                                        pids=[r.pid for r in records], rank=rank, world_size=world)
        aug_seed = rank_seed(args.seed, rank)
        loader = EpochDataLoader(dataset, batch_sampler=share, num_workers=args.workers,
                                 pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                                 worker_init_fn=EpochWorkerSeeder(aug_seed) if args.workers > 0 else None,
                                 seed=aug_seed)
    loader.identity_sampler = sampler
    return loader


def folder_records(folder: str) -> List[Record]:
    """Market-named images of one folder (``PPPP_cC...``), sorted; non-image files skipped (the original crashed
    on them); the camera number may have several digits (the original read one). Camera ids become 0-based."""
    if not os.path.isdir(folder):
        raise ReidError(f"folder {folder} does not exist", where=folder,
                        fix="point --TRAIN.ROOT / --TEST.QUERY / --TEST.GALLERY at a folder of Market-named images")
    out = []
    for name in sorted(os.listdir(folder)):
        m = re.match(r"^(-?\d+)_c(\d+)", name)
        if not name.lower().endswith(IMAGE_EXTS) or m is None:
            continue
        out.append(Record(os.path.join(folder, name), int(m.group(1)), int(m.group(2)) - 1))
    if not out:
        raise ReidError(f"no Market-named image in {folder}", where=folder,
                        fix="file names must look like 0002_c1s1_000451_03.jpg")
    return out


def folder_dataset(train_root: str, query_root: str, gallery_root: str, name: str = "folders") -> ReidDataset:
    """A dataset from the original's three folders; junk (pid -1) dropped from query/gallery (the original ranks
    it out as junk), training ids relabelled in sorted order (the original's class index)."""
    train = relabel(r for r in folder_records(train_root) if r.pid >= 0) if train_root else []
    query = [r for r in folder_records(query_root) if r.pid >= 0] if query_root else []
    gallery = [r for r in folder_records(gallery_root) if r.pid >= 0] if gallery_root else []
    return ReidDataset(train, query, gallery, name, root=os.path.dirname(os.path.abspath(train_root or query_root)))
