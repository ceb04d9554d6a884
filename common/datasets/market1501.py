"""Market-1501, plus the folder scanner shared by the Market-style benchmarks (DukeMTMC-reID, CUHK03-NP).

Market-style benchmarks keep three flat folders of images whose names carry the person id and the camera:
``bounding_box_train`` (training), ``query`` and ``bounding_box_test`` (gallery). Rules applied here to every
such benchmark: pid ``-1`` (junk boxes) is dropped everywhere; pid ``0`` (distractors) is kept in the gallery
only; training pids are relabelled to ``0..N-1``; query and gallery keep their original pids.

Malformed names: files without an image extension (``Thumbs.db``, notes) are ignored silently; an image file
whose name does not follow the benchmark's pattern is skipped with one :class:`UserWarning` per folder (count
and first example), because a stray file should not stop a run but should not vanish unnoticed either. A
folder with no parseable image at all raises :class:`DatasetError` naming the folder and the pattern.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Callable, Dict, List, Sequence, Tuple

from common.datasets.base import DatasetError, Record, ReidDataset, check_dirs, first_existing, relabel

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")

# pid (-1 junk, 0000 distractor), camera 1..6, sequence, frame, detection index
MARKET_RE = re.compile(r"^(-1|\d+)_c([1-6])s(\d)_(\d+)_(\d+)\.jpg$")
MARKET_FPS = 25.0

_TREE = """  <data-dir>/Market-1501-v15.09.15/
      bounding_box_train/  0002_c1s1_000451_03.jpg ...
      query/               0001_c1s1_001051_00.jpg ...
      bounding_box_test/   0001_c1s1_001051_03.jpg, 0000_c1s1_000151_01.jpg (distractor), -1_c1s1_000401_03.jpg (junk)
  (instead of Market-1501-v15.09.15 also accepted: market1501/Market-1501-v15.09.15, Market-1501, market;
   or pass the dataset folder itself)"""


def scan_folder(folder: str, pattern: "re.Pattern", example: str, dataset: str) -> List[Tuple[str, "re.Match"]]:
    """Image files of ``folder`` (not recursive) whose names match ``pattern``, sorted by name.

    Args:
        folder: the folder to list.
        pattern: compiled regex matched against the whole file name.
        example: a correct file name, quoted in warnings and errors.
        dataset: dataset key, quoted in warnings and errors.
    Returns:
        list of (path, match).
    Raises:
        DatasetError: the folder holds no image whose name matches.
    """
    matched, bad = [], []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith(IMAGE_EXTS):
            continue
        m = pattern.match(name)
        if m is None:
            bad.append(name)
        else:
            matched.append((os.path.join(folder, name), m))
    if bad:
        warnings.warn(f"dataset '{dataset}': skipped {len(bad)} image(s) in {folder} not named like "
                      f"'{example}' (pattern {pattern.pattern}), e.g. {bad[0]}", UserWarning, stacklevel=3)
    if not matched:
        raise DatasetError(f"dataset '{dataset}': no image named like '{example}' (pattern {pattern.pattern}) "
                           f"in {folder}" + (f"; found e.g. {bad[0]}" if bad else " (no image files at all)"))
    return matched


def market_style_splits(folder: str, pattern: "re.Pattern", example: str, dataset: str,
                        parse: Callable[["re.Match"], Tuple[int, int, int]]):
    """Parse the three Market-style folders of ``folder`` with the junk/distractor rules of this module.

    Args:
        folder: dataset folder holding ``bounding_box_train``, ``query``, ``bounding_box_test``.
        pattern, example, dataset: see :func:`scan_folder`.
        parse: match -> (pid, 0-based camid, frame).
    Returns:
        (train with original pids, query, gallery) lists of Record.
    """
    out = []
    for split, sub in zip(("train", "query", "gallery"), SPLIT_FOLDERS):
        records = []
        for path, m in scan_folder(os.path.join(folder, sub), pattern, example, dataset):
            pid, camid, frame = parse(m)
            if pid < 0 or (pid == 0 and split != "gallery"):
                continue
            records.append(Record(path, pid, camid, frame))
        out.append(records)
    return out[0], out[1], out[2]


def market_session_offsets(names: Sequence[str]) -> Dict[Tuple[int, int], int]:
    """Cumulative frame offset of every (camera, sequence) of Market-1501 names.

    Frame numbers restart in every sequence ``s1, s2, ...`` of a camera. Following QAConv's TLift set-up
    (ShengcaiLiao/QAConv ``reid/datasets/market.py``), the sequences of one camera are assumed to be recorded
    back to back, each lasting as long as its largest frame number seen in any split: sequence ``k`` of camera
    ``c`` is shifted by the sum of those maxima over sequences ``1..k-1`` of ``c``.

    Args:
        names: file names matching :data:`MARKET_RE` (all kept images of the three splits).
    Returns:
        {(camera 1-based, sequence 1-based): offset in frames}.
    """
    longest: Dict[Tuple[int, int], int] = {}
    for name in names:
        m = MARKET_RE.match(name)
        key = (int(m.group(2)), int(m.group(3)))
        longest[key] = max(longest.get(key, 0), int(m.group(4)))
    offsets = {}
    for cam, seq in longest:
        offsets[(cam, seq)] = sum(longest.get((cam, s), 0) for s in range(1, seq))
    return offsets


class Market1501(ReidDataset):
    """Market-1501.

    Reference:
        Zheng et al. Scalable Person Re-identification: A Benchmark. ICCV 2015.

    URL: `<http://www.liangzheng.org/Project/project_reid.html>`_

    Dataset statistics (real data, after dropping junk ``-1``):
        - train: 751 ids, 12,936 images; query: 750 ids, 3,368 images;
          gallery: 751 ids (750 + distractor id 0), 15,913 images; 6 cameras.

    Expected tree (``root`` is ``--data-dir``)::

        <data-dir>/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/*.jpg

    also accepted, first found wins: ``<data-dir>/market1501/Market-1501-v15.09.15`` (torchreid),
    ``<data-dir>/Market-1501`` and ``<data-dir>/market`` (QAConv); ``root`` may also be the dataset folder
    itself (it holds ``bounding_box_train``).

    Names ``0002_c1s1_000451_03.jpg``: pid ``0002``, camera ``c1`` (camid 0), sequence ``s1``, frame
    ``000451``, detection ``03``. ``Record.frame`` is the frame made continuous per camera by
    :func:`market_session_offsets` (QAConv's TLift time stamp times the 25 fps in ``extra['fps']``).

    Args:
        root: the ``--data-dir`` folder.
    """

    name = "market"

    def __init__(self, root: str, **kwargs):
        reject_unknown_kwargs(self.name, kwargs)
        candidates = [os.path.join(root, "Market-1501-v15.09.15"),
                      os.path.join(root, "market1501", "Market-1501-v15.09.15"),
                      os.path.join(root, "Market-1501"), os.path.join(root, "market")]
        folder = find_folder(root, candidates, SPLIT_FOLDERS[0])
        check_dirs(root, [folder] + [os.path.join(folder, s) for s in SPLIT_FOLDERS], self.name, _TREE)
        raw_train, query, gallery = market_style_splits(
            folder, MARKET_RE, "0002_c1s1_000451_03.jpg", self.name,
            lambda m: (int(m.group(1)), int(m.group(2)) - 1, int(m.group(4))))
        offsets = market_session_offsets([os.path.basename(r.img_path) for r in raw_train + query + gallery])

        def shift(records: List[Record]) -> List[Record]:
            out = []
            for r in records:
                m = MARKET_RE.match(os.path.basename(r.img_path))
                out.append(r._replace(frame=r.frame + offsets[(int(m.group(2)), int(m.group(3)))]))
            return out

        raw_train = shift(raw_train)
        super().__init__(relabel(raw_train), shift(query), shift(gallery), name=self.name, root=folder,
                         protocol="market1501", fps=MARKET_FPS,
                         train_pids_original=sorted({r.pid for r in raw_train}))


def reject_unknown_kwargs(dataset: str, kwargs: Dict, allowed: Sequence[str] = ("verbose",)) -> None:
    """Raise TypeError for keyword arguments a dataset class does not take (a typo must not pass silently);
    the names in ``allowed`` are accepted and ignored."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"dataset '{dataset}': unexpected argument(s) {', '.join(unknown)}")


def find_folder(root: str, candidates: Sequence[str], marker: str) -> str:
    """The dataset folder: ``root`` itself when it holds ``marker`` (a path pointing straight at the dataset,
    e.g. ``--market_path``), else the first existing candidate, else the first candidate (for the error)."""
    if os.path.exists(os.path.join(root, marker)):
        return root
    return first_existing(candidates) or candidates[0]
