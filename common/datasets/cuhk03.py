"""CUHK03, the classic release (``cuhk03_release/cuhk-03.mat``, MATLAB v7.3 read with h5py), with torchreid's
extraction and splits: the new 767/700 protocol (default) or the 20 classic splits.

Expected tree (``root`` is ``--data-dir``)::

    <data-dir>/cuhk03/
        cuhk03_release/cuhk-03.mat                    MATLAB v7.3 (HDF5): 'detected', 'labeled', 'testsets'
        cuhk03_new_protocol_config_detected.mat       new protocol (zhunzhong07/person-re-ranking), scipy-readable
        cuhk03_new_protocol_config_labeled.mat
        images_detected/  images_labeled/             written once on first use: {pair}_{pid:03d}_{view}_{img:02d}.png
        splits_classic_{detected,labeled}.json        written once (20 classic splits)
        splits_new_{detected,labeled}.json            written once (one new-protocol split)

Extraction (as torchreid): for each label type, each of the 5 camera pairs and each person row, the up to 10
image cells are read; empty cells (size 0 or fewer than 3 dimensions) are skipped; cells 1-5 are view 1, 6-10
view 2; image ``1_001_1_01.png`` = pair 1, person 1, view 1, cell 1 (all 1-based). camid = view - 1 (0 or 1).

Classic splits (``classic_split=True``, evaluate with the CUHK03 metric): ``testsets`` lists the (pair, person)
test identities of each of the 20 splits; train and test ids are relabelled 0..N-1 in pair/person order and
query = gallery = all test images. New protocol (default): ``train_idx`` / ``query_idx`` / ``gallery_idx``
(1-based) index ``filelist`` and ``labels``; train pids are relabelled (sorted order; torchreid enumerates a
Python set, which gives the same order for these small ints), query / gallery keep the raw labels.

Real-data statistics (torchreid): new protocol labeled 767 ids / 7,368 train, 700 / 1,400 query, 700 / 5,328
gallery; detected 767 / 7,365, 700 / 1,400, 700 / 5,332. Classic: 1,367 train ids and 100 test ids per split
(1,467 identities, 14,097 detected / 14,096 labeled images).

Split files store names relative to the image folder (torchreid stores absolute paths), so a moved root works.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

from common.datasets.base import DatasetError, Record, ReidDataset, check_dirs

LABEL_TYPES = ("detected", "labeled")

_TREE = """  <data-dir>/cuhk03/
      cuhk03_release/cuhk-03.mat                   (MATLAB v7.3, from the CUHK03 release zip)
      cuhk03_new_protocol_config_detected.mat      (new protocol; github.com/zhunzhong07/person-re-ranking)
      cuhk03_new_protocol_config_labeled.mat
      images_detected/ images_labeled/ splits_*.json   (written on first use)"""


def _camid(name: str) -> int:
    return int(name.split("_")[2]) - 1


def extract_images(mat_path: str, root: str) -> Dict[str, List]:
    """Write ``images_<type>/*.png`` from the v7.3 ``.mat`` (existing files are kept) and return the meta data
    ``{type: [(pair 1-based, person 1-based, [names])]}`` (camera pairs in order, persons in order)."""
    import h5py
    from PIL import Image
    meta: Dict[str, List] = {}
    with h5py.File(mat_path, "r") as mat:
        def deref(ref):
            return mat[ref][:].T

        for t in LABEL_TYPES:
            img_dir = os.path.join(root, f"images_{t}")
            os.makedirs(img_dir, exist_ok=True)
            meta[t] = []
            for campid, camp_ref in enumerate(mat[t][0]):
                camp = deref(camp_ref)  # (num persons, 10) references
                for pid in range(camp.shape[0]):
                    names = []
                    for imgid, img_ref in enumerate(camp[pid, :]):
                        img = deref(img_ref)
                        if img.size == 0 or img.ndim < 3:
                            continue
                        view = 1 if imgid < 5 else 2
                        name = f"{campid + 1:d}_{pid + 1:03d}_{view:d}_{imgid + 1:02d}.png"
                        path = os.path.join(img_dir, name)
                        if not os.path.isfile(path):
                            Image.fromarray(img.astype("uint8")).save(path)
                        names.append(name)
                    meta[t].append((campid + 1, pid + 1, names))
        testsets = [deref(ref).tolist() for ref in mat["testsets"][0]]
    meta["testsets"] = [[[int(round(c)), int(round(p))] for c, p in ts] for ts in testsets]
    return meta


def classic_splits(meta: List, testsets: List) -> List[Dict]:
    """The 20 classic splits: {train, query, gallery: [(name, pid, camid)], num_train_pids, num_test_pids}."""
    out = []
    for ts in testsets:
        test_ids = {(c, p) for c, p in ts}
        train, test, n_train, n_test = [], [], 0, 0
        for campid, pid, names in meta:
            if (campid, pid) in test_ids:
                test += [(n, n_test, _camid(n)) for n in names]
                n_test += 1
            else:
                train += [(n, n_train, _camid(n)) for n in names]
                n_train += 1
        out.append({"train": train, "query": test, "gallery": test, "num_train_pids": n_train,
                    "num_test_pids": n_test})
    return out


def new_protocol_split(config_path: str) -> Dict:
    """The 767/700 split from a ``cuhk03_new_protocol_config_<type>.mat`` (indices 1-based in the file)."""
    from scipy.io import loadmat
    cfg = loadmat(config_path)
    labels = cfg["labels"].flatten()
    files = [str(f[0]) if not isinstance(f, str) else f for f in cfg["filelist"].flatten()]
    idx = {k: cfg[f"{k}_idx"].flatten().astype(int) - 1 for k in ("train", "query", "gallery")}
    pid2label = {int(p): i for i, p in enumerate(sorted({int(labels[i]) for i in idx["train"]}))}
    split = {}
    for k, relabel in (("train", True), ("query", False), ("gallery", False)):
        split[k] = [(files[i], pid2label[int(labels[i])] if relabel else int(labels[i]), _camid(files[i]))
                    for i in idx[k]]
    split["num_train_pids"] = len(pid2label)
    return split


def prepare(root: str, need_new: bool) -> None:
    """Extract images and write the split JSON files once (skipped when all of them exist)."""
    mat = os.path.join(root, "cuhk03_release", "cuhk-03.mat")
    outputs = [os.path.join(root, f"images_{t}") for t in LABEL_TYPES] + \
              [os.path.join(root, f"splits_classic_{t}.json") for t in LABEL_TYPES]
    if not all(os.path.exists(p) for p in outputs):
        check_dirs(root, [mat], "cuhk03", _TREE)
        meta = extract_images(mat, root)
        for t in LABEL_TYPES:
            _write_json(os.path.join(root, f"splits_classic_{t}.json"), classic_splits(meta[t], meta["testsets"]))
    if need_new:
        for t in LABEL_TYPES:
            out = os.path.join(root, f"splits_new_{t}.json")
            cfg = os.path.join(root, f"cuhk03_new_protocol_config_{t}.mat")
            if not os.path.isfile(out):
                check_dirs(root, [cfg], "cuhk03", _TREE)
                _write_json(out, [new_protocol_split(cfg)])


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


class CUHK03(ReidDataset):
    """CUHK03 from the classic release.

    Reference:
        Li et al. DeepReID: Deep Filter Pairing Neural Network for Person Re-identification. CVPR 2014.
        Zhong et al. Re-ranking Person Re-identification with k-reciprocal Encoding. CVPR 2017 (new protocol).

    Args:
        root: the ``--data-dir`` folder (holding ``cuhk03/``), or the ``cuhk03`` folder itself.
        label_type: 'detected' or 'labeled' (``--cuhk03-labeled``).
        classic_split: the 20 classic splits (protocol ``cuhk03``: single-shot CMC) instead of the new protocol.
        split_id: which split (0..19 classic; 0 new).
    ``extra``: 'label_type', 'texture_key' (``cuhk03_<label_type>``, SAN's ``texture_<key>`` folder),
    'num_splits'.
    """

    def __init__(self, root: str, label_type: str = "detected", classic_split: bool = False, split_id: int = 0,
                 **kwargs):
        if kwargs:
            raise TypeError(f"cuhk03: unknown arguments {sorted(kwargs)}")
        if label_type == "labelled":
            label_type = "labeled"
        if label_type not in LABEL_TYPES:
            raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
        folder = root if os.path.isdir(os.path.join(root, "cuhk03_release")) else os.path.join(root, "cuhk03")
        prepare(folder, need_new=not classic_split)
        kind = "classic" if classic_split else "new"
        with open(os.path.join(folder, f"splits_{kind}_{label_type}.json")) as f:
            splits = json.load(f)
        if not 0 <= split_id < len(splits):
            raise DatasetError(f"dataset 'cuhk03': split_id {split_id} out of range (0..{len(splits) - 1}) for the "
                               f"{kind} protocol.\nFix: pass --split-id within that range.")
        split = splits[split_id]
        img_dir = os.path.join(folder, f"images_{label_type}")

        def recs(items):
            return [Record(os.path.join(img_dir, n), int(p), int(c)) for n, p, c in items]

        super().__init__(recs(split["train"]), recs(split["query"]), recs(split["gallery"]), name="cuhk03",
                         root=folder, protocol="cuhk03" if classic_split else "market1501", label_type=label_type,
                         texture_key=f"cuhk03_{label_type}", num_splits=len(splits))
