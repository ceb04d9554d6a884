"""Training loader of the BoT baseline: P x K identity batches, or modality-balanced batches on SYSU-MM01."""
from __future__ import annotations

import torch

from common.data.dataset import ImageDataset
from common.data.loaders import EpochDataLoader, EpochWorkerSeeder, build_train_loader
from common.data.transforms import build_transforms
from common.datasets.base import ReidDataset
from crossmodal_bot.sampler import CrossModalityIdentitySampler


def build_bot_train_loader(dataset: ReidDataset, args) -> EpochDataLoader:
    """BoT augmentation (flip, pad-crop, random erasing) and identity sampling.

    For a cross-modality dataset (``dataset.protocol == 'sysu'``) each identity's K images are half RGB, half IR
    (the usual modality-aware batch composition) and an epoch is ``--sysu-epoch`` long ('images': as the
    cross-modal baseline, 'identities': one pass over the identities); otherwise the plain P x K sampler of
    ``common``.

    Returns:
        a loader with ``set_epoch(e)``, yielding (images (B, 3, H, W), pids (B,), camids (B,), indices (B,)).
    """
    tkw = dict(pad=args.pad, random_erase_p=args.random_erase)
    if dataset.protocol != "sysu":
        return build_train_loader(dataset.train, args.height, args.width, batch_size=args.batch_size,
                                  num_instances=args.num_instances, workers=args.workers, seed=args.seed, **tkw)
    sampler = CrossModalityIdentitySampler([r.pid for r in dataset.train], [r.camid for r in dataset.train],
                                           args.batch_size, args.num_instances, seed=args.seed,
                                           epoch_length=getattr(args, "sysu_epoch", "images"))
    images = ImageDataset(dataset.train, build_transforms(args.height, args.width, is_train=True, **tkw))
    return EpochDataLoader(images, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                           drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                           worker_init_fn=EpochWorkerSeeder(args.seed) if args.workers > 0 else None, seed=args.seed)
