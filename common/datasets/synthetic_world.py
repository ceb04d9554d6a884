"""World simulation of the synthetic re-ID dataset: configuration, camera network, walking trajectories, splits.

Everything here is a pure function of :class:`SynthConfig`; every random choice is drawn from its own
:func:`rng_for` stream keyed by (seed, stream, keys...), so the order in which identities or images are
produced never changes what they look like.

The world: ``num_cams`` cameras on a walking route (a chain of positions in metres, plus a few shortcut
edges between nearby cameras). Each identity enters at a uniform global time in ``[0, duration_s]`` at some
camera, walks a random simple path through the graph at its own speed, and yields one tracklet of a few
consecutive frames per camera it passes. Frame numbers are a single global clock at ``fps`` (one sequence
``s1`` per camera), so a frame difference between two cameras is a transit time: same-id pairs cluster around
``distance / speed`` for their camera pair, different-id pairs spread over the whole ``duration_s`` range.
The walking direction relative to each camera's looking direction decides the viewpoint (front/back/side).
Image jobs (names, Market folders, distractors, junk) are planned in ``synthetic_plan``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import numpy as np

VERSION = "synthetic-reid-1.0"
DISTRACTOR_KEY = 100000  # appearance key offset of distractor persons (file pid 0000)
JUNK_KEY = 200000  # appearance key offset of persons cut into junk crops (file pid -1)
_STREAMS = {"split": 1, "network": 2, "route": 3, "person": 4, "image": 5, "visit": 6, "distractor": 7,
            "junk": 8, "query": 9, "scene": 10, "sysu": 11, "texture": 12}


def rng_for(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """Independent random stream for (seed, stream name, integer keys >= -16)."""
    return np.random.default_rng([int(seed), _STREAMS[stream]] + [int(k) + 16 for k in keys])


@dataclass(frozen=True)
class SynthConfig:
    """Generation arguments. The folder name (:meth:`name`) lists every argument that differs from default.

    Attributes:
        num_ids: identities (pids 1..num_ids), split into train and test.
        seed: master seed.
        num_cams: cameras (1..9, Market file names carry one digit).
        images_per_visit: mean tracklet length (images per camera visit; drawn in [ipv-1, ipv+1]).
        num_distractors: distractor images (pid 0000, unrelated people) in the gallery; None = 0.4 * num_ids.
        num_junk: junk images (pid -1, background / body-part crops) in the gallery; None = 0.2 * num_ids.
        train_fraction: fraction of identities in the training split.
        palette_size: number of shared clothing colours (smaller = harder for colour histograms).
        duration_s: length of the entry-time window in seconds.
        fps: frame rate of the global clock.
        infrared: also write the SYSU-MM01 tree (cams 3 and 6 near-infrared).
        textures: also write ``textures/{pid:04d}.png`` clothing texture maps.
        jpeg_quality: JPEG quality of every image.
    """

    num_ids: int = 300
    seed: int = 0
    num_cams: int = 6
    images_per_visit: int = 3
    num_distractors: Optional[int] = None
    num_junk: Optional[int] = None
    train_fraction: float = 0.5
    palette_size: int = 8
    duration_s: float = 1800.0
    fps: int = 25
    infrared: bool = False
    textures: bool = False
    jpeg_quality: int = 90

    _SHORT = {"num_cams": "c", "images_per_visit": "v", "num_distractors": "d", "num_junk": "j",
              "train_fraction": "tf", "palette_size": "p", "duration_s": "t", "fps": "fps",
              "jpeg_quality": "q"}

    def __post_init__(self):
        if not 1 <= self.num_cams <= 9:
            raise ValueError("num_cams must be in 1..9 (Market names carry one camera digit)")
        if self.num_ids < 2 or self.num_ids > 9999:
            raise ValueError("num_ids must be in 2..9999")
        if self.images_per_visit < 1:
            raise ValueError("images_per_visit must be >= 1")
        if (self.duration_s + 3000) * self.fps >= 1e6:
            raise ValueError("duration_s * fps too large: frame numbers must fit Market's 6 digits")
        if self.infrared and self.num_cams < 3:
            raise ValueError("infrared needs num_cams >= 3 (cameras 3, 6, 9 are near-infrared)")

    def name(self) -> str:
        """Folder name, e.g. ``market_s0_n300`` or ``market_s1_n8_c4_ir_tex``."""
        parts = [f"market_s{self.seed}_n{self.num_ids}"]
        default = SynthConfig()
        for key, short in self._SHORT.items():
            value = getattr(self, key)
            if value != getattr(default, key):
                parts.append(f"{short}{value:g}" if isinstance(value, float) else f"{short}{value}")
        if self.infrared:
            parts.append("ir")
        if self.textures:
            parts.append("tex")
        return "_".join(parts)

    @property
    def distractors(self) -> int:
        """Resolved number of distractor images."""
        return int(round(0.4 * self.num_ids)) if self.num_distractors is None else self.num_distractors

    @property
    def junk(self) -> int:
        """Resolved number of junk images."""
        return int(round(0.2 * self.num_ids)) if self.num_junk is None else self.num_junk

    def to_dict(self) -> Dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Camera:
    """One camera: placement and imaging properties (all drawn from the ``network`` stream).

    ``ir``: near-infrared in the SYSU tree (1-based index divisible by 3). ``wb``: RGB gains (colour cast).
    ``scale``: mean person height / crop height. ``blur``: Gaussian sigma in output pixels. ``lowres``:
    down-sampling factor applied before blur (1 = none). ``occlusion``: probability a visit is occluded.
    """

    index: int
    pos: Tuple[float, float]
    look: float
    ir: bool
    wb: Tuple[float, float, float]
    exposure: float
    gamma: float
    saturation: float
    blur: float
    lowres: float
    noise: float
    scale: float
    occlusion: float
    scene_seed: int


@dataclass(frozen=True)
class Network:
    """Cameras and walkable edges ``(i, j, metres)`` (0-based camera indices)."""

    cameras: Tuple[Camera, ...]
    edges: Tuple[Tuple[int, int, float], ...]

    def neighbours(self, i: int) -> List[Tuple[int, float]]:
        out = [(b, d) for a, b, d in self.edges if a == i] + [(a, d) for a, b, d in self.edges if b == i]
        return sorted(out)

    def to_dict(self) -> Dict:
        cams = []
        for c in self.cameras:
            d = dataclasses.asdict(c)
            cams.append({k: (round(v, 4) if isinstance(v, float) else
                             [round(x, 4) for x in v] if isinstance(v, tuple) else v) for k, v in d.items()})
        return {"cameras": cams, "edges": [[a, b, round(d, 2)] for a, b, d in self.edges]}


@lru_cache(maxsize=8)
def build_network(seed: int, num_cams: int) -> Network:
    """Cameras along a bending walking route (40-140 m apart) plus shortcuts between close cameras."""
    rng = rng_for(seed, "network", num_cams)
    pos, heading = [(0.0, 0.0)], rng.uniform(0, 2 * math.pi)
    for _ in range(num_cams - 1):
        step, heading = rng.uniform(40, 140), heading + rng.normal(0, 0.9)
        pos.append((pos[-1][0] + step * math.cos(heading), pos[-1][1] + step * math.sin(heading)))
    edges = [(i, i + 1, 1.1 * math.dist(pos[i], pos[i + 1])) for i in range(num_cams - 1)]
    for i in range(num_cams):
        for j in range(i + 2, num_cams):
            d = math.dist(pos[i], pos[j])
            if rng.random() < 0.5 and d < 120:
                edges.append((i, j, 1.2 * d))
    cams = []
    for i in range(num_cams):
        temp = rng.uniform(-1, 1)  # colour temperature: -1 warm (orange) .. +1 cool (blue)
        tint = rng.normal(0, 0.02)
        cams.append(Camera(
            index=i, pos=pos[i], look=float(rng.uniform(-math.pi, math.pi)), ir=(i + 1) % 3 == 0,
            wb=(1 - 0.09 * temp, 1 + tint, 1 + 0.1 * temp), exposure=float(rng.uniform(0.88, 1.12)),
            gamma=float(rng.uniform(0.92, 1.1)), saturation=float(rng.uniform(0.84, 1.06)),
            blur=float(rng.uniform(0.0, 0.9)), lowres=float(rng.choice([1.0, 1.0, 1.6, 2.2])),
            noise=float(rng.uniform(2, 7)), scale=float(rng.uniform(0.84, 0.97)),
            occlusion=float(rng.uniform(0.05, 0.25)), scene_seed=int(rng.integers(1 << 30))))
    return Network(tuple(cams), tuple(edges))


@dataclass(frozen=True)
class Visit:
    """One pass of an identity under one camera: a tracklet of consecutive global frames."""

    cam: int
    frames: Tuple[int, ...]
    view: str  # 'front' | 'back' | 'left' | 'right' (which way the person faces in the image)


@dataclass
class Identity:
    """An identity's trajectory: entry time (s), walking speed (m/s) and its camera visits in route order."""

    pid: int
    split: str
    speed: float
    entry_s: float
    visits: List[Visit] = field(default_factory=list)


def view_of(heading: float, look: float, rng: np.random.Generator) -> str:
    """Viewpoint from the walking heading and the camera's looking direction (radians, noisy)."""
    a = (heading - look + rng.normal(0, 0.35) + math.pi) % (2 * math.pi) - math.pi
    if abs(a) < math.pi / 4:
        return "back"  # walking away from the camera
    if abs(a) > 3 * math.pi / 4:
        return "front"
    return "left" if a > 0 else "right"


def _route(net: Network, rng: np.random.Generator) -> List[int]:
    """Random simple path of >= 2 cameras (continue with p=0.6); prefers routes with both modalities."""
    n = len(net.cameras)
    best: List[int] = []
    for _ in range(50):
        route = [int(rng.integers(n))]
        while True:
            nxt = [j for j, _ in net.neighbours(route[-1]) if j not in route]
            if not nxt or (len(route) >= 2 and rng.random() > 0.6):
                break
            route.append(int(nxt[rng.integers(len(nxt))]))
        kinds = {net.cameras[c].ir for c in route}
        if len(route) >= min(2, n) and (len(kinds) == 2 or n < 3):
            return route
        best = route if len(route) > len(best) else best
    return best


def split_ids(cfg: SynthConfig) -> Tuple[List[int], List[int]]:
    """Disjoint (train pids, test pids), sorted; pids are 1..num_ids shuffled into the two splits."""
    perm = rng_for(cfg.seed, "split", cfg.num_ids).permutation(np.arange(1, cfg.num_ids + 1))
    n_train = min(max(1, int(round(cfg.train_fraction * cfg.num_ids))), cfg.num_ids - 1)
    return sorted(int(p) for p in perm[:n_train]), sorted(int(p) for p in perm[n_train:])


def plan_identity(cfg: SynthConfig, pid: int, split: str) -> Identity:
    """Trajectory of one identity: route, transit times (distance / speed + noise), tracklet frames, views."""
    net = build_network(cfg.seed, cfg.num_cams)
    rng = rng_for(cfg.seed, "route", pid)
    speed = float(np.clip(rng.normal(1.35, 0.2), 0.9, 1.9))
    entry = float(rng.uniform(0, cfg.duration_s))
    route = _route(net, rng)
    dist = {(a, b): d for a, b, d in net.edges}
    dist.update({(b, a): d for a, b, d in net.edges})
    ident, t = Identity(pid, split, speed, entry), entry
    for k, cam in enumerate(route):
        src, dst = (cam, route[k + 1]) if k + 1 < len(route) else (route[k - 1] if k else cam, cam)
        p0, p1 = net.cameras[src].pos, net.cameras[dst].pos
        heading = math.atan2(p1[1] - p0[1], p1[0] - p0[0]) if src != dst else rng.uniform(-math.pi, math.pi)
        count = int(rng.integers(max(1, cfg.images_per_visit - 1), cfg.images_per_visit + 2))
        stride = int(rng.integers(4, 10))
        f0 = int(round(t * cfg.fps))
        ident.visits.append(Visit(cam, tuple(f0 + j * stride for j in range(count)),
                                  view_of(heading, net.cameras[cam].look, rng)))
        if k + 1 < len(route):
            dwell = (count - 1) * stride / cfg.fps + float(rng.exponential(2.0))
            t += dwell + dist[(cam, route[k + 1])] / speed * (1 + float(rng.normal(0, 0.04)))
    return ident
