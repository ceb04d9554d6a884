"""Training loader of the BoT baseline: P x K identity batches, or modality-balanced batches on SYSU-MM01.

Under torchrun every rank builds the same global sampler (base ``--seed``: the same order everywhere) and takes its
contiguous share of each global batch (:class:`common.distributed.DistributedBatchSampler`: P / W whole
identities, K images each); augmentation is seeded per rank. ``--batch-size`` stays the global P x K.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import BatchSampler

from common.data.dataset import ImageDataset
from common.data.loaders import EpochDataLoader, EpochWorkerSeeder, build_train_loader
from common.data.samplers import RandomIdentitySampler
from common.data.transforms import build_transforms
from common.datasets.base import ReidDataset
from common.distributed import DistributedBatchSampler, get_rank, get_world_size, rank_seed
from crossmodal_bot.sampler import CrossModalityIdentitySampler


def _transform_kwargs(args) -> dict:
    return dict(pad=args.pad, random_erase_p=args.random_erase, flip_p=getattr(args, "flip_p", 0.5))


def build_bot_train_loader(dataset: ReidDataset, args, rank: Optional[int] = None,
                           world_size: Optional[int] = None) -> EpochDataLoader:
    """BoT augmentation (flip, pad-crop, random erasing) and identity sampling.

    For a cross-modality dataset (``dataset.protocol == 'sysu'``) each identity's K images are half RGB, half IR
    (the usual modality-aware batch composition) and an epoch is ``--sysu-epoch`` long ('images': as the
    cross-modal baseline, 'identities': one pass over the identities); otherwise the plain P x K sampler of
    ``common``. Under torchrun: this rank's share of every global batch (see the module doc); ``rank`` and
    ``world_size`` (default: this process's) build another rank's loader, e.g. in a test.

    Returns:
        a loader with ``set_epoch(e)``, yielding (images (B, 3, H, W), pids (B,), camids (B,), indices (B,)), B =
        ``--batch-size`` alone, ``--batch-size / W`` on each of W ranks.
    """
    tkw = _transform_kwargs(args)
    world = get_world_size() if world_size is None else int(world_size)
    rank = get_rank() if rank is None else int(rank)
    if dataset.protocol != "sysu":
        if world == 1:  # one process: the shared loader, exactly as before torchrun support
            return build_train_loader(dataset.train, args.height, args.width, batch_size=args.batch_size,
                                      num_instances=args.num_instances, workers=args.workers, seed=args.seed, **tkw)
        sampler = RandomIdentitySampler(dataset.train, args.batch_size, args.num_instances, seed=args.seed)
    else:
        sampler = CrossModalityIdentitySampler([r.pid for r in dataset.train], [r.camid for r in dataset.train],
                                               args.batch_size, args.num_instances, seed=args.seed,
                                               epoch_length=getattr(args, "sysu_epoch", "images"))
    images = ImageDataset(dataset.train, build_transforms(args.height, args.width, is_train=True, **tkw))
    if world == 1:
        return EpochDataLoader(images, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                               drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                               worker_init_fn=EpochWorkerSeeder(args.seed) if args.workers > 0 else None,
                               seed=args.seed)
    share = DistributedBatchSampler(BatchSampler(sampler, args.batch_size, drop_last=True), args.num_instances,
                                    pids=[r.pid for r in dataset.train], rank=rank, world_size=world)
    aug_seed = rank_seed(args.seed, rank)  # the order is the global one; the augmentation is the rank's own
    return EpochDataLoader(images, batch_sampler=share, num_workers=args.workers,
                              pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                              worker_init_fn=EpochWorkerSeeder(aug_seed) if args.workers > 0 else None,
                              seed=aug_seed)
