"""SYSU-MM01: RGB-infrared cross-modality person re-identification."""
from __future__ import annotations

import os
import re
import warnings
from typing import List, Sequence

from common.datasets.base import DatasetError, Record, ReidDataset, check_dirs, first_existing, relabel
from common.datasets.market1501 import reject_unknown_kwargs

RGB_CAMS = (1, 2, 4, 5)  # 1-based, as in the paper and the folder names
IR_CAMS = (3, 6)
INDOOR_CAMS = (1, 2, 3)  # the 'indoor search' setting uses RGB cameras 1, 2 (and IR camera 3)
ALL_CAMS = (1, 2, 3, 4, 5, 6)
ID_FILES = ("train_id.txt", "val_id.txt", "test_id.txt")
IMAGE_RE = re.compile(r"^(\d+)\.jpg$")

_TREE = """  <data-dir>/SYSU-MM01/           (also accepted: <data-dir>/sysu-mm01, <data-dir>/SYSU-MM01/SYSU-MM01)
      cam1/ cam2/ cam4/ cam5/   RGB:  <4-digit id>/<4-digit index>.jpg, e.g. cam1/0001/0001.jpg
      cam3/ cam6/               IR:   same layout
      exp/train_id.txt  exp/val_id.txt  exp/test_id.txt   (comma-separated ids, e.g. 1,2,4,5,...)"""


def is_infrared(camid0: int) -> bool:
    """True for the infrared cameras (3 and 6) given a 0-based camid (2 and 5)."""
    return int(camid0) + 1 in IR_CAMS


def read_id_list(path: str) -> List[int]:
    """Ids of an ``exp/*_id.txt`` file: integers separated by commas and/or whitespace (trailing newline ok)."""
    with open(path) as f:
        tokens = [t for t in re.split(r"[,\s]+", f.read()) if t]
    try:
        ids = [int(t) for t in tokens]
    except ValueError:
        raise DatasetError(f"dataset 'sysu_mm01': {path} is not a comma-separated list of ids "
                           f"(expected like '1,2,4,5,7')") from None
    if not ids:
        raise DatasetError(f"dataset 'sysu_mm01': {path} lists no id (expected like '1,2,4,5,7')")
    return ids


def collect(folder: str, ids: Sequence[int], cams: Sequence[int], bad: List[str]) -> List[Record]:
    """Records of ``cam<c>/<id:04d>/<index>.jpg`` for the given ids and 1-based cameras.

    An id folder missing under a camera is skipped (not every person passed every camera). Image files not
    named ``<digits>.jpg`` are appended to ``bad`` and skipped. Record: (path, id, camid 0-based, index).
    """
    records = []
    for pid in sorted(set(ids)):
        for cam in cams:
            id_dir = os.path.join(folder, f"cam{cam}", f"{pid:04d}")
            if not os.path.isdir(id_dir):
                continue
            for name in sorted(os.listdir(id_dir)):
                m = IMAGE_RE.match(name)
                if m is None:
                    if name.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")):
                        bad.append(os.path.join(id_dir, name))
                    continue
                records.append(Record(os.path.join(id_dir, name), pid, cam - 1, int(m.group(1))))
    return records


class SYSUMM01(ReidDataset):
    """SYSU-MM01.

    Reference:
        Wu et al. RGB-Infrared Cross-Modality Person Re-Identification. ICCV 2017.

    URL: `<https://github.com/wuancong/SYSU-MM01>`_ (request the data from the authors)

    Dataset statistics (real data): 491 ids, 6 cameras (RGB: 1, 2 indoor, 4, 5 outdoor; IR: 3 indoor,
    6 outdoor).
        - train (train_id + val_id): 395 ids, 22,258 RGB + 11,909 IR images, all six cameras.
        - test: 96 ids; query = their IR images (3,803); gallery = all their RGB images (the evaluation
          samples 1 (single-shot) or 10 (multi-shot) images per id and RGB camera from it for each trial).

    Expected tree (``root`` is ``--data-dir``)::

        <data-dir>/SYSU-MM01/cam{1..6}/<4-digit id>/<4-digit index>.jpg
        <data-dir>/SYSU-MM01/exp/{train_id,val_id,test_id}.txt

    ``root`` may also point at the ``SYSU-MM01`` folder itself. camid is 0-based (``cam1`` -> 0; infrared:
    2 and 5, see :func:`is_infrared`); ``Record.frame`` is the image index within the id folder. Protocol
    ``sysu``; ``extra['modality']`` maps camid -> 'rgb' | 'ir' and ``extra['ir_cams']`` lists the IR camids.
    Image files not named ``<digits>.jpg`` are skipped with one warning; the train and test id lists must be
    disjoint.

    Args:
        root: the ``--data-dir`` folder.
    """

    name = "sysu_mm01"

    def __init__(self, root: str, **kwargs):
        reject_unknown_kwargs(self.name, kwargs)
        if os.path.isdir(os.path.join(root, "exp")) and os.path.isdir(os.path.join(root, "cam1")):
            folder = root
        else:
            candidates = [os.path.join(root, "SYSU-MM01"), os.path.join(root, "sysu-mm01"),
                          os.path.join(root, "SYSU-MM01", "SYSU-MM01")]
            folder = next((c for c in candidates if os.path.isdir(os.path.join(c, "exp"))), None) \
                or first_existing(candidates) or candidates[0]
        required = [folder] + [os.path.join(folder, f"cam{c}") for c in ALL_CAMS] \
            + [os.path.join(folder, "exp", f) for f in ID_FILES]
        check_dirs(root, required, self.name, _TREE)
        train_ids, val_ids, test_ids = (read_id_list(os.path.join(folder, "exp", f)) for f in ID_FILES)
        overlap = sorted(set(train_ids + val_ids) & set(test_ids))
        if overlap:
            raise DatasetError(f"dataset '{self.name}': ids {overlap[:5]} are in both the train/val and the test "
                               f"lists of {os.path.join(folder, 'exp')}")
        bad: List[str] = []
        raw_train = collect(folder, train_ids + val_ids, ALL_CAMS, bad)
        query = collect(folder, test_ids, IR_CAMS, bad)
        gallery = collect(folder, test_ids, RGB_CAMS, bad)
        if bad:
            warnings.warn(f"dataset '{self.name}': skipped {len(bad)} image(s) not named '<index>.jpg', "
                          f"e.g. {bad[0]}", UserWarning, stacklevel=2)
        for split, recs, cams in (("train", raw_train, ALL_CAMS), ("query", query, IR_CAMS),
                                  ("gallery", gallery, RGB_CAMS)):
            if not recs:
                raise DatasetError(f"dataset '{self.name}': no {split} image found: expected "
                                   f"{folder}/cam{{{','.join(map(str, cams))}}}/<4-digit id>/<index>.jpg "
                                   f"for the ids of exp/{'test_id' if split != 'train' else 'train_id+val_id'}.txt")
        modality = {c - 1: ("ir" if c in IR_CAMS else "rgb") for c in ALL_CAMS}
        super().__init__(relabel(raw_train), query, gallery, name=self.name, root=folder, protocol="sysu",
                         modality=modality, ir_cams=[c - 1 for c in IR_CAMS],
                         train_pids_original=sorted({r.pid for r in raw_train}))
