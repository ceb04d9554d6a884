"""Texture pairing: where SAN finds the texture target of every image, for every dataset key (spec §2.3).

Rule (the release's CUHK03 rule, generalised): with ``base`` the deepest folder holding all of a dataset's images
and ``key`` the dataset's texture key (``cuhk03_labeled`` / ``cuhk03_detected`` for the classic CUHK03,
otherwise the dataset name), the textures live in ``<dataset root>/texture_<key>/``, one file per image with the
image's relative path and name::

    <data-dir>/cuhk03/images_labeled/1_001_1_01.png          -> <data-dir>/cuhk03/texture_cuhk03_labeled/1_001_1_01.png
    <Market>/bounding_box_train/0002_c1s1_000451_03.jpg       -> <Market>/texture_market/bounding_box_train/0002_...jpg
    <synthetic>/market_s0_n300/query/0001_c1s1_000120_00.jpg -> <...>/market_s0_n300/texture_synthetic/query/0001_...jpg

``python san/generate_texture.py -m SAN_PG.pth -i <base> -o <texture root>`` writes exactly this layout.

The synthetic dataset (``--textures``) stores one 64x64 UV map per identity (``textures/{pid:04d}.png``) instead;
:func:`true_synthetic_textures` maps each record to its identity's map (the oracle, ``--texture-source true``).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from common.datasets.base import Record, ReidDataset
from common.errors import ReidError

TEXTURE_PREFIX = "texture_"


def texture_key(dataset: ReidDataset) -> str:
    """The ``<key>`` of ``texture_<key>``: ``extra['texture_key']`` when the parser sets one, else the name."""
    return dataset.extra.get("texture_key", dataset.name)


def image_base(dataset: ReidDataset) -> str:
    """The deepest folder that holds every train / query / gallery image."""
    paths = [os.path.abspath(r.img_path) for r in dataset.train + dataset.query + dataset.gallery]
    if not paths:
        raise ReidError(f"dataset {dataset.name} has no images", where=dataset.root)
    base = os.path.commonpath(paths)
    return os.path.dirname(base) if len(set(paths)) == 1 else base


def texture_root(dataset: ReidDataset, texture_dir: str = "") -> str:
    """``texture_dir`` if given, else ``<dataset root>/texture_<key>``."""
    return texture_dir or os.path.join(dataset.root, TEXTURE_PREFIX + texture_key(dataset))


def texture_path(img_path: str, base: str, root: str) -> str:
    """The texture file of ``img_path``: its path relative to ``base``, under ``root``."""
    return os.path.join(root, os.path.relpath(os.path.abspath(img_path), base))


def generate_command(base: str, root: str) -> str:
    return f"python san/generate_texture.py -m <SAN-PG checkpoint> -i {base} -o {root}"


def pair_textures(dataset: ReidDataset, records: Sequence[Record], texture_dir: str = "") -> List[str]:
    """Texture file of each record; a missing one stops with the first missing file and the command that
    writes them.

    Args:
        dataset: the dataset the records belong to (for the base folder and key).
        records: the records that need a target (SAN's training split).
        texture_dir: explicit texture root (``--texture-dir``); default ``texture_root(dataset)``.
    Returns:
        list of paths, one per record.
    Raises:
        ReidError: naming the first missing texture file.
    """
    base, root = image_base(dataset), texture_root(dataset, texture_dir)
    paths = [texture_path(r.img_path, base, root) for r in records]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ReidError(
            f"{len(missing)} of {len(paths)} texture targets are missing; the first is {missing[0]} "
            f"(texture of {records[paths.index(missing[0])].img_path})",
            where=root,
            fix=f"write pseudo textures with a SAN-PG model: `{generate_command(base, root)}` (train one with "
                f"san/train_pg.py), point --texture-dir at an existing texture folder, use --texture-source true "
                f"on synthetic data generated with textures, or train the re-ID baseline with --baseline")
    return paths


def true_synthetic_textures(dataset: ReidDataset, records: Sequence[Record], relabelled: bool = True) -> List[str]:
    """The ground-truth texture map of each record of a synthetic dataset generated with ``textures=True``.

    Args:
        records: training records (``relabelled=True``: pids 0..N-1, mapped back through
            ``extra['train_pids_original']``) or query / gallery records (original pids).
    Raises:
        ReidError: the dataset has no texture maps, or an identity lacks one.
    """
    maps: Optional[Dict[int, str]] = dataset.extra.get("textures")
    if not maps:
        raise ReidError(f"--texture-source true needs a synthetic dataset generated with texture maps; "
                        f"{dataset.name} has none", where=dataset.root,
                        fix="generate it with `python -m common.datasets.synthetic --out DIR --textures` and pass "
                            "--data-dir DIR, or build_dataset('synthetic', root, textures=True)")
    original = dataset.extra.get("train_pids_original")
    out = []
    for r in records:
        pid = original[r.pid] if relabelled else r.pid
        if pid not in maps:
            raise ReidError(f"identity {pid} has no texture map", where=dataset.root)
        out.append(maps[pid])
    return out
