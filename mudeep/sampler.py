"""The original's training order (``Market_Triplet_Loader.preprocess``): per epoch, ``repeat`` passes; in each
pass the identities are shuffled and every identity contributes K consecutive images (drawn without replacement,
or with replacement when it has fewer than K). The loader reads this list in order with batch P*K and drop_last,
so a batch is P consecutive identity blocks of K. Unlike the original (Python / NumPy global RNGs), every draw comes
from a generator seeded by (seed, epoch), so a resumed run replays the same epoch.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, List, Sequence

import numpy as np
from torch.utils.data import Sampler

from common.data.samplers import extract_pids, mix_seed


class MuDeepSampler(Sampler):
    """Yield ``repeat * num_ids * K`` dataset indices per epoch (see the module docstring).

    Args:
        records_or_pids: training records (or pids) in dataset order.
        k: images per identity block (``TRAIN.K`` = 6).
        repeat: passes over the identities per epoch (3, hard-coded in the original).
        seed: base seed; epoch e's order depends on (seed, e) only.
    """

    def __init__(self, records_or_pids: Sequence, k: int = 6, repeat: int = 3, seed: int = 0):
        if k <= 0 or repeat <= 0:
            raise ValueError("k and repeat must be positive")
        self.k, self.repeat, self.seed, self.epoch = int(k), int(repeat), int(seed), 0
        self.pool = defaultdict(list)
        for i, pid in enumerate(extract_pids(records_or_pids)):
            self.pool[pid].append(i)
        self.pids = sorted(self.pool)
        self.num_short = sum(len(v) < self.k for v in self.pool.values())  # the original warns about these

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int = None) -> List[int]:
        """The epoch's index list, ``repeat`` blocks of ``num_ids * K``."""
        rng = np.random.default_rng(mix_seed(self.seed, self.epoch if epoch is None else epoch))
        out: List[int] = []
        for _ in range(self.repeat):
            for j in rng.permutation(len(self.pids)):
                imgs = self.pool[self.pids[j]]
                pick = rng.choice(len(imgs), self.k, replace=len(imgs) < self.k)
                out.extend(imgs[int(t)] for t in pick)
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.repeat * len(self.pids) * self.k


def iterations_per_epoch(num_ids: int, p: int, k: int, repeat: int = 3) -> int:
    """floor(repeat * num_ids * K / (P * K)): 187 on Market-1501 with P=12, K=6."""
    return (repeat * num_ids * k) // (p * k)
