"""Writing a synthetic dataset to disk: Market-1501 tree, optional SYSU-MM01 tree and texture maps, meta.json.

Tree written under ``out/`` (all optional parts only when asked for)::

    out/meta.json                      generation arguments, version, counts, camera network, routes
    out/bounding_box_train/            train identities, all images
    out/query/                         one image per test identity per camera where seen
    out/bounding_box_test/             the other test images + distractors (0000_...) + junk (-1_...)
    out/textures/{pid:04d}.png         64x64 clothing texture map per identity              (textures=True)
    out/cam1..camN/{pid:04d}/{idx:04d}.jpg  SYSU-MM01 layout; cams 3, 6, 9 near-infrared       (infrared=True)
    out/exp/train_id.txt, val_id.txt, test_id.txt  comma-separated ids (SYSU protocol lists) (infrared=True)

Market names are ``{pid:04d}_c{cam}s1_{frame:06d}_{det:02d}.jpg``: a single sequence ``s1`` per camera and a
global frame clock at ``fps`` shared by all cameras, so cross-camera frame differences are transit times. The
SYSU tree holds every identity seen in both modalities (train and test identities, no distractors); its RGB
images are byte copies of the Market images of the same detections, its IR images render the same detections
in near-infrared. Every file is a pure function of the config (same config -> byte-identical tree).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Tuple

from tqdm import tqdm

from common.progress import interactive

from common.datasets.synthetic_person import appearance
from common.datasets.synthetic_scene import render_image
from common.datasets.synthetic_plan import ImageJob, plan_jobs
from common.datasets.synthetic_world import VERSION, SynthConfig, build_network, rng_for, split_ids

SUBSETS = ("bounding_box_train", "query", "bounding_box_test")
GENERATION_COUNT = 0  # generate() calls in this process (lets tests see that nothing was regenerated)


def _render_task(task: Tuple[SynthConfig, ImageJob, str, str]) -> None:
    cfg, job, path, modality = task
    render_image(cfg, job, modality).save(path, quality=cfg.jpeg_quality)


def _sysu_plan(cfg: SynthConfig, jobs: List[ImageJob]) -> Tuple[Dict[str, List[int]], List[Tuple[ImageJob, str]]]:
    """SYSU id lists and (job, relative path) of every SYSU image (identities seen in both modalities)."""
    net = build_network(cfg.seed, cfg.num_cams)
    by_id: Dict[int, List[ImageJob]] = {}
    for j in jobs:
        if j.kind == "person":
            by_id.setdefault(j.pid, []).append(j)
    both = {pid for pid, js in by_id.items() if len({net.cameras[j.cam].ir for j in js}) == 2}
    train, test = split_ids(cfg)
    train = [p for p in train if p in both]
    val = sorted(int(p) for p in rng_for(cfg.seed, "sysu", 0).permutation(train)[:len(train) // 4])
    lists = {"train": sorted(set(train) - set(val)), "val": val, "test": [p for p in test if p in both]}
    items = []
    for pid in sorted(both):
        per_cam: Dict[int, List[ImageJob]] = {}
        for j in by_id[pid]:
            per_cam.setdefault(j.cam, []).append(j)
        for cam, js in sorted(per_cam.items()):
            for idx, j in enumerate(sorted(js, key=lambda j: j.frame), 1):
                items.append((j, os.path.join(f"cam{cam + 1}", f"{pid:04d}", f"{idx:04d}.jpg")))
    return lists, items


def generate(cfg: SynthConfig, out: str, workers: int = 1, progress: bool = True) -> Dict:
    """Write the dataset of ``cfg`` into folder ``out`` (created if missing; must be empty).

    Args:
        cfg: generation arguments.
        out: destination folder.
        workers: rendering processes (output does not depend on it).
        progress: tqdm bar on stderr.
    Returns:
        the meta dict also written to ``out/meta.json``.
    """
    global GENERATION_COUNT
    GENERATION_COUNT += 1
    os.makedirs(out, exist_ok=True)
    if os.listdir(out):
        raise FileExistsError(f"{out} is not empty; refusing to generate into it")
    idents, jobs = plan_jobs(cfg)
    net = build_network(cfg.seed, cfg.num_cams)
    for sub in SUBSETS:
        os.makedirs(os.path.join(out, sub))
    tasks = [(cfg, j, os.path.join(out, j.subset, j.filename), "rgb") for j in jobs]
    market_path = {j: t[2] for j, t in zip(jobs, tasks)}
    copies, meta_sysu = [], None
    if cfg.infrared:
        lists, items = _sysu_plan(cfg, jobs)
        for rel in sorted({os.path.dirname(r) for _, r in items}):
            os.makedirs(os.path.join(out, rel))
        for j, rel in items:
            if net.cameras[j.cam].ir:
                tasks.append((cfg, j, os.path.join(out, rel), "ir"))
            else:
                copies.append((market_path[j], os.path.join(out, rel)))
        os.makedirs(os.path.join(out, "exp"))
        for key, ids in lists.items():
            with open(os.path.join(out, "exp", f"{key}_id.txt"), "w") as f:
                f.write(",".join(str(p) for p in ids) + "\n")
        meta_sysu = {"ir_cams": [c.index + 1 for c in net.cameras if c.ir], "images": len(items),
                     "train_ids": lists["train"], "val_ids": lists["val"], "test_ids": lists["test"]}
    bar = tqdm(total=len(tasks), desc=f"synthetic {cfg.name()}", unit="img", file=sys.stderr,
               disable=not interactive(progress), mininterval=1.0)  # no bar fragments in captured logs
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_task, tasks, chunksize=16):
                bar.update()
    else:
        for t in tasks:
            _render_task(t)
            bar.update()
    bar.close()
    for src, dst in copies:
        shutil.copyfile(src, dst)
    train_ids, test_ids = split_ids(cfg)
    if cfg.textures:
        os.makedirs(os.path.join(out, "textures"))
        from PIL import Image
        for pid in train_ids + test_ids:
            Image.fromarray(appearance(cfg.seed, pid, cfg.palette_size).texture).save(
                os.path.join(out, "textures", f"{pid:04d}.png"))

    def count(subset: str) -> int:
        return sum(1 for j in jobs if j.subset == subset)

    meta = {
        "version": VERSION, "name": cfg.name(), "config": cfg.to_dict(), "fps": cfg.fps,
        "layout": "market1501" + ("+sysu" if cfg.infrared else "") + ("+textures" if cfg.textures else ""),
        "frames": "global clock at fps shared by all cameras; one sequence s1 per camera",
        "counts": {"train_ids": len(train_ids), "test_ids": len(test_ids),
                   "train_images": count("bounding_box_train"), "query_images": count("query"),
                   "gallery_images": count("bounding_box_test"),
                   "distractor_images": sum(1 for j in jobs if j.pid == 0),
                   "junk_images": sum(1 for j in jobs if j.pid < 0), "total_images": len(jobs),
                   "textures": len(train_ids + test_ids) if cfg.textures else 0},
        "network": net.to_dict(),
        "split": {"train": train_ids, "test": test_ids},
        "routes": {str(i.pid): [{"cam": v.cam + 1, "frames": list(v.frames), "view": v.view} for v in i.visits]
                   for i in idents},
        "sysu": meta_sysu,
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    return meta


def generate_atomic(cfg: SynthConfig, final: str, workers: int = 1, verbose: bool = True) -> str:
    """Generate into a temporary sibling of ``final`` and rename it into place once complete.

    An interrupted run leaves only a hidden ``.<name>.tmp-*`` folder (never a tree that looks complete);
    if another process finished ``final`` first, its result is kept and ours discarded.
    Returns ``final``.
    """
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        generate(cfg, tmp, workers=workers, progress=verbose)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(final, "meta.json")):
            raise FileExistsError(f"{final} exists and is not a generated synthetic dataset; remove it")
    return final


def ensure_generated(root: str, cfg: SynthConfig, workers: int = 1, verbose: bool = True) -> str:
    """``<root>/synthetic/<cfg.name()>``, generated first if it is not there yet. Returns the folder."""
    final = os.path.join(root, "synthetic", cfg.name())
    if os.path.isfile(os.path.join(final, "meta.json")):
        return final
    print(f"[synthetic] generating dataset '{cfg.name()}' into {final} (first use, done once)", flush=True)
    return generate_atomic(cfg, final, workers=workers, verbose=verbose)
