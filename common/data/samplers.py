"""P x K identity sampler (torchreid / Bag-of-Tricks semantics) with a reproducible per-epoch order.

Per epoch, each identity's image indices are shuffled (padded by sampling with replacement when the identity has
fewer than K images) and cut into groups of K (a last incomplete group is dropped). Then, while at least P
identities still have groups, P distinct identities are picked at random and each emits its next group. Batches
of ``batch_size = P * K`` consecutive indices therefore hold P identities x K images.

All randomness comes from a ``torch.Generator`` seeded from ``(seed, epoch)`` only, so ``set_epoch(e)`` after a
resume reproduces exactly the order the interrupted run saw in epoch ``e``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def mix_seed(*values: int) -> int:
    """A 63-bit seed derived from a tuple of integers (NumPy SeedSequence; stable across versions).

    Args:
        values: non-negative integers, e.g. (seed, epoch) or (seed, epoch, worker_id).
    Returns:
        an int in [0, 2**63).
    """
    state = np.random.SeedSequence([int(v) % (2 ** 63) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def extract_pids(records_or_pids: Sequence) -> List[int]:
    """Person ids of a list of records, of ``(path, pid, camid, ...)`` tuples, or of plain integers.

    Args:
        records_or_pids: :class:`common.datasets.base.Record` objects, tuples or ints (or a 1-D array).
    Returns:
        list of int pids, one per item.
    """
    pids = []
    for item in records_or_pids:
        if hasattr(item, "pid"):
            pids.append(int(item.pid))
        elif isinstance(item, (tuple, list)):
            pids.append(int(item[1]))
        else:
            pids.append(int(item))
    return pids


class RandomIdentitySampler(Sampler):
    """Yield dataset indices so that every ``batch_size`` consecutive ones are P identities x K instances.

    Use it with ``DataLoader(batch_size=batch_size, drop_last=True, sampler=this)``.

    Args:
        records_or_pids: the training records (or their pids), in dataset order.
        batch_size: P * K.
        num_instances: K, images per identity in a batch.
        seed: base seed; the order of epoch e depends on (seed, e) only.
    """

    def __init__(self, records_or_pids: Sequence, batch_size: int, num_instances: int, seed: int = 0):
        if num_instances <= 0 or batch_size <= 0 or batch_size % num_instances != 0:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of num_instances "
                             f"({num_instances}): batch_size = P identities x K instances")
        self.batch_size, self.num_instances = int(batch_size), int(num_instances)
        self.num_pids_per_batch = self.batch_size // self.num_instances
        self.seed = int(seed)
        self.epoch = 0
        self.index_dic: Dict[int, List[int]] = defaultdict(list)
        for index, pid in enumerate(extract_pids(records_or_pids)):
            self.index_dic[pid].append(index)
        self.pids = sorted(self.index_dic)
        if len(self.pids) < self.num_pids_per_batch:
            raise ValueError(f"RandomIdentitySampler: {len(self.pids)} identities, fewer than the "
                             f"{self.num_pids_per_batch} identities per batch (batch_size / num_instances). "
                             f"Fix: lower --batch-size or raise --num-instances.")
        self._cache_epoch: Optional[int] = None
        self._cache: List[int] = []

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` and ``__len__`` use."""
        self.epoch = int(epoch)

    def _build(self, epoch: int) -> List[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        k = self.num_instances
        groups: Dict[int, List[List[int]]] = {}
        for pid in self.pids:
            idxs = self.index_dic[pid]
            if len(idxs) < k:  # pad by sampling with replacement, as np.random.choice(replace=True)
                idxs = [idxs[int(j)] for j in torch.randint(len(idxs), (k,), generator=g)]
            idxs = [idxs[int(j)] for j in torch.randperm(len(idxs), generator=g)]
            groups[pid] = [idxs[i:i + k] for i in range(0, len(idxs) - k + 1, k)]
        available = list(self.pids)
        next_group = {pid: 0 for pid in self.pids}
        out: List[int] = []
        p = self.num_pids_per_batch
        while len(available) >= p:
            chosen = [available[int(j)] for j in torch.randperm(len(available), generator=g)[:p]]
            for pid in chosen:
                out.extend(groups[pid][next_group[pid]])
                next_group[pid] += 1
            exhausted = {pid for pid in chosen if next_group[pid] == len(groups[pid])}
            if exhausted:
                available = [pid for pid in available if pid not in exhausted]
        return out

    def indices(self, epoch: Optional[int] = None) -> List[int]:
        """The full index list of an epoch (cached for the current one).

        Args:
            epoch: epoch to build; default the current ``self.epoch``.
        Returns:
            list of dataset indices, length a multiple of ``batch_size``.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if epoch != self._cache_epoch:
            self._cache, self._cache_epoch = self._build(epoch), epoch
        return self._cache

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.indices()))

    def __len__(self) -> int:
        return len(self.indices())
