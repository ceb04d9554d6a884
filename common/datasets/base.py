"""Record type and dataset container shared by every benchmark parser.

A dataset is three lists of :class:`Record`: ``train`` (person ids relabelled to ``0..N-1``), ``query`` and
``gallery`` (original ids kept; junk ``-1`` dropped; distractors ``0`` kept in the gallery). Camera ids are
0-based everywhere (Market ``c1`` -> ``0``).
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence


class Record(NamedTuple):
    """One image.

    Attributes:
        img_path: absolute or root-relative path of the image file.
        pid: person id (relabelled 0..N-1 in ``train``; original id in ``query``/``gallery``).
        camid: 0-based camera id.
        frame: frame / sequence index parsed from the file name where the benchmark carries one, else -1.
    """

    img_path: str
    pid: int
    camid: int
    frame: int = -1


class DatasetError(FileNotFoundError):
    """A dataset root is missing or malformed. The message names the expected tree and the fix."""


def check_dirs(root: str, required: Sequence[str], name: str, tree: str) -> None:
    """Raise :class:`DatasetError` unless every path in ``required`` exists.

    Args:
        root: the dataset folder that was looked at.
        required: paths (files or folders) that must exist.
        name: dataset key, used in the message.
        tree: the expected folder tree, printed in the message.
    """
    missing = [p for p in required if not os.path.exists(p)]
    if missing:
        raise DatasetError(
            f"dataset '{name}': {missing[0]} does not exist (looked under {root}).\n"
            f"Expected this tree under --data-dir:\n{tree}\n"
            f"Fix: download the dataset and unpack it there, or pass --data-dir pointing to its parent; "
            f"`--dataset synthetic` needs no download.")


def relabel(records: Iterable[Record]) -> List[Record]:
    """Map person ids to ``0..N-1`` in sorted order of the original ids.

    Args:
        records: records with arbitrary integer pids.
    Returns:
        new list of records, same order, pids replaced.
    """
    records = list(records)
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [r._replace(pid=mapping[r.pid]) for r in records]


def _stats(records: Sequence[Record]):
    return len({r.pid for r in records}), len(records), len({r.camid for r in records})


class ReidDataset:
    """Container of the three splits with torchreid-style statistics.

    Args:
        train: training records, pids already relabelled to 0..N-1.
        query: query records.
        gallery: gallery records.
        name: dataset key.
        root: folder the records were read from.
        protocol: default evaluation protocol of the benchmark (``market1501``, ``cuhk03`` or ``sysu``).
    """

    def __init__(self, train: List[Record], query: List[Record], gallery: List[Record], name: str,
                 root: str = "", protocol: str = "market1501", **extra):
        self.train, self.query, self.gallery = list(train), list(query), list(gallery)
        self.name, self.root, self.protocol = name, root, protocol
        self.extra: Dict = dict(extra)  # benchmark-specific extras (e.g. SYSU modality map, texture maps)

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    def combine_all(self) -> "ReidDataset":
        """Merge query and gallery into train (ids relabelled jointly; distractors 0 and junk excluded),
        as torchreid's and QAConv's ``--combine-all`` do. Query and gallery stay unchanged for testing.
        The excluded ids are ``extra['junk_pids']`` when a benchmark sets it (MSMT17: none, its test ids
        start at 0), else (-1, 0)."""
        offset = max((r.pid for r in self.train), default=-1) + 1
        junk = set(self.extra.get("junk_pids", (-1, 0)))
        extra = relabel(r for r in self.query + self.gallery if r.pid not in junk)
        merged = self.train + [r._replace(pid=r.pid + offset) for r in extra]
        return ReidDataset(merged, self.query, self.gallery, self.name + "+all", self.root, self.protocol,
                           **self.extra)

    def summary(self) -> str:
        """A table like torchreid's: ids, images and cameras per split."""
        rows = [("train", self.train), ("query", self.query), ("gallery", self.gallery)]
        lines = [f"=> {self.name} loaded from {self.root}",
                 "  ----------------------------------------",
                 "  subset   | # ids | # images | # cameras",
                 "  ----------------------------------------"]
        for label, recs in rows:
            ids, imgs, cams = _stats(recs)
            lines.append(f"  {label:<8} | {ids:5d} | {imgs:8d} | {cams:9d}")
        lines.append("  ----------------------------------------")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def records_arrays(records: Sequence[Record]):
    """Split records into numpy arrays.

    Returns:
        (pids (N,) int64, camids (N,) int64, frames (N,) int64)
    """
    import numpy as np
    pids = np.asarray([r.pid for r in records], dtype=np.int64)
    camids = np.asarray([r.camid for r in records], dtype=np.int64)
    frames = np.asarray([r.frame for r in records], dtype=np.int64)
    return pids, camids, frames


def first_existing(candidates: Sequence[str]) -> Optional[str]:
    """The first path of ``candidates`` that exists, else None (for benchmarks with several folder names)."""
    for c in candidates:
        if os.path.exists(c):
            return c
    return None
