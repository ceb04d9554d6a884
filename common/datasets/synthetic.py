"""The project's own synthetic re-ID dataset (``--dataset synthetic``), generated on first use.

Procedural pedestrians (shared small colour palette; identities differ by arrangement, pattern, accessories,
hair and shape) walk a network of cameras that differ in illumination, background, viewpoint, scale, blur,
detection jitter and occlusion. Written in the Market-1501 layout and naming, optionally with a SYSU-MM01
RGB/infrared tree and per-identity clothing texture maps; see ``synthetic_generate`` for the tree and
``synthetic_world`` for the trajectories behind the global frame numbers.

Use::

    build_dataset('synthetic', '/data')                               # Market layout, 300 ids, seed 0
    build_dataset('synthetic', '/data', num_ids=100, seed=3, textures=True)
    build_dataset('synthetic', '/data', layout='sysu')                # SYSU view (implies infrared=True)

looks for ``/data/synthetic/<config-name>/`` (e.g. ``market_s0_n300``) and generates it (15-20 s for
the default ~3k images on one core) if it is missing. A folder written by the CLI can also be given as
``root`` directly (it holds ``meta.json``); its own config is then used and the config arguments are ignored.

CLI: ``python -m common.datasets.synthetic --out DIR [--num-ids N] [--seed S] [--infrared] [--textures]``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import time
from typing import Dict, List

from common.datasets.base import DatasetError, Record, ReidDataset, relabel
from common.datasets.synthetic_generate import ensure_generated, generate_atomic
from common.datasets.synthetic_world import SynthConfig

_MARKET_RE = re.compile(r"^([-\d]+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg$")
_TREE = """  <root>/synthetic/<config-name>/   (generated automatically)
    meta.json  bounding_box_train/  query/  bounding_box_test/
    [textures/]  [cam1..cam6/<pid>/<idx>.jpg  exp/{train,val,test}_id.txt]"""


def parse_market_dir(folder: str, relabel_ids: bool = False) -> List[Record]:
    """Records of a Market-named folder, sorted by name; junk (pid -1) dropped, distractors (0) kept.

    Args:
        folder: folder of ``{pid}_c{cam}s{seq}_{frame}_{det}.jpg`` files.
        relabel_ids: map pids to 0..N-1 (training split).
    Returns:
        list of Record(img_path, pid, camid 0-based, frame).
    """
    records = []
    for name in sorted(os.listdir(folder)):
        m = _MARKET_RE.match(name)
        if m is None:
            continue
        pid, cam, frame = int(m.group(1)), int(m.group(2)), int(m.group(4))
        if pid == -1:
            continue
        records.append(Record(os.path.join(folder, name), pid, cam - 1, frame))
    return relabel(records) if relabel_ids else records


def _read_ids(path: str) -> List[int]:
    with open(path) as f:
        return [int(t) for t in re.split(r"[,\s]+", f.read().strip()) if t]


def parse_sysu_tree(folder: str, ids: List[int], cams: List[int]) -> List[Record]:
    """Records of ``cam{c}/{pid:04d}/{idx:04d}.jpg`` for the given ids and 1-based cams.

    camid is 0-based; ``frame`` is the image index ``idx`` (as the SYSU-MM01 parser does; the tree is ordered
    by the global frame, which ``meta.json`` routes keep)."""
    records = []
    for pid in ids:
        for cam in cams:
            for path in sorted(glob.glob(os.path.join(folder, f"cam{cam}", f"{pid:04d}", "*.jpg"))):
                records.append(Record(path, pid, cam - 1, int(os.path.basename(path)[:-4])))
    return records


class Synthetic(ReidDataset):
    """The synthetic dataset, generated into ``<root>/synthetic/<config-name>/`` on first use.

    Args:
        root: the ``--data-dir`` folder (or a folder holding a generated dataset's ``meta.json``).
        layout: 'market' (protocol market1501) or 'sysu' (protocol sysu; forces ``infrared=True``).
        generate: generate a missing dataset (else raise DatasetError).
        workers: rendering processes when generating.
        verbose: print the generation line and a progress bar.
        **config: :class:`SynthConfig` fields: num_ids=300, seed=0, num_cams=6, images_per_visit=3,
            num_distractors=None (0.4 * num_ids), num_junk=None (0.2 * num_ids), train_fraction=0.5,
            palette_size=8, duration_s=1800, fps=25, infrared=False, textures=False, jpeg_quality=90.

    Market layout: ``train`` relabelled 0..N-1, ``query`` / ``gallery`` with original pids (distractors 0 in the
    gallery, junk dropped), ``frame`` = global frame. SYSU layout: ``train`` = train+val ids of every camera,
    relabelled; ``query`` = IR-camera images of test ids; ``gallery`` = RGB-camera images of test ids.

    ``extra``: 'meta' (meta.json dict), 'fps', 'train_pids_original' (relabelled index -> original pid),
    'textures' ({original pid: png path}, when generated with textures), SYSU only: 'modality'
    ({camid: 'ir' | 'rgb'}), 'ir_cams' (0-based camids).
    """

    def __init__(self, root: str, layout: str = "market", generate: bool = True, workers: int = 1,
                 verbose: bool = True, **config):
        if layout not in ("market", "sysu"):
            raise ValueError("layout must be 'market' or 'sysu'")
        if layout == "sysu":
            config["infrared"] = True
        if os.path.isfile(os.path.join(root, "meta.json")):
            folder = root
        else:
            cfg = SynthConfig(**config)
            folder = os.path.join(root, "synthetic", cfg.name())
            if not os.path.isfile(os.path.join(folder, "meta.json")):
                if not generate:
                    raise DatasetError(f"dataset 'synthetic': {folder} does not exist and generate=False.\n"
                                       f"Expected tree:\n{_TREE}")
                ensure_generated(root, cfg, workers=workers, verbose=verbose)
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        extra: Dict = {"meta": meta, "fps": meta["fps"]}
        tex_dir = os.path.join(folder, "textures")
        if os.path.isdir(tex_dir):
            extra["textures"] = {int(n[:-4]): os.path.join(tex_dir, n)
                                 for n in sorted(os.listdir(tex_dir)) if n.endswith(".png")}
        if layout == "market":
            subs = [os.path.join(folder, s) for s in ("bounding_box_train", "query", "bounding_box_test")]
            if not all(os.path.isdir(s) for s in subs):
                raise DatasetError(f"dataset 'synthetic': {folder} lacks the Market folders.\nExpected:\n{_TREE}")
            raw_train = parse_market_dir(subs[0])
            train, query, gallery = relabel(raw_train), parse_market_dir(subs[1]), parse_market_dir(subs[2])
            protocol = "market1501"
        else:
            if meta.get("sysu") is None:
                raise DatasetError(f"dataset 'synthetic': {folder} was generated without infrared=True "
                                   f"(no SYSU tree).\nExpected:\n{_TREE}")
            exp = os.path.join(folder, "exp")
            train_ids = _read_ids(os.path.join(exp, "train_id.txt")) + _read_ids(os.path.join(exp, "val_id.txt"))
            test_ids = _read_ids(os.path.join(exp, "test_id.txt"))
            num_cams = meta["config"]["num_cams"]
            ir_cams = list(meta["sysu"]["ir_cams"])
            rgb_cams = [c for c in range(1, num_cams + 1) if c not in ir_cams]
            raw_train = parse_sysu_tree(folder, sorted(train_ids), list(range(1, num_cams + 1)))
            train = relabel(raw_train)
            query = parse_sysu_tree(folder, test_ids, ir_cams)
            gallery = parse_sysu_tree(folder, test_ids, rgb_cams)
            extra["modality"] = {c - 1: ("ir" if c in ir_cams else "rgb") for c in range(1, num_cams + 1)}
            extra["ir_cams"] = [c - 1 for c in ir_cams]
            protocol = "sysu"
        extra["train_pids_original"] = sorted({r.pid for r in raw_train})
        super().__init__(train, query, gallery, name="synthetic" if layout == "market" else "synthetic_sysu",
                         root=folder, protocol=protocol, **extra)


def main(argv=None) -> None:
    """CLI: write one synthetic dataset to ``--out`` (atomically; refuses an existing non-empty folder)."""
    ap = argparse.ArgumentParser(prog="python -m common.datasets.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="destination folder (must not exist or be empty)")
    d = SynthConfig()
    ap.add_argument("--num-ids", type=int, default=d.num_ids)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--num-cams", type=int, default=d.num_cams)
    ap.add_argument("--images-per-visit", type=int, default=d.images_per_visit)
    ap.add_argument("--num-distractors", type=int, default=None, help="default 0.4 * num-ids")
    ap.add_argument("--num-junk", type=int, default=None, help="default 0.2 * num-ids")
    ap.add_argument("--train-fraction", type=float, default=d.train_fraction)
    ap.add_argument("--palette-size", type=int, default=d.palette_size)
    ap.add_argument("--duration-s", type=float, default=d.duration_s)
    ap.add_argument("--infrared", action="store_true", help="also write the SYSU-MM01 tree (cams 3, 6 IR)")
    ap.add_argument("--textures", action="store_true", help="also write textures/{pid:04d}.png")
    ap.add_argument("--workers", type=int, default=1, help="rendering processes (output is identical)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    cfg = SynthConfig(num_ids=a.num_ids, seed=a.seed, num_cams=a.num_cams, images_per_visit=a.images_per_visit,
                      num_distractors=a.num_distractors, num_junk=a.num_junk, train_fraction=a.train_fraction,
                      palette_size=a.palette_size, duration_s=a.duration_s, infrared=a.infrared,
                      textures=a.textures)
    if os.path.isdir(a.out) and os.listdir(a.out):
        raise SystemExit(f"{a.out} exists and is not empty")
    if os.path.isdir(a.out):
        os.rmdir(a.out)
    start = time.time()
    generate_atomic(cfg, a.out, workers=a.workers, verbose=not a.quiet)
    with open(os.path.join(a.out, "meta.json")) as f:
        counts = json.load(f)["counts"]
    print(f"wrote {cfg.name()} to {a.out} in {time.time() - start:.1f}s: "
          + ", ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
