"""MSMT17 (V1 and V2), read through its official list files."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Union

from common.datasets.base import DatasetError, Record, ReidDataset, check_dirs, first_existing, relabel
from common.datasets.market1501 import reject_unknown_kwargs

# version -> (folder name, train image folder, test image folder)
VERSIONS = {1: ("MSMT17_V1", "train", "test"), 2: ("MSMT17_V2", "mask_train_v2", "mask_test_v2")}
LIST_FILES = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
NUM_CAMS = 15

_TREE = """  <data-dir>/MSMT17_V1/                   (or <data-dir>/msmt17/MSMT17_V1; QAConv's <data-dir>/msmt)
      train/0000/0000_000_01_0303morning_0015_0.jpg ...
      test/0000/0000_000_01_0303morning_0008_0.jpg ...
      list_train.txt  list_val.txt  list_query.txt  list_gallery.txt
  or <data-dir>/MSMT17_V2/                (or <data-dir>/msmt17/MSMT17_V2; faces blurred)
      mask_train_v2/  mask_test_v2/  list_train.txt  list_val.txt  list_query.txt  list_gallery.txt
  list lines: '<pid folder>/<image name> <label>', paths relative to train/ (train, val) or test/ (query, gallery)"""


def parse_msmt_name(name: str) -> Dict[str, Union[int, str]]:
    """Fields of an MSMT17 image name such as ``0000_000_01_0303morning_0015_0.jpg``.

    Returns:
        {'pid': 0, 'index': 0 (image index within the identity), 'camera': 1 (1..15), 'slot': '0303morning'
        (capture date MMDD and period: morning, noon or afternoon), 'seq': 15, 'det': 0}. The authors do not
        document the last two numbers (commonly read as a frame counter within the slot and a box index); they
        are returned as ints but not used as a time stamp.
    Raises:
        ValueError: the name does not have these fields.
    """
    parts = os.path.splitext(os.path.basename(name))[0].split("_")
    if len(parts) < 6 or not all(p.isdigit() for p in parts[:3] + parts[4:6]):
        raise ValueError(f"not an MSMT17 image name: {name!r} (expected like 0000_000_01_0303morning_0015_0.jpg)")
    return {"pid": int(parts[0]), "index": int(parts[1]), "camera": int(parts[2]), "slot": parts[3],
            "seq": int(parts[4]), "det": int(parts[5])}


def read_msmt_list(list_path: str, image_dir: str) -> List[Record]:
    """Records of one list file (pid = the list label, camid from the name's camera field, frame -1).

    Raises:
        DatasetError: a line that is not ``<relative path> <int label>`` or whose camera is outside 1..15;
            the list files are the benchmark's definition, so a damaged one must not be half-read.
    """
    records = []
    with open(list_path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            tokens = line.split()
            try:
                if len(tokens) != 2:
                    raise ValueError("expected '<path> <label>'")
                label, cam = int(tokens[1]), parse_msmt_name(tokens[0])["camera"]
                if not 1 <= cam <= NUM_CAMS:
                    raise ValueError(f"camera {cam} outside 1..{NUM_CAMS}")
            except ValueError as e:
                raise DatasetError(f"dataset 'msmt': {list_path}:{lineno}: malformed line {line.strip()!r} ({e}); "
                                   f"expected like '0000/0000_000_01_0303morning_0015_0.jpg 0'") from None
            records.append(Record(os.path.join(image_dir, tokens[0]), label, cam - 1, -1))
    if not records:
        raise DatasetError(f"dataset 'msmt': {list_path} lists no image "
                           f"(expected lines like '0000/0000_000_01_0303morning_0015_0.jpg 0')")
    return records


def _normalise_version(version) -> Optional[int]:
    if version is None:
        return None
    v = str(version).strip().lower().replace("msmt17_", "").lstrip("v")
    if v not in ("1", "2"):
        raise ValueError(f"MSMT17 version must be None, 1 or 2 (or 'V1'/'V2'), got {version!r}")
    return int(v)


class MSMT17(ReidDataset):
    """MSMT17.

    Reference:
        Wei et al. Person Transfer GAN to Bridge Domain Gap for Person Re-Identification. CVPR 2018.

    URL: `<http://www.pkuvmc.com/publications/msmt17.html>`_

    Dataset statistics (real data, V1 and V2 alike):
        - train (list_train + list_val): 1,041 ids, 32,621 images (30,248 + 2,373);
          query: 3,060 ids, 11,659 images; gallery: 3,060 ids, 82,161 images; 15 cameras.

    Expected tree (``root`` is ``--data-dir``)::

        <data-dir>/MSMT17_V1/{train,test}/<pid>/*.jpg + list_{train,val,query,gallery}.txt
        <data-dir>/MSMT17_V2/{mask_train_v2,mask_test_v2}/<pid>/*.jpg + the same list files

    also accepted: ``<data-dir>/msmt17/MSMT17_V{1,2}`` (torchreid), ``<data-dir>/msmt`` (QAConv, V1 names), or
    ``root`` pointing at the version folder itself.

    Train = list_train + list_val (as QAConv and the original torchreid), relabelled; query / gallery keep the
    list labels (test ids start at 0, so ``extra['junk_pids']`` is empty: pid 0 is a real identity here).
    Names ``0000_000_01_0303morning_0015_0.jpg``: see :func:`parse_msmt_name`; camid = camera field - 1.
    ``Record.frame`` is -1: the names carry no documented time stamp (QAConv has no time info for MSMT17).
    Images are not stat'ed one by one; a listed but missing file fails when loaded.

    Args:
        root: the ``--data-dir`` folder.
        version: 1, 2 or None (auto-detect; V1 preferred when both are present).
    """

    name = "msmt"

    def __init__(self, root: str, version=None, **kwargs):
        reject_unknown_kwargs(self.name, kwargs)
        version = _normalise_version(version)
        folder, version = self._locate(root, version)
        _, train_sub, test_sub = VERSIONS[version]
        train_dir, test_dir = os.path.join(folder, train_sub), os.path.join(folder, test_sub)
        lists = [os.path.join(folder, f) for f in LIST_FILES]
        check_dirs(root, [folder, train_dir, test_dir] + lists, self.name, _TREE)
        raw_train = read_msmt_list(lists[0], train_dir) + read_msmt_list(lists[1], train_dir)
        query, gallery = read_msmt_list(lists[2], test_dir), read_msmt_list(lists[3], test_dir)
        super().__init__(relabel(raw_train), query, gallery, name=self.name, root=folder, protocol="market1501",
                         version=version, junk_pids=(), train_pids_original=sorted({r.pid for r in raw_train}))

    @staticmethod
    def _locate(root: str, version: Optional[int]):
        """(dataset folder, version): first match over the accepted layouts, V1 before V2 when auto."""
        for v in ([version] if version else [1, 2]):
            folder_name, train_sub, _ = VERSIONS[v]
            candidates = [root, os.path.join(root, folder_name), os.path.join(root, "msmt17", folder_name)]
            if v == 1:
                candidates.append(os.path.join(root, "msmt"))
            for c in candidates:
                if os.path.isdir(os.path.join(c, train_sub)) and os.path.isfile(os.path.join(c, LIST_FILES[0])):
                    return c, v
        v = version or 1
        partial = [os.path.join(root, VERSIONS[v][0]), os.path.join(root, "msmt17", VERSIONS[v][0])]
        return first_existing(partial) or partial[0], v  # incomplete: check_dirs names what is missing
