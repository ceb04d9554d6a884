"""The original's ``RandomMultipleGallerySampler`` (cluster-contrast) and a fixed-length batch stream (IterLoader).

One pass: pseudo-identities in a random order; per identity a random anchor, then ``num_instances - 1`` images of
the identity from *other cameras* (without replacement when at least ``num_instances`` exist, else with), or, if
the identity was seen by one camera only, from its other images (same rule); a single-image identity contributes
its anchor only. Passes are concatenated and cut into batches (a pass's last partial batch dropped, as the
DataLoader's ``drop_last``); an epoch is exactly ``iters`` batches, restarting passes as needed (``IterLoader``).

All draws come from one ``numpy.random.RandomState`` seeded from ``(seed, epoch)`` (the original mixes torch,
``random`` and NumPy global generators), so an epoch replays exactly after a resume.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, List, Sequence

import numpy as np
from torch.utils.data import Sampler

from common.data.samplers import mix_seed


class RandomMultipleGallerySampler:
    """Args: labels (M,) pseudo-labels and cams (M,) camera ids of the epoch's training list; num_instances K."""

    def __init__(self, labels: Sequence[int], cams: Sequence[int], num_instances: int = 4):
        self.labels, self.cams = np.asarray(labels), np.asarray(cams)
        self.num_instances = int(num_instances)
        self.index = defaultdict(list)
        for i, y in enumerate(self.labels.tolist()):
            self.index[y].append(i)
        self.pids = sorted(self.index)

    def one_pass(self, rng: np.random.RandomState) -> List[int]:
        """The index list of one pass over the pseudo-identities."""
        out: List[int] = []
        k = self.num_instances
        for p in rng.permutation(len(self.pids)):
            members = self.index[self.pids[p]]
            anchor = members[rng.randint(len(members))]
            out.append(anchor)
            other_cam = [m for m in members if self.cams[m] != self.cams[anchor]]
            pool = other_cam if other_cam else [m for m in members if m != anchor]
            if not pool or k <= 1:
                continue
            out.extend(int(pool[j]) for j in rng.choice(len(pool), size=k - 1, replace=len(pool) < k))
        return out


class IterBatchSampler(Sampler):
    """``iters`` batches of ``batch_size`` indices for one epoch (a ``batch_sampler`` for the DataLoader)."""

    def __init__(self, sampler: RandomMultipleGallerySampler, batch_size: int, iters: int, seed: int, epoch: int):
        self.sampler, self.batch_size, self.iters = sampler, int(batch_size), int(iters)
        self.seed, self.epoch = int(seed), int(epoch)

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.RandomState(mix_seed(self.seed, self.epoch, 7) % (2 ** 32))
        made = 0
        while made < self.iters:
            idx = self.sampler.one_pass(rng)
            if len(idx) < self.batch_size:
                raise ValueError(f"one sampler pass yields {len(idx)} images, fewer than a batch "
                                 f"({self.batch_size}); lower --batch-size or --num-instances")
            for s in range(0, len(idx) - self.batch_size + 1, self.batch_size):
                yield idx[s:s + self.batch_size]
                made += 1
                if made == self.iters:
                    return

    def __len__(self) -> int:
        return self.iters
