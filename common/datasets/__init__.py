"""Dataset factory: ``build_dataset(name, root)`` -> :class:`~common.datasets.base.ReidDataset`.

Keys (with aliases): ``market`` (market1501), ``duke`` (dukemtmc, dukemtmcreid), ``cuhk03`` (cuhk03_classic:
the classic release ``cuhk-03.mat`` with torchreid's extraction, the new 767/700 protocol or the 20 classic
splits; kwargs ``label_type``, ``classic_split``, ``split_id``), ``cuhk03_np_detected`` (cuhk03_np,
cuhk03_detected) and ``cuhk03_np_labeled`` (cuhk03_labeled): the CUHK03-NP folders, ``msmt`` (msmt17; V1 with
list files or V2), ``sysu_mm01`` (sysu), ``randperson``,
``synthetic`` (synth; Market layout), ``synthetic_sysu`` (synth_sysu; the same generated data with its infrared
cameras, in the SYSU-MM01 layout and protocol). Classes are imported lazily, so a broken parser never breaks the
others.
"""
from __future__ import annotations

import importlib
import os
from typing import List

from common.datasets.base import DatasetError, Record, ReidDataset  # noqa: F401  (re-exported)

# key -> (module, class, extra constructor kwargs)
_FACTORY = {
    "market": ("common.datasets.market1501", "Market1501", {}),
    "duke": ("common.datasets.dukemtmc", "DukeMTMCreID", {}),
    "cuhk03": ("common.datasets.cuhk03", "CUHK03", {}),
    "cuhk03_np_detected": ("common.datasets.cuhk03_np", "CUHK03NP", {"label_type": "detected"}),
    "cuhk03_np_labeled": ("common.datasets.cuhk03_np", "CUHK03NP", {"label_type": "labeled"}),
    "msmt": ("common.datasets.msmt17", "MSMT17", {}),
    "sysu_mm01": ("common.datasets.sysu_mm01", "SYSUMM01", {}),
    "randperson": ("common.datasets.randperson", "RandPerson", {}),
    "synthetic": ("common.datasets.synthetic", "Synthetic", {}),
    "synthetic_sysu": ("common.datasets.synthetic", "Synthetic", {"layout": "sysu"}),
}

_ALIASES = {
    "market1501": "market", "market-1501": "market",
    "dukemtmc": "duke", "dukemtmcreid": "duke", "dukemtmc-reid": "duke",
    "cuhk03_np": "cuhk03_np_detected", "cuhk03_classic": "cuhk03",
    "cuhk03_detected": "cuhk03_np_detected", "cuhk03_labeled": "cuhk03_np_labeled",
    "msmt17": "msmt", "msmt17_v1": "msmt", "msmt17_v2": "msmt",
    "sysu": "sysu_mm01", "sysumm01": "sysu_mm01", "sysu-mm01": "sysu_mm01",
    "synth": "synthetic",
    "synth_sysu": "synthetic_sysu", "synthetic-sysu": "synthetic_sysu", "synth-sysu": "synthetic_sysu",
}


def names() -> List[str]:
    """The canonical dataset keys."""
    return list(_FACTORY)


def canonical_name(name: str) -> str:
    """Resolve an alias (case-insensitive) to its canonical key, or raise a ValueError listing the keys."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _FACTORY:
        from common.errors import UnknownName
        raise UnknownName(f"unknown dataset '{name}'. Choose one of: {', '.join(names())} "
                         f"(aliases: {', '.join(sorted(_ALIASES))}).")
    return key


def default_data_dir() -> str:
    """``$REID_DATA`` if set, else ``./data``."""
    return os.environ.get("REID_DATA", os.path.join(os.getcwd(), "data"))


def build_dataset(name: str, root: str = None, combine_all: bool = False, verbose: bool = True,
                  **kwargs) -> ReidDataset:
    """Build a dataset by key.

    Args:
        name: dataset key or alias (see module docstring).
        root: the folder that holds the dataset folders (``--data-dir``); ``$REID_DATA`` or ``./data`` if None.
        combine_all: merge query and gallery identities into the training split.
        verbose: print the summary table.
        **kwargs: passed to the dataset class (e.g. ``version=2`` for MSMT17, ``num_ids=...`` for synthetic and
            synthetic_sysu).
    Returns:
        the dataset.
    """
    key = canonical_name(name)
    module, cls_name, fixed = _FACTORY[key]
    cls = getattr(importlib.import_module(module), cls_name)
    dataset = cls(root if root is not None else default_data_dir(), **{**fixed, **kwargs})
    if combine_all:
        dataset = dataset.combine_all()
    if verbose:
        print(dataset.summary())
    return dataset
