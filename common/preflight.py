"""Checks a run makes before its folder exists and before the first step: every dataset it will train or test on
parses, every image decodes, the weight file is there, the resume file is there. A problem stops the run at once
with a message that names it and the fix (see :mod:`common.errors`), instead of hours later.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from PIL import Image

from common.errors import ReidError
from common.progress import bar


def load_datasets(keys: Iterable[str], load: Callable[[str], object]) -> Dict[str, object]:
    """``{key: load(key)}`` for every distinct key, in order (a missing tree raises its DatasetError here)."""
    out: Dict[str, object] = {}
    for key in keys:
        if key not in out:
            out[key] = load(key)
    return out


def _image_problem(path: str) -> Optional[str]:
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))  # JPEG: decode at 1/8 scale
            im.load()
            w, h = im.size
        if w < 1 or h < 1:
            return f"size {w}x{h}"
    except FileNotFoundError:
        return "missing"
    except Exception as e:  # noqa: BLE001 - any decoder failure is what we are looking for
        return f"{type(e).__name__}: {e}"
    return None


def check_images(paths: Sequence[str], progress: bool = True, log: Callable[[str], None] = print,
                 workers: Optional[int] = None) -> int:
    """Decode every image once; raise a :class:`ReidError` listing every unreadable file.

    Args:
        paths: image files.
        progress: a bar on a terminal.
        log: where the summary line goes.
        workers: decoding threads (default: the machine's cores).
    Returns:
        the number of images checked.
    """
    paths = list(dict.fromkeys(paths))
    bad: List[Tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for path, problem in bar(total=len(paths), desc="checking images", progress=progress, unit="img",
                                 iterable=zip(paths, pool.map(_image_problem, paths, chunksize=64))):
            if problem:
                bad.append((path, problem))
    if bad:
        listing = "\n".join(f"  {p}: {why}" for p, why in bad)
        raise ReidError(f"{len(bad)} of {len(paths)} images cannot be read:\n{listing}",
                        fix="replace or delete these files (re-extract the dataset archive), or pass "
                            "--no-check-images to skip this check")
    log(f"checked {len(paths)} images: all readable")
    return len(paths)


def dataset_images(datasets: Iterable[object]) -> List[str]:
    """Image paths of the train / query / gallery records of ``datasets`` (ReidDataset-like objects)."""
    paths: List[str] = []
    for ds in datasets:
        for split in ("train", "query", "gallery"):
            paths += [r.img_path for r in getattr(ds, split, []) or []]
    return paths


def check_resume_file(path: str) -> None:
    """An explicit ``--resume PATH`` must exist ('' and 'auto' are fine)."""
    if path and path not in ("auto", "ori") and not os.path.isfile(path):
        raise ReidError(f"--resume {path}: no such file",
                        fix="pass the path of a checkpoint written by a training run (its run folder is under "
                            "--exp-dir), or drop --resume")


def check_pretrained(name: str, pretrained: bool, path: str = "") -> Optional[str]:
    """Find the ImageNet weight file a model will load (raises PretrainedWeightsNotFound with the fixes)."""
    if not (pretrained or path):
        return None
    from common.weights import find_weights
    return find_weights(name, path)
