"""Modality-aware P x K identity sampler for RGB-infrared training (SYSU-MM01).

Each batch holds P identities with K images each, K/2 from RGB cameras and K/2 from IR cameras, so the
batch-hard triplet loss always sees cross-modality positives. This is the usual batch composition of
cross-modality baselines (e.g. Ye et al.'s AGW ``IdentitySampler``, which draws the same number of visible and
thermal images per identity); written here as a plain index sampler over one mixed record list.

Epoch length (``epoch_length``): ``'images'`` (default) as the cross-modal baseline (mangye16/Cross-Modal-Re-ID-
baseline), whose epoch is ``N // (P * K/2) + 1`` batches with N = max(number of RGB, number of IR training images):
about one pass over the larger modality, 696 batches on SYSU-MM01 with P x K = 16 x 4 (22,258 RGB images), each
batch P identities drawn at random without replacement. ``'identities'``: one pass over the identities in a random
order (395 // 16 = 24 batches on SYSU-MM01), so an epoch is ~29x shorter and the epoch-based schedule (warm-up,
decays at 40 and 70) acts on far fewer iterations than BoT on Market-1501 (~200 batches) or the baseline.

Reference:
    Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", arXiv 1703.07737 (P x K).
    Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021 (AGW baseline).
"""
from __future__ import annotations

from typing import Callable, Collection, Dict, Iterator, List, Sequence, Union

import numpy as np
from torch.utils.data import Sampler

SYSU_IR_CAMIDS = frozenset({2, 5})  # SYSU cameras 3 and 6, 0-based


class CrossModalityIdentitySampler(Sampler[int]):
    """Yields dataset indices forming consecutive P x K batches (``P = batch_size // num_instances``).

    ``epoch_length='images'`` (default): ``max(n_rgb, n_ir) // (P * (K // 2)) + 1`` batches per epoch, each of P
    distinct identities drawn uniformly at random (independently per batch), as the cross-modal baseline.
    ``'identities'``: every identity (with at least one image) is visited once in a random order, P per batch;
    the last incomplete group of identities is dropped. For each chosen identity ``K/2`` RGB and ``K - K/2`` IR
    images are drawn without replacement, with replacement when the identity has fewer; an identity lacking one
    modality takes all K from the other. Within an identity the K indices come RGB first, then IR.

    Args:
        pids: (N,) identity of every training record.
        camids: (N,) 0-based camera of every record.
        batch_size: P * K.
        num_instances: K (even for an exact half/half split).
        is_infrared: a set of IR camids (default SYSU's {2, 5}) or a callable ``camid -> bool``.
        seed: base seed; the order of epoch e depends only on (seed, e).
        epoch_length: ``'images'`` or ``'identities'`` (see above).
    Shapes:
        ``len(sampler) = num_batches * P * K`` indices per epoch, ``num_batches`` as :attr:`num_batches`.
    """

    EPOCH_LENGTHS = ("images", "identities")

    def __init__(self, pids: Sequence[int], camids: Sequence[int], batch_size: int, num_instances: int,
                 is_infrared: Union[Callable[[int], bool], Collection[int]] = SYSU_IR_CAMIDS, seed: int = 0,
                 epoch_length: str = "images"):
        if epoch_length not in self.EPOCH_LENGTHS:
            raise ValueError(f"epoch_length must be one of {self.EPOCH_LENGTHS}, got {epoch_length!r}")
        self.epoch_length = epoch_length
        if batch_size % num_instances:
            raise ValueError(f"batch_size {batch_size} must be a multiple of num_instances {num_instances}")
        self.pids = np.asarray(pids, dtype=np.int64)
        self.camids = np.asarray(camids, dtype=np.int64)
        if len(self.pids) != len(self.camids):
            raise ValueError("pids and camids must have the same length")
        self.batch_size, self.num_instances = batch_size, num_instances
        self.num_pids_per_batch = batch_size // num_instances
        is_ir = is_infrared if callable(is_infrared) else (lambda c, s=frozenset(is_infrared): int(c) in s)
        self.is_ir = np.array([bool(is_ir(int(c))) for c in self.camids], dtype=bool)
        self.seed, self.epoch = seed, 0
        self.index: Dict[int, Dict[str, np.ndarray]] = {}
        for pid in np.unique(self.pids):
            own = np.flatnonzero(self.pids == pid)
            self.index[int(pid)] = {"rgb": own[~self.is_ir[own]], "ir": own[self.is_ir[own]]}
        self.identities = sorted(self.index)
        if len(self.identities) < self.num_pids_per_batch:
            raise ValueError(f"{len(self.identities)} identities cannot fill P = {self.num_pids_per_batch}")

    @property
    def num_batches(self) -> int:
        """Batches per epoch: ``max(n_rgb, n_ir) // (P * max(1, K // 2)) + 1`` ('images') or ``num_ids // P``."""
        p = self.num_pids_per_batch
        if self.epoch_length == "identities":
            return len(self.identities) // p
        n_max = max(int(self.is_ir.sum()), int((~self.is_ir).sum()))
        return n_max // (p * max(1, self.num_instances // 2)) + 1

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``__iter__`` yields."""
        self.epoch = int(epoch)

    @staticmethod
    def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> List[int]:
        if n == 0:
            return []
        return rng.choice(pool, size=n, replace=len(pool) < n).tolist()

    def identity_indices(self, rng: np.random.Generator, pid: int) -> List[int]:
        """K indices of ``pid``: K/2 RGB then K - K/2 IR (all K from one modality when the other is missing)."""
        rgb, ir = self.index[pid]["rgb"], self.index[pid]["ir"]
        k = self.num_instances
        if len(rgb) == 0:
            return self._draw(rng, ir, k)
        if len(ir) == 0:
            return self._draw(rng, rgb, k)
        return self._draw(rng, rgb, k // 2) + self._draw(rng, ir, k - k // 2)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        p = self.num_pids_per_batch
        if self.epoch_length == "identities":
            order = rng.permutation(len(self.identities))
            groups = [order[start:start + p] for start in range(0, len(order) - p + 1, p)]
        else:
            groups = [rng.choice(len(self.identities), size=p, replace=False) for _ in range(self.num_batches)]
        out: List[int] = []
        for group in groups:
            for j in group:
                out.extend(self.identity_indices(rng, self.identities[j]))
        return iter(out)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size
