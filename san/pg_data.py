"""(person image, texture) pairs for SAN-PG: the PIT layout, or a synthetic dataset generated with textures.

PIT layout expected by ``--pit-root`` (the release ships no PIT reader; this is our layout)::

    <pit-root>/images/<name>.jpg|png      person images (256 x 128 in PIT)
    <pit-root>/textures/<name>.<ext>      its texture (256 x 256), same file name (or same stem, .png/.jpg)
    optional <pit-root>/ids.txt           "<name> <texture id>" per line; images of one texture id stay on one
                                          side of the held-out split (default: the stem before the first '_')

Synthetic (``--dataset synthetic``, generated with ``textures=True``): every train / query / gallery image of an
identity that has a texture map (distractors and junk have none), paired with that identity's 64 x 64 map.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np

from common.errors import ReidError

Pair = Tuple[str, str, int]  # (image path, texture path, group id)
IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def pit_pairs(root: str) -> List[Pair]:
    img_dir, tex_dir = os.path.join(root, "images"), os.path.join(root, "textures")
    for d in (img_dir, tex_dir):
        if not os.path.isdir(d):
            raise ReidError(f"PIT folder {d} does not exist", where=root,
                            fix="lay PIT out as <pit-root>/images/<name> and <pit-root>/textures/<name> (see "
                                "san/pg_data.py), or train on --dataset synthetic")
    ids = {}
    ids_file = os.path.join(root, "ids.txt")
    if os.path.isfile(ids_file):
        for line in open(ids_file):
            parts = line.split()
            if len(parts) == 2:
                ids[parts[0]] = parts[1]
    pairs, groups = [], {}
    for name in sorted(os.listdir(img_dir)):
        if not name.lower().endswith(IMG_EXT):
            continue
        stem = os.path.splitext(name)[0]
        cands = [os.path.join(tex_dir, name)] + [os.path.join(tex_dir, stem + e) for e in (".png", ".jpg")]
        tex = next((c for c in cands if os.path.isfile(c)), None)
        if tex is None:
            raise ReidError(f"PIT image {name} has no texture", where=tex_dir, fix=f"expected {cands[0]}")
        g = ids.get(name, stem.split("_")[0])
        pairs.append((os.path.join(img_dir, name), tex, groups.setdefault(g, len(groups))))
    if not pairs:
        raise ReidError(f"no images in {img_dir}", where=root)
    return pairs


def synthetic_pairs(dataset) -> List[Pair]:
    maps = dataset.extra.get("textures")
    if not maps:
        raise ReidError("SAN-PG on synthetic data needs texture maps", where=dataset.root,
                        fix="generate it with textures (san/train_pg.py does so for --dataset synthetic)")
    original = dataset.extra["train_pids_original"]
    pairs = [(r.img_path, maps[original[r.pid]], original[r.pid]) for r in dataset.train]
    pairs += [(r.img_path, maps[r.pid], r.pid) for r in dataset.query + dataset.gallery if r.pid in maps]
    return pairs


def split_groups(pairs: List[Pair], heldout: float, seed: int) -> Tuple[List[Pair], List[Pair]]:
    """Held-out split by group (identity / texture), seeded: ``heldout`` of the groups go to the second list."""
    groups = sorted({g for _, _, g in pairs})
    rng = np.random.default_rng(seed)
    n_out = int(round(heldout * len(groups)))
    out = set(rng.permutation(groups)[:n_out].tolist())
    return [p for p in pairs if p[2] not in out], [p for p in pairs if p[2] in out]
