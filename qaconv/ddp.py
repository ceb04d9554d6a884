"""QAConv under ``torchrun --nproc_per_node N``: what each rank needs so that a step equals one process on the
global batch (see ``common/distributed.py`` for the general argument and ``qaconv/README.md``, Multi-GPU).

* **Batches.** Every rank builds the *same* global sampler (seeded with ``--seed``, not the rank's seed: the
  1.x shuffle from the loader generator reseeded per epoch, the 2.x graph sampler from ``mix_seed(seed, epoch)``)
  and takes its contiguous share of each global batch through :class:`common.distributed.DistributedBatchSampler`
  (2.x: whole classes of K images; 1.x: the shuffle has no identity structure, group size 1).
* **Model.** DDP over the backbone + neck (``find_unused_parameters``: the layers past ``--final_layer`` get no
  gradient); ``--sync-bn`` for 1.x, whose backbone BN trains; 2.x keeps the backbone BN in eval mode.
* **Loss.** The matching losses and the class memory see the *global* batch of feature maps rebuilt with
  :func:`common.distributed.gather_with_grad` (done in :func:`qaconv.trainer.train_one_epoch`): every rank
  computes the same loss, the same matcher gradient and the same class-memory update, and the backbone gradient
  averaged by DDP is the single-process one. The criterion (matcher, class memory) is therefore not wrapped in
  DDP; it starts from rank 0's state (:func:`broadcast_state`) and stays identical on every rank.
* **Randomness.** Augmentation and loader workers are seeded per rank (:func:`common.distributed.rank_seed`: rank
  0 keeps the single-process seeds); checkpoints carry every rank's RNG state (``rng_states``).

Alone (no torchrun) every function here leaves the single-process behaviour exactly as it was.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch.utils.data import BatchSampler, RandomSampler

from common.data.dataset import ImageDataset
from common.data.loaders import EpochDataLoader, EpochWorkerSeeder
from common.distributed import (DistributedBatchSampler, broadcast_module, check_world_size, get_world_size,
                                rank_seed, restore_rng_states)
from common.errors import ReidError


def broadcast_state(*modules: torch.nn.Module) -> None:
    """:func:`common.distributed.broadcast_module` for each module: rank 0's parameters and buffers everywhere.

    Used for what DDP does not broadcast: the criterion (matcher, class memory) after it is built, and model and
    criterion after each 1.1 / 1.2 pre-training trial's random re-initialisation.
    """
    for module in modules:
        broadcast_module(module)


def sharded_loader(records, transform, batch_size: int, workers: int, seed: int, sampler=None,
                   group_size: int = 1, rank: Optional[int] = None,
                   world_size: Optional[int] = None) -> EpochDataLoader:
    """This rank's share of the single-process training loader of ``qaconv.engine.build_loader``.

    Args:
        records: training records.
        transform: training transform.
        batch_size: the *global* batch size (``-b``).
        workers: loader workers (seeded with the rank's seed).
        seed: ``--seed``: the global order uses it unchanged (the same on every rank).
        sampler: the graph sampler (2.x); None: the seeded shuffle with ``drop_last`` of 1.x.
        group_size: K images per identity of the sampler's batches (2.x), 1 for the shuffle.
        rank, world_size: default: this process's.
    Returns:
        a loader yielding (images (B / W, 3, H, W), pids, camids, indices).
    """
    dataset = ImageDataset(records, transform)
    generator = torch.Generator()
    if sampler is None:  # the generator drives the shuffle: reseeded per epoch from `seed`, same on every rank
        batches = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=True)
    else:
        batches = BatchSampler(sampler, batch_size, drop_last=False)
    pids = [r.pid for r in records] if group_size > 1 else None
    split = DistributedBatchSampler(batches, group_size, pids, rank=rank, world_size=world_size)
    return EpochDataLoader(dataset, batch_sampler=split,
                              num_workers=workers, pin_memory=torch.cuda.is_available(), generator=generator,
                              worker_init_fn=EpochWorkerSeeder(rank_seed(seed)) if workers > 0 else None,
                              seed=seed)


def check_batch_split(batch_size: int, group_size: int, last_batch: Optional[int] = None) -> None:
    """ReidError before training when the global batches cannot be split into equal shares of whole groups."""
    world = get_world_size()
    if world == 1:
        return
    for size in [batch_size] + ([last_batch] if last_batch else []):
        if size % (group_size * world):
            what = "the global batch" if size == batch_size else f"the last batch of a pre-epoch ({size} images)"
            raise ReidError(f"{what} of {size} images is not {world} equal shares of whole groups of {group_size} "
                            f"images", fix=f"pass a batch size (-b) whose number of classes (b / {group_size}) is a "
                                           f"multiple of --nproc_per_node {world}"
                                           + (" (or --gs_pre_epochs 0)" if size != batch_size else ""))


def restore_resume_state(rest: Dict, path: str) -> None:
    """Check the checkpoint's world size against this run and restore this rank's RNG state from it.

    A checkpoint without ``rng_states`` (older, or the original's) resumes alone exactly as before; one written by
    another number of processes is a ReidError naming both world sizes.
    """
    what = f"the checkpoint {path}"
    check_world_size(rest.get("world_size"), what)
    if rest.get("rng_states"):
        restore_rng_states(rest["rng_states"], what)
