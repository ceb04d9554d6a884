"""Training and test DataLoaders with reproducible order and augmentation.

Reproducibility contract of :func:`build_train_loader`: the index order of epoch e depends only on
``(seed, e)`` (identity sampler, or a shuffle from a generator reseeded per epoch), and with ``workers > 0`` each
worker seeds ``random``, NumPy and torch from ``(seed, e, worker_id)``, so augmentations repeat too. Call
``loader.set_epoch(e)`` at the start of every epoch (a resumed run then replays epoch e exactly); a loader
iterated again without ``set_epoch`` moves on to the next epoch by itself. With ``workers=0`` augmentation
draws from the main process's global torch RNG (saved in checkpoints by :mod:`common.checkpoint`).
"""
from __future__ import annotations

import random
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from common.data.dataset import ImageDataset
from common.data.samplers import RandomIdentitySampler, mix_seed
from common.data.transforms import build_transforms
from common.datasets.base import Record


def seed_worker(worker_id: int, seed: Optional[int] = None, epoch: int = 0) -> None:
    """Seed ``random``, NumPy and torch inside a DataLoader worker.

    Args:
        worker_id: the worker's id (what DataLoader passes to ``worker_init_fn``).
        seed: base seed; None keeps torch's own per-worker seed and derives the ``random`` / NumPy seeds from
            it (the recipe of the PyTorch reproducibility notes), usable directly as ``worker_init_fn``.
        epoch: epoch number mixed into the seed when ``seed`` is given.
    """
    if seed is None:
        s = torch.initial_seed()
    else:
        s = mix_seed(seed, epoch, worker_id)
        torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % (2 ** 32))


class EpochWorkerSeeder:
    """Picklable ``worker_init_fn`` calling :func:`seed_worker` with a base seed and the current epoch.

    Args:
        seed: base seed.
        epoch: epoch number (updated by :meth:`EpochDataLoader.set_epoch`).
    """

    def __init__(self, seed: int, epoch: int = 0):
        self.seed, self.epoch = int(seed), int(epoch)

    def __call__(self, worker_id: int) -> None:
        seed_worker(worker_id, self.seed, self.epoch)


class EpochDataLoader(DataLoader):
    """A DataLoader with ``set_epoch``: updates the sampler (or batch sampler), the loader generator and the worker
    seeds.

    Args:
        seed: base seed of the run.
        *args, **kwargs: passed to ``torch.utils.data.DataLoader``.
    """

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_seed = int(seed)
        self.epoch = 0
        self._epoch_set = True
        self._iterated = False
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration replay epoch ``epoch``."""
        self.epoch = int(epoch)
        self._epoch_set = True
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        if hasattr(self.batch_sampler, "set_epoch"):  # a batch sampler passed in, e.g. a rank's share under torchrun
            self.batch_sampler.set_epoch(self.epoch)
        if self.generator is not None:
            self.generator.manual_seed(mix_seed(self.base_seed, self.epoch, 1))
        if isinstance(self.worker_init_fn, EpochWorkerSeeder):
            self.worker_init_fn.epoch = self.epoch

    def __iter__(self):
        if self._iterated and not self._epoch_set:
            self.set_epoch(self.epoch + 1)
        self._iterated, self._epoch_set = True, False
        return super().__iter__()


def build_train_loader(records: Sequence[Record], height: int, width: int, batch_size: int = 64,
                       num_instances: int = 4, workers: int = 4, seed: int = 0,
                       transform: Optional[Callable] = None, **transform_kwargs) -> EpochDataLoader:
    """Training loader: P x K identity batches (or a seeded shuffle), BoT augmentation, drop_last.

    Args:
        records: training records (pids 0..N-1).
        height: image height.
        width: image width.
        batch_size: images per batch (P * K when ``num_instances > 0``).
        num_instances: K; 0 or less uses a plain seeded random shuffle instead of identity sampling.
        workers: DataLoader worker processes.
        seed: base seed of order and augmentation.
        transform: optional transform replacing the default ``build_transforms(height, width, is_train=True)``.
        **transform_kwargs: options of :func:`common.data.transforms.build_transforms`.
    Returns:
        an :class:`EpochDataLoader` yielding (images (B, 3, H, W), pids (B,), camids (B,), indices (B,)).
    """
    if transform is None:
        transform = build_transforms(height, width, is_train=True, **transform_kwargs)
    dataset = ImageDataset(records, transform)
    generator = torch.Generator()
    if num_instances > 0:
        sampler = RandomIdentitySampler(records, batch_size, num_instances, seed=seed)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    return EpochDataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                           pin_memory=torch.cuda.is_available(), persistent_workers=False, generator=generator,
                           worker_init_fn=EpochWorkerSeeder(seed) if workers > 0 else None, seed=seed)


def build_test_loader(records: Sequence[Record], height: int, width: int, batch_size: int = 128,
                      workers: int = 4, transform: Optional[Callable] = None, **transform_kwargs) -> DataLoader:
    """Test loader in record order (no shuffle, last partial batch kept).

    Args:
        records: query or gallery records.
        height: image height.
        width: image width.
        batch_size: images per batch.
        workers: DataLoader worker processes.
        transform: optional transform replacing ``build_transforms(height, width, is_train=False)``.
        **transform_kwargs: options of :func:`common.data.transforms.build_transforms` (e.g. ``mean``, ``std``).
    Returns:
        a DataLoader yielding (images (B, 3, H, W), pids (B,), camids (B,), indices (B,)).
    """
    if transform is None:
        transform = build_transforms(height, width, is_train=False, **transform_kwargs)
    return DataLoader(ImageDataset(records, transform), batch_size=batch_size, shuffle=False, drop_last=False,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=False)
