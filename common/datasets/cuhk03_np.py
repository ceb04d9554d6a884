"""CUHK03 under the new 767/700 protocol (CUHK03-NP), Market-style folders.

See :mod:`common.datasets.market1501` for the shared folder rules (junk, distractors, malformed names).
"""
from __future__ import annotations

import os
import re

from common.datasets.base import ReidDataset, check_dirs, relabel
from common.datasets.market1501 import SPLIT_FOLDERS, find_folder, market_style_splits, reject_unknown_kwargs

# pid, camera 1..2, then (ignored) the index of the image within (pid, camera)
CUHK03_NP_RE = re.compile(r"^(-1|\d+)_c([12])(?:_[^.]*)?\.(?:png|jpg)$")
LABEL_TYPES = ("detected", "labeled")

_TREE = """  <data-dir>/cuhk03-np/                (also accepted: <data-dir>/cuhk03_np_<label_type> (QAConv),
      detected/                          <data-dir>/cuhk03/cuhk03-np/<label_type>)
          bounding_box_train/  0001_c1_1.png ...
          query/               0003_c1_1.png ...
          bounding_box_test/   0003_c2_6.png ...
      labeled/
          bounding_box_train/  query/  bounding_box_test/   (same names)"""


class CUHK03NP(ReidDataset):
    """CUHK03-NP (CUHK03 with the new 767/700 identity split).

    Reference:
        - Li et al. DeepReID: Deep Filter Pairing Neural Network for Person Re-identification. CVPR 2014.
        - Zhong et al. Re-ranking Person Re-identification with k-reciprocal Encoding. CVPR 2017.

    URL: `<https://github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP>`_

    Dataset statistics (real data):
        - train: 767 ids; query / gallery: 700 ids; 2 cameras.
        - detected: 7,365 train, 1,400 query, 5,332 gallery images.
        - labeled: 7,368 train, 1,400 query, 5,328 gallery images.

    Expected tree (``root`` is ``--data-dir``)::

        <data-dir>/cuhk03-np/{detected,labeled}/{bounding_box_train,query,bounding_box_test}/*.png

    also accepted: ``<data-dir>/cuhk03_np_detected`` / ``cuhk03_np_labeled`` (QAConv),
    ``<data-dir>/cuhk03/cuhk03-np/<label_type>``, or ``root`` pointing at the ``<label_type>`` folder itself.

    Names ``0001_c1_1.png``: pid ``0001``, camera ``c1`` (camid 0), image index ``1`` within (pid, camera);
    what follows the camera is not parsed (as QAConv, which reads only ``<pid>_c<cam>``). The index is not a
    time stamp, so ``Record.frame`` is -1 (QAConv likewise has no time info for CUHK03).
    ``.jpg`` copies of the same names (the ``cuhk03-np-jpg`` conversions) are accepted too. Evaluated
    Market-style (protocol ``market1501``): the NP protocol has no per-split sampling.

    Args:
        root: the ``--data-dir`` folder.
        label_type: 'detected' (DPM boxes, the harder and more common setting) or 'labeled' (hand-drawn boxes).
    """

    def __init__(self, root: str, label_type: str = "detected", **kwargs):
        if label_type == "labelled":
            label_type = "labeled"
        if label_type not in LABEL_TYPES:
            raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
        name = f"cuhk03_np_{label_type}"
        reject_unknown_kwargs(name, kwargs)
        candidates = [os.path.join(root, "cuhk03-np", label_type), os.path.join(root, name),
                      os.path.join(root, "cuhk03", "cuhk03-np", label_type)]
        folder = find_folder(root, candidates, SPLIT_FOLDERS[0])
        check_dirs(root, [folder] + [os.path.join(folder, s) for s in SPLIT_FOLDERS], name, _TREE)
        raw_train, query, gallery = market_style_splits(
            folder, CUHK03_NP_RE, "0001_c1_1.png", name, lambda m: (int(m.group(1)), int(m.group(2)) - 1, -1))
        super().__init__(relabel(raw_train), query, gallery, name=name, root=folder, protocol="market1501",
                         label_type=label_type, train_pids_original=sorted({r.pid for r in raw_train}))
