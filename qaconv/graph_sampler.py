"""Graph Sampler (GS) of QAConv-GS (Liao & Shao, CVPR 2022), with an explicit, resumable state.

Every epoch the sampler
  1. picks one random image per class,
  2. asks the caller's ``distance_fn`` for the class-to-class distance of those images (the caller extracts
     features with the current model and scores them with QAConv: distance = -score at HEAD),
  3. optionally re-ranks that class graph (v2.0: k-reciprocal re-ranking of the tiled [[D, D], [D, D]] matrix),
  4. takes, for every class, its k = batch_size // num_instance - 1 nearest other classes,
  5. builds one batch per class: [its k neighbours..., the class itself], ``num_instance`` images each, read
     sequentially from every class's shuffled image list starting at that class's pointer (a list that runs out
     is reshuffled and its pointer reset, so a small class repeats images),
  6. shuffles the order of the N_cls batches and flattens them.
A DataLoader with ``batch_size`` and no ``drop_last`` therefore runs exactly N_cls iterations per epoch and
every class is the anchor of exactly one batch.

The per-class shuffled lists and pointers persist across epochs (as in the original); here they are explicit
(:class:`ClassCursors`) and part of :meth:`GraphSampler.state_dict`, so a resumed run continues identically.
All randomness of epoch ``e`` comes from a NumPy generator seeded with ``mix_seed(seed, e)``; the initial
shuffle of the lists from a separate stream of ``seed``.

v2.0's ``gs_pre_epochs``: epochs ``< pre_epochs`` use a random P x K-style index (:func:`random_pk_index`)
instead of the graph (no model call, cursors untouched).
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from common.data.samplers import extract_pids, mix_seed

# mix_seed(seed) equals mix_seed(seed, 0) (SeedSequence pads with zeros): the initial shuffle gets its own stream.
_INIT_STREAM = 2 ** 62
_SELF_MASK = 1e15


def build_index_dic(pids: Sequence[int]) -> "OrderedDict[int, List[int]]":
    """Dataset indices of every pid, pids in order of first appearance.

    Args:
        pids: (num_images,) person id of every dataset item.
    Returns:
        ordered dict pid -> list of dataset indices (ascending).
    """
    index_dic: "OrderedDict[int, List[int]]" = OrderedDict()
    for index, pid in enumerate(pids):
        index_dic.setdefault(int(pid), []).append(index)
    return index_dic


@dataclass
class ClassCursors:
    """Per-class shuffled image lists and read pointers; they persist across epochs.

    Attributes:
        lists: one list per class (class position = position in the pid order), a permutation of its images.
        pointers: (N_cls,) next position to read in each list.
    """

    lists: List[List[int]]
    pointers: List[int]

    @classmethod
    def create(cls, index_dic: Dict[int, List[int]], rng: np.random.Generator) -> "ClassCursors":
        """Shuffle a copy of every class's image list and set all pointers to 0."""
        lists = []
        for images in index_dic.values():
            images = list(images)
            lists.append([images[i] for i in rng.permutation(len(images))])
        return cls(lists, [0] * len(lists))

    def take(self, j: int, count: int, rng: np.random.Generator) -> List[int]:
        """Read ``count`` images of class ``j`` sequentially from its pointer.

        When the read reaches the end of the list (also exactly at the end) the list is reshuffled with ``rng``
        and the pointer goes back to 0; reading continues in the new order.

        Args:
            j: class position.
            count: images to read (``num_instance``).
            rng: generator used for the reshuffles.
        Returns:
            list of ``count`` dataset indices.
        """
        images = self.lists[j]
        out: List[int] = []
        while len(out) < count:
            start = self.pointers[j]
            end = start + (count - len(out))
            out.extend(images[start:end])
            self.pointers[j] = end
            if end >= len(images):
                images = [images[i] for i in rng.permutation(len(images))]
                self.lists[j] = images
                self.pointers[j] = 0
        return out

    def check(self, index_dic: Dict[int, List[int]]) -> None:
        """Raise ValueError unless every list is a permutation of the matching class's images."""
        if len(self.lists) != len(index_dic) or len(self.pointers) != len(index_dic):
            raise ValueError(f"cursor state has {len(self.lists)} classes, the training set {len(index_dic)}")
        for j, (pid, images) in enumerate(index_dic.items()):
            if sorted(self.lists[j]) != sorted(images) or not 0 <= self.pointers[j] < len(images):
                raise ValueError(f"cursor state of class position {j} (pid {pid}) does not match the training set "
                                 f"(a state_dict saved for another dataset or split?)")


def nearest_classes(dist: np.ndarray, k: int) -> np.ndarray:
    """The k nearest other classes of every class.

    The diagonal gets +1e15 (no self-neighbour), then each row's k smallest distances are taken in ascending
    order (stable sort: ties go to the lower class position).

    Args:
        dist: (N, N) class distance (smaller = more similar).
        k: neighbours per class, 0 <= k <= N - 1.
    Returns:
        (N, k) int64 class positions, nearest first.
    """
    dist = np.array(dist, dtype=np.float64)
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"class distance must be square, got shape {dist.shape}")
    n = dist.shape[0]
    if not 0 <= k <= n - 1:
        raise ValueError(f"k = {k} nearest classes requested but there are only {n} classes")
    dist[np.arange(n), np.arange(n)] += _SELF_MASK
    return np.argsort(dist, axis=1, kind="stable")[:, :k].astype(np.int64)


def graph_batches(index_dic: Dict[int, List[int]], topk_index: np.ndarray, num_instance: int,
                  rng: np.random.Generator, state: ClassCursors) -> List[int]:
    """Assemble one epoch of graph-sampled batches (spec section 5.1, steps 5-6).

    For class i (in pid order) the group is ``[topk_index[i]..., i]``; each class j of the group contributes
    ``num_instance`` images read with :meth:`ClassCursors.take` (mutates ``state``). The N_cls batches are then
    put in a random order (``rng``) and flattened.

    Args:
        index_dic: pid -> dataset indices, pids in order of first appearance (defines the class positions).
        topk_index: (N_cls, k) int, the k nearest other classes of each class as class positions.
        num_instance: K, images per class in a batch.
        rng: generator of the epoch (reshuffles of exhausted lists, then the batch order).
        state: per-class lists and pointers, updated in place.
    Returns:
        list of N_cls * (k + 1) * K dataset indices; consecutive blocks of (k + 1) * K are the batches.
    """
    topk_index = np.asarray(topk_index, dtype=np.int64)
    n = len(index_dic)
    if topk_index.ndim != 2 or topk_index.shape[0] != n:
        raise ValueError(f"topk_index must have shape (N_cls={n}, k), got {topk_index.shape}")
    if num_instance <= 0:
        raise ValueError(f"num_instance must be positive, got {num_instance}")
    if n and (topk_index.min(initial=0) < 0 or topk_index.max(initial=0) >= n):
        raise ValueError(f"topk_index holds class positions outside [0, {n})")
    batches = np.empty((n, (topk_index.shape[1] + 1) * num_instance), dtype=np.int64)
    for anchor in range(n):
        batch: List[int] = []
        for j in topk_index[anchor].tolist() + [anchor]:
            batch.extend(state.take(j, num_instance, rng))
        batches[anchor] = batch
    return batches[rng.permutation(n)].reshape(-1).tolist()


def random_pk_index(index_dic: Dict[int, List[int]], num_instance: int, batch_size: int,
                    rng: np.random.Generator) -> List[int]:
    """v2.0 pre-epoch index: shuffled groups of K images of one class each.

    Per class (pid order): a copy of its images; with fewer than K images it is padded to K by drawing from
    them with replacement; shuffled; the first ``g * K`` kept, ``g = max(n // K, 1)`` groups, capped at
    ``batch_size`` groups (the original compares the group count with batch_size). All groups of all classes are
    then shuffled together and flattened, so batches of ``batch_size`` may hold a class twice and batch
    boundaries need not fall on class boundaries of the P x K kind.

    Args:
        index_dic: pid -> dataset indices.
        num_instance: K.
        batch_size: images per batch (only used for the cap).
        rng: generator of the epoch.
    Returns:
        list of dataset indices, length :func:`random_pk_length`.
    """
    groups: List[List[int]] = []
    for images in index_dic.values():
        images = list(images)
        if len(images) < num_instance:
            images += [images[i] for i in rng.integers(0, len(images), num_instance - len(images))]
        images = [images[i] for i in rng.permutation(len(images))]
        g = min(len(images) // num_instance, batch_size)
        groups.extend(images[t * num_instance:(t + 1) * num_instance] for t in range(g))
    return [i for t in rng.permutation(len(groups)) for i in groups[t]]


def random_pk_length(index_dic: Dict[int, List[int]], num_instance: int, batch_size: int) -> int:
    """Length of :func:`random_pk_index` (deterministic: it depends on the class sizes only)."""
    return sum(min(max(len(v) // num_instance, 1), batch_size) * num_instance for v in index_dic.values())


def rerank_class_distance(dist: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """v2.0 re-ranking of the class graph: k-reciprocal re-ranking of the tiled [[D, D], [D, D]] matrix.

    Every class has an exact duplicate in the 2N pool; the query-vs-gallery block (N, N) is returned.

    Args:
        dist: (N, N) class distance.
        k1, k2, lambda_value: re-ranking parameters (the original's defaults).
    Returns:
        (N, N) re-ranked distance.
    """
    from qaconv.rerank import k_reciprocal_rerank  # lazy: optional dependency inside the method folder

    dist = np.asarray(dist)
    n = dist.shape[0]
    tiled = np.block([[dist, dist], [dist, dist]])
    out = np.asarray(k_reciprocal_rerank(tiled, n, k1=k1, k2=k2, lambda_value=lambda_value))
    if out.shape != (n, n):
        raise ValueError(f"k_reciprocal_rerank returned shape {out.shape}, expected ({n}, {n})")
    return out


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


class GraphSampler(Sampler):
    """Per-epoch graph sampling of batches of ``batch_size / num_instance`` mutually close classes.

    Use it with ``DataLoader(batch_size=batch_size, sampler=this)`` (no ``drop_last`` needed: the length is a
    multiple of ``batch_size`` on graph epochs); call ``set_epoch(e)`` before each epoch (the common
    ``EpochDataLoader`` does). The distance is computed in ``__iter__`` (once per epoch; a second ``__iter__`` of
    the same epoch returns the cached order).

    Args:
        records: training records (or ``(path, pid, ...)`` tuples, or pids), in dataset order.
        distance_fn: ``distance_fn(indices: List[int]) -> (n, n)`` class distance of those dataset images
            (NumPy array or tensor; smaller = more similar), called with one image per class in pid order.
        batch_size: images per batch; must be a multiple of ``num_instance``.
        num_instance: K, images per class in a batch.
        seed: base seed; epoch e uses ``mix_seed(seed, e)``.
        verbose: log the graph timings every epoch (the original's ``--gs_verbose``).
        log: the logging function.
        rerank: v2.0 k-reciprocal re-ranking of the class graph (``qaconv.rerank``).
        pre_epochs: v2.0 ``gs_pre_epochs``: epochs below this use :func:`random_pk_index`.

    Attributes (of the last graph epoch):
        dist: (N_cls, N_cls) class distance used for the neighbours (after re-ranking, without the self mask).
        topk_index: (N_cls, k) nearest classes.
        graph_indices: (N_cls,) the dataset image chosen for each class.
        graph_time: seconds spent on the graph (distance + re-ranking + neighbours + assembly).
    """

    def __init__(self, records: Sequence, distance_fn: Callable[[List[int]], np.ndarray], batch_size: int = 64,
                 num_instance: int = 2, seed: int = 0, verbose: bool = False, log: Callable[[str], None] = print,
                 rerank: bool = False, pre_epochs: int = 0):
        super().__init__()
        if num_instance <= 0 or batch_size <= 0 or batch_size % num_instance != 0:
            raise ValueError(f"GraphSampler: batch_size ({batch_size}) must be a positive multiple of num_instance "
                             f"({num_instance}). Fix: choose --batch_size = (neighbours + 1) x --num_instance.")
        self.records = records
        self.distance_fn = distance_fn
        self.batch_size, self.num_instance = int(batch_size), int(num_instance)
        self.k = self.batch_size // self.num_instance - 1
        self.seed = int(seed)
        self.verbose, self.log = bool(verbose), log
        self.rerank, self.pre_epochs = bool(rerank), int(pre_epochs)
        self.index_dic = build_index_dic(extract_pids(records))
        self.pids = list(self.index_dic)
        self.num_pids = len(self.pids)
        if self.num_pids < self.k + 1:
            raise ValueError(f"GraphSampler: {self.num_pids} classes, fewer than the {self.k + 1} classes of one "
                             f"batch (batch_size {self.batch_size} / num_instance {self.num_instance}). Fix: lower "
                             f"--batch_size or raise --num_instance so that batch_size / num_instance <= "
                             f"{self.num_pids}.")
        self.cursors = ClassCursors.create(self.index_dic, np.random.default_rng(mix_seed(self.seed, _INIT_STREAM)))
        self.epoch = 0
        self._built_epoch: Optional[int] = None
        self._indices: List[int] = []
        self.dist: Optional[np.ndarray] = None
        self.topk_index: Optional[np.ndarray] = None
        self.graph_indices: Optional[np.ndarray] = None
        self.graph_epoch: Optional[int] = None
        self.graph_time = 0.0

    # ------------------------------------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that the next ``__iter__`` builds (and ``__len__`` reports)."""
        self.epoch = int(epoch)

    def is_graph_epoch(self, epoch: Optional[int] = None) -> bool:
        """Whether ``epoch`` (default: the current one) uses the graph rather than the pre-epoch random index."""
        return (self.epoch if epoch is None else int(epoch)) >= self.pre_epochs

    def _graph_index(self, epoch: int, rng: np.random.Generator) -> List[int]:
        start = time.time()
        chosen = [images[int(rng.integers(len(images)))] for images in self.index_dic.values()]
        dist = _as_numpy(self.distance_fn(list(chosen)))
        if dist.shape != (self.num_pids, self.num_pids):
            raise ValueError(f"distance_fn returned shape {dist.shape}, expected ({self.num_pids}, {self.num_pids})")
        t_dist = time.time() - start
        if self.rerank:
            dist = rerank_class_distance(dist)
        t_rerank = time.time() - start - t_dist
        topk_index = nearest_classes(dist, self.k)
        indices = graph_batches(self.index_dic, topk_index, self.num_instance, rng, self.cursors)
        self.dist, self.topk_index = dist, topk_index
        self.graph_indices, self.graph_epoch = np.asarray(chosen, dtype=np.int64), epoch
        self.graph_time = time.time() - start
        if self.verbose:
            extra = f", re-rank {t_rerank:.3f} s" if self.rerank else ""
            self.log(f"GraphSampler: epoch {epoch}: distance of {self.num_pids} classes {t_dist:.3f} s{extra}, "
                     f"total GS time {self.graph_time:.3f} s")
        return indices

    def indices(self, epoch: Optional[int] = None) -> List[int]:
        """The full index list of an epoch (built on the first request, then cached until another epoch is built).

        Building a graph epoch calls ``distance_fn`` and advances the per-class cursors.

        Args:
            epoch: epoch to build; default the current ``self.epoch``.
        Returns:
            list of dataset indices.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if epoch != self._built_epoch:
            rng = np.random.default_rng(mix_seed(self.seed, epoch))
            if self.is_graph_epoch(epoch):
                self._indices = self._graph_index(epoch, rng)
            else:
                self._indices = random_pk_index(self.index_dic, self.num_instance, self.batch_size, rng)
            self._built_epoch = epoch
        return self._indices

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.indices()))

    def __len__(self) -> int:
        if self.is_graph_epoch():
            return self.num_pids * self.batch_size
        return random_pk_length(self.index_dic, self.num_instance, self.batch_size)

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, object]:
        """Cursor state and the last built epoch's order (tensors and ints: safe for ``weights_only`` loading).

        Returns:
            dict with ``seed``, ``num_classes``, ``lists`` (concatenated per-class lists, int64), ``pointers``
            (N_cls,), ``built_epoch`` (-1 if none) and ``indices`` (that epoch's order, int64).
        """
        return {"seed": self.seed, "num_classes": self.num_pids,
                "lists": torch.tensor([i for images in self.cursors.lists for i in images], dtype=torch.int64),
                "pointers": torch.tensor(self.cursors.pointers, dtype=torch.int64),
                "built_epoch": -1 if self._built_epoch is None else int(self._built_epoch),
                "indices": torch.tensor(self._indices, dtype=torch.int64)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore :meth:`state_dict`: the next epoch continues from the saved cursors; ``set_epoch`` to the saved
        ``built_epoch`` replays that epoch's order without calling ``distance_fn``.

        Raises:
            ValueError: when the state belongs to a different training set.
        """
        flat = torch.as_tensor(state["lists"]).tolist()
        sizes = [len(v) for v in self.index_dic.values()]
        if int(state["num_classes"]) != self.num_pids or len(flat) != sum(sizes):
            raise ValueError(f"GraphSampler state has {int(state['num_classes'])} classes / {len(flat)} images, the "
                             f"training set {self.num_pids} / {sum(sizes)}")
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        cursors = ClassCursors([flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
                               torch.as_tensor(state["pointers"]).tolist())
        cursors.check(self.index_dic)
        self.cursors = cursors
        built = int(state["built_epoch"])
        self._built_epoch = None if built < 0 else built
        self._indices = torch.as_tensor(state["indices"]).tolist()

    # ------------------------------------------------------------------------------------------------ saving
    def save_graph(self, path: str) -> str:
        """Write the last graph epoch to an npz (the original's ``--gs_save``, which crashes at HEAD).

        Keys: ``epoch``, ``graph_indices`` (N_cls,) the image per class, ``filenames`` (N_cls,) their paths (when
        the records carry paths), ``pids`` (N_cls,), ``dist`` (N_cls, N_cls), ``topk_index`` (N_cls, k) and
        ``indices`` (the epoch's sampled order). Written to ``path + '.tmp.npz'`` then renamed over ``path``.

        Args:
            path: output file (conventionally ``<out>/gs<epoch>.npz``).
        Returns:
            ``path``.
        Raises:
            RuntimeError: no graph epoch has been built yet.
        """
        if self.dist is None or self.graph_epoch is None:
            raise RuntimeError("GraphSampler.save_graph: no graph built yet (iterate a graph epoch first; epochs "
                               f"below pre_epochs={self.pre_epochs} use the random index)")
        filenames = [str(self.records[i][0]) if isinstance(self.records[i], (tuple, list)) else ""
                     for i in self.graph_indices.tolist()]
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".tmp.npz"
        indices = self._indices if self._built_epoch == self.graph_epoch else []
        np.savez_compressed(tmp, epoch=np.int64(self.graph_epoch), graph_indices=self.graph_indices,
                            filenames=np.asarray(filenames, dtype=str), pids=np.asarray(self.pids, dtype=np.int64),
                            dist=np.asarray(self.dist), topk_index=self.topk_index,
                            indices=np.asarray(indices, dtype=np.int64))
        os.replace(tmp, path)
        return path
