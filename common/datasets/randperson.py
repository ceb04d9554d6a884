"""RandPerson: synthetic training-only re-ID data (the 132k-image subset used by QAConv)."""
from __future__ import annotations

import os
import re

from common.datasets.base import Record, ReidDataset, check_dirs, first_existing, relabel
from common.datasets.market1501 import reject_unknown_kwargs, scan_folder

# pid, scene 0..10 (letter s or c, see below), camera within the scene, frame
RANDPERSON_RE = re.compile(r"^(\d+)_[sc](0*(?:10|[0-9]))_[sc](\d+)_f(\d+)\.(?:jpg|png)$")
RANDPERSON_FPS = 24.0
# Per scene (0..10): first global camera id, and the frame offset that puts the scenes' clocks one after the
# other, as QAConv (reid/datasets/randperson.py) defines them for TLift.
SCENE_CAMERA_OFFSET = (0, 2, 4, 6, 8, 9, 10, 12, 13, 14, 15)
SCENE_FRAME_OFFSET = (0, 160000, 340000, 490000, 640000, 1070000, 1330000, 1590000, 1890000, 3190000, 3490000)

_TREE = """  <data-dir>/randperson_subset/randperson_subset/   (the unpacked Google Drive archive; also accepted:
      000000_s00_c00_f000264.jpg ...                  <data-dir>/randperson/randperson_subset (QAConv),
                                                      <data-dir>/randperson_subset)"""


class RandPerson(ReidDataset):
    """RandPerson (training only).

    Reference:
        Wang et al. Surpassing Real-World Source Training Data: Random 3D Characters for Generalizable Person
        Re-Identification. ACM MM 2020.

    URL: `<https://github.com/VideoObjectSearch/RandPerson>`_

    Dataset statistics (real data): the released subset has 8,000 ids and 132,145 images from 19 cameras in
    11 scenes (the full set: 1,801,816 images). All of it is training data: ``query`` and ``gallery`` are
    empty; evaluate on another benchmark.

    Expected tree (``root`` is ``--data-dir``)::

        <data-dir>/randperson_subset/randperson_subset/*.jpg

    also accepted, first found wins: ``<data-dir>/randperson/randperson_subset`` (QAConv),
    ``<data-dir>/randperson_subset``.

    Names ``000000_s00_c00_f000264.jpg``: pid ``000000``, scene ``s00``, camera ``c00`` within the scene,
    frame ``000264``. Older copies of the README write the same positions as ``c00_s00``; as QAConv, the
    fields are read by position (2nd = scene 0..10, 3rd = camera within it), whatever their letter.
    camid = :data:`SCENE_CAMERA_OFFSET` [scene] + camera (0..18, one id per real camera);
    ``Record.frame`` = :data:`SCENE_FRAME_OFFSET` [scene] + frame (QAConv's TLift time stamp times the
    24 fps in ``extra['fps']``). Pids are relabelled to 0..N-1. Names with a scene outside 0..10 are skipped
    with the malformed-name warning of :func:`~common.datasets.market1501.scan_folder`.

    Args:
        root: the ``--data-dir`` folder.
    """

    name = "randperson"

    def __init__(self, root: str, **kwargs):
        reject_unknown_kwargs(self.name, kwargs)
        candidates = [os.path.join(root, "randperson_subset", "randperson_subset"),
                      os.path.join(root, "randperson", "randperson_subset"), os.path.join(root, "randperson_subset")]
        folder = first_existing(candidates) or candidates[0]
        check_dirs(root, [folder], self.name, _TREE)
        records = []
        for path, m in scan_folder(folder, RANDPERSON_RE, "000000_s00_c00_f000264.jpg", self.name):
            scene, cam = int(m.group(2)), int(m.group(3))
            records.append(Record(path, int(m.group(1)), SCENE_CAMERA_OFFSET[scene] + cam,
                                  SCENE_FRAME_OFFSET[scene] + int(m.group(4))))
        super().__init__(relabel(records), [], [], name=self.name, root=folder, protocol="market1501",
                         fps=RANDPERSON_FPS, train_pids_original=sorted({r.pid for r in records}))

