"""Image jobs of the synthetic dataset: which detection is rendered, with which name, into which Market folder.

Train identities go entirely to ``bounding_box_train``. For each test identity and each camera where it is seen,
one image (drawn from the ``query`` stream) goes to ``query`` and the rest to ``bounding_box_test`` (Market
style). The gallery also receives ``cfg.distractors`` images of unrelated people (pid 0000, appearance keys
``DISTRACTOR_KEY + k``) and ``cfg.junk`` junk crops (pid -1: background only, or a body part / a person mostly
out of frame). Detection numbers ``_{det:02d}`` keep names unique when several detections share a frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

from common.datasets.synthetic_world import (DISTRACTOR_KEY, JUNK_KEY, Identity, SynthConfig, Visit,
                                             plan_identity, rng_for, split_ids)


@dataclass(frozen=True)
class ImageJob:
    """One image to render and where it goes.

    ``person``: appearance key (pid for identities, ``DISTRACTOR_KEY + k`` / ``JUNK_KEY + k`` otherwise).
    ``kind``: 'person' | 'distractor' | 'junk_bg' | 'junk_part'. ``visit_frame``: first frame of the tracklet
    (keys the per-visit stream shared by its frames); ``step``: index inside the tracklet.
    """

    subset: str
    pid: int
    person: int
    cam: int
    frame: int
    det: int
    view: str
    kind: str
    visit_frame: int
    step: int

    @property
    def filename(self) -> str:
        """Market name ``{pid:04d}_c{cam}s1_{frame:06d}_{det:02d}.jpg`` (junk: ``-1_c...``)."""
        head = "-1" if self.pid < 0 else f"{self.pid:04d}"
        return f"{head}_c{self.cam + 1}s1_{self.frame:06d}_{self.det:02d}.jpg"


def plan_jobs(cfg: SynthConfig) -> Tuple[List[Identity], List[ImageJob]]:
    """All identities and every Market-layout image job (train, query, gallery incl. distractors and junk)."""
    train, test = split_ids(cfg)
    idents = [plan_identity(cfg, p, "train") for p in train] + [plan_identity(cfg, p, "test") for p in test]
    idents.sort(key=lambda i: i.pid)
    jobs: List[ImageJob] = []
    for ident in idents:
        per_cam: Dict[int, List[Tuple[Visit, int, int]]] = {}
        for v in ident.visits:
            per_cam.setdefault(v.cam, []).extend((v, f, s) for s, f in enumerate(v.frames))
        for cam, items in sorted(per_cam.items()):
            q = int(rng_for(cfg.seed, "query", ident.pid, cam).integers(len(items))) if ident.split == "test" else -1
            for n, (v, f, s) in enumerate(items):
                subset = "bounding_box_train" if ident.split == "train" else (
                    "query" if n == q else "bounding_box_test")
                jobs.append(ImageJob(subset, ident.pid, ident.pid, cam, f, 1, v.view, "person", v.frames[0], s))
    used = {(j.pid, j.cam, j.frame, j.det) for j in jobs}
    max_frame = int((cfg.duration_s + 600) * cfg.fps)
    views = ("front", "back", "left", "right")
    for kind, count, key0, pid in (("distractor", cfg.distractors, DISTRACTOR_KEY, 0),
                                   ("junk", cfg.junk, JUNK_KEY, -1)):
        for k in range(count):
            rng = rng_for(cfg.seed, kind, k)
            cam, frame = int(rng.integers(cfg.num_cams)), int(rng.integers(max_frame))
            det = 1
            while (pid, cam, frame, det) in used:
                det += 1
            used.add((pid, cam, frame, det))
            sub_kind = kind if kind == "distractor" else ("junk_bg" if rng.random() < 0.5 else "junk_part")
            jobs.append(ImageJob("bounding_box_test", pid, key0 + k, cam, frame, det,
                                 views[int(rng.integers(4))], sub_kind, frame, 0))
    return idents, jobs
