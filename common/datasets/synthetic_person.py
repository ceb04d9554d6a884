"""Procedural person appearance: shared colour palette, per-identity spec and its unfolded texture map.

The texture map (``TEX`` x ``TEX`` = 64 x 64 RGB, the file written as ``textures/{pid:04d}.png``) is the single
source of a person's surface appearance; the renderer samples every body part from it. Layout (rows, cols):

====================  ==============  =========================================================
region                rows x cols     content
====================  ==============  =========================================================
``top_front``         0:28 x 0:32     upper garment seen from the front (logo, open jacket ...)
``top_back``          0:28 x 32:64    upper garment seen from the back
``bottom_front``      28:52 x 0:32    trousers / shorts, front (left leg cols 0:16, right 16:32)
``bottom_back``       28:52 x 32:64   trousers / shorts, back
``arm``               52:64 x 0:16    sleeve strip: rows run shoulder -> hand (sleeve, then skin)
``skin`` ``hair``     52:64 x 16:24,  flat swatches: skin, hair, shoes, shoulder bag, hat,
``shoes`` ``bag``     24:32, 32:40,   backpack (a swatch is present even when the accessory is
``hat`` ``pack``      40:48, 48:56,   absent; the spec says whether to draw it)
                      56:64
====================  ==============  =========================================================

Colours come from a SMALL palette shared by all identities, so identities mostly differ by arrangement (which
colour is on top vs bottom), pattern, accessories and shape rather than by colour content. Every texel also
carries a near-infrared reflectance drawn per material (dye), independent of its visible grey level.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Optional, Tuple

import numpy as np

from common.datasets.synthetic_world import rng_for

TEX = 64
REGIONS: Dict[str, Tuple[int, int, int, int]] = {  # name -> (row0, col0, row1, col1)
    "top_front": (0, 0, 28, 32), "top_back": (0, 32, 28, 64),
    "bottom_front": (28, 0, 52, 32), "bottom_back": (28, 32, 52, 64),
    "arm": (52, 0, 64, 16), "skin": (52, 16, 64, 24), "hair": (52, 24, 64, 32), "shoes": (52, 32, 64, 40),
    "bag": (52, 40, 64, 48), "hat": (52, 48, 64, 56), "pack": (52, 56, 64, 64)}

# name, sRGB, base near-infrared reflectance (dyes: dark clothes are often bright in NIR and vice versa)
CLOTH_PALETTE = (
    ("black", (28, 28, 32), 0.62), ("white", (222, 222, 216), 0.80), ("grey", (118, 120, 124), 0.35),
    ("navy", (36, 46, 92), 0.72), ("red", (168, 36, 42), 0.50), ("blue", (62, 102, 170), 0.22),
    ("khaki", (176, 156, 110), 0.58), ("green", (52, 96, 62), 0.85), ("brown", (102, 66, 40), 0.45),
    ("yellow", (212, 182, 52), 0.66), ("pink", (212, 142, 162), 0.40), ("purple", (102, 60, 122), 0.30))
CLOTH_WEIGHTS = (0.19, 0.12, 0.14, 0.13, 0.09, 0.12, 0.10, 0.09, 0.06, 0.04, 0.04, 0.04)
SKIN_TONES = (((232, 196, 170), 0.72), ((210, 165, 130), 0.70), ((176, 124, 90), 0.66),
              ((130, 88, 60), 0.62), ((88, 58, 40), 0.58))
HAIR_COLOURS = (((24, 20, 18), 0.35), ((60, 40, 26), 0.42), ((104, 72, 42), 0.48),
                ((186, 152, 96), 0.55), ((150, 150, 148), 0.50))
TOP_PATTERNS = ("solid", "solid", "hstripes", "vstripes", "checks", "logo", "twotone", "jacket")
SLOTS = ("top1", "top2", "bot1", "bot2", "shoes", "skin", "hair", "bag", "hat", "pack")


@dataclass(frozen=True)
class PersonSpec:
    """Everything drawn per identity. Colours are sRGB 0-255 tuples, ``ir`` is NIR reflectance 0-1 per slot.

    ``width``: body width factor; ``legs``: leg length / body height; ``head``: head size factor;
    ``cadence``: walking steps per second; ``bag``: None, 'left' or 'right' (body side of the shoulder bag).
    """

    colours: Tuple[Tuple[int, int, int], ...]
    ir: Tuple[float, ...]
    top_pattern: str
    bottom: str  # 'trousers' | 'shorts' | 'sidestripe'
    sleeves: str  # 'long' | 'short'
    hair_style: str  # 'short' | 'long'
    hat: bool
    backpack: bool
    bag: Optional[str]
    width: float
    legs: float
    head: float
    cadence: float
    period: int  # stripe / check period in texels
    logo: str  # 'circle' | 'square' | 'triangle' | 'bar'

    def colour(self, slot: str) -> Tuple[int, int, int]:
        return self.colours[SLOTS.index(slot)]


def _palette_pick(rng: np.random.Generator, palette_size: int, exclude=()) -> int:
    w = np.array(CLOTH_WEIGHTS[:palette_size], dtype=np.float64)
    for e in exclude:
        w[e] = 0.0
    return int(rng.choice(palette_size, p=w / w.sum()))


def sample_spec(seed: int, key: int, palette_size: int = 8) -> PersonSpec:
    """Draw the spec of appearance ``key`` (pid, or distractor / junk key) from its own stream."""
    rng = rng_for(seed, "person", key)
    k = max(2, min(palette_size, len(CLOTH_PALETTE)))
    t1 = _palette_pick(rng, k)
    t2 = _palette_pick(rng, k, exclude=(t1,))
    b1 = _palette_pick(rng, k, exclude=(t1,) if rng.random() < 0.6 else ())
    b2 = _palette_pick(rng, k, exclude=(b1,))
    cols, irs = [], []
    for idx in (t1, t2, b1, b2) + tuple(_palette_pick(rng, k) for _ in range(4)):  # + shoes, bag, hat, pack
        _, rgb, ir = CLOTH_PALETTE[idx]
        jitter = rng.normal(0, 6, 3)  # dye batch: same palette colour, slightly different shade
        cols.append(tuple(int(np.clip(c, 0, 255)) for c in (np.array(rgb) + jitter)))
        irs.append(float(np.clip(ir + rng.normal(0, 0.12), 0.05, 0.95)))
    skin, skin_ir = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    hair, hair_ir = HAIR_COLOURS[int(rng.choice(len(HAIR_COLOURS), p=[0.4, 0.25, 0.15, 0.1, 0.1]))]
    cols[5:5] = [skin, hair]
    irs[5:5] = [skin_ir + float(rng.normal(0, 0.03)), hair_ir + float(rng.normal(0, 0.05))]
    bag = rng.random()
    return PersonSpec(
        colours=tuple(cols), ir=tuple(irs), top_pattern=TOP_PATTERNS[int(rng.integers(len(TOP_PATTERNS)))],
        bottom=str(rng.choice(["trousers", "shorts", "sidestripe"], p=[0.7, 0.18, 0.12])),
        sleeves="long" if rng.random() < 0.55 else "short",
        hair_style="long" if rng.random() < 0.35 else "short", hat=bool(rng.random() < 0.15),
        backpack=bool(rng.random() < 0.3), bag=None if bag < 0.7 else ("left" if bag < 0.85 else "right"),
        width=float(rng.uniform(0.85, 1.2)), legs=float(rng.uniform(0.43, 0.5)),
        head=float(rng.uniform(0.9, 1.1)), cadence=float(rng.uniform(1.6, 2.1)),
        period=int(rng.integers(3, 7)), logo=str(rng.choice(["circle", "square", "triangle", "bar"])))


def _pattern(kind: str, h: int, w: int, period: int, front: bool, logo: str) -> np.ndarray:
    """Slot index map (0 = top1, 1 = top2) of an upper-garment region of h x w texels."""
    r, c = np.mgrid[0:h, 0:w]
    if kind == "hstripes":
        return ((r // period) % 2).astype(np.uint8)
    if kind == "vstripes":
        return ((c // period) % 2).astype(np.uint8)
    if kind == "checks":
        return (((r // period) + (c // period)) % 2).astype(np.uint8)
    if kind == "twotone":
        return (r >= h // 2).astype(np.uint8)
    if kind == "jacket" and front:  # open jacket: shirt (top2) visible as a central band
        return (np.abs(c - (w - 1) / 2) < w * 0.17).astype(np.uint8)
    if kind == "logo" and front:
        cy, cx = h * 0.36, (w - 1) / 2
        if logo == "circle":
            m = (r - cy) ** 2 + (c - cx) ** 2 <= (w * 0.2) ** 2
        elif logo == "square":
            m = (np.abs(r - cy) <= w * 0.17) & (np.abs(c - cx) <= w * 0.17)
        elif logo == "triangle":
            m = (r >= cy - w * 0.2) & (r <= cy + w * 0.16) & (np.abs(c - cx) <= (r - cy + w * 0.2) * 0.6)
        else:
            m = (np.abs(r - cy) <= 2) & (np.abs(c - cx) <= w * 0.35)
        return m.astype(np.uint8)
    return np.zeros((h, w), np.uint8)


def slot_map(spec: PersonSpec) -> np.ndarray:
    """Texture map as slot indices (TEX, TEX) uint8 into :data:`SLOTS` (the material of every texel)."""
    s = {name: i for i, name in enumerate(SLOTS)}
    m = np.zeros((TEX, TEX), np.uint8)
    for region, front in (("top_front", True), ("top_back", False)):
        r0, c0, r1, c1 = REGIONS[region]
        m[r0:r1, c0:c1] = _pattern(spec.top_pattern, r1 - r0, c1 - c0, spec.period, front, spec.logo)
    for region in ("bottom_front", "bottom_back"):
        r0, c0, r1, c1 = REGIONS[region]
        m[r0:r1, c0:c1] = s["bot1"]
        if spec.bottom == "shorts":
            m[r0 + int(0.45 * (r1 - r0)):r1, c0:c1] = s["skin"]
        elif spec.bottom == "sidestripe":  # track pants: stripes down both sides of each leg
            m[r0:r1, c0:c0 + 2] = m[r0:r1, c1 - 2:c1] = s["bot2"]
            m[r0:r1, c0 + 14:c0 + 18] = s["bot2"]
    r0, c0, r1, c1 = REGIONS["arm"]
    sleeve = int((0.85 if spec.sleeves == "long" else 0.35) * (r1 - r0))
    m[r0:r0 + sleeve, c0:c1] = s["top1"]
    m[r0 + sleeve:r1, c0:c1] = s["skin"]
    for name in ("skin", "hair", "shoes", "bag", "hat", "pack"):
        r0, c0, r1, c1 = REGIONS[name]
        m[r0:r1, c0:c1] = s[name]
    return m


@dataclass(frozen=True)
class Appearance:
    """A person ready to render: spec, RGB texture map (TEX, TEX, 3) uint8 and NIR map (TEX, TEX) float32."""

    spec: PersonSpec
    texture: np.ndarray
    ir_texture: np.ndarray


def make_texture(seed: int, key: int, spec: PersonSpec) -> Tuple[np.ndarray, np.ndarray]:
    """Texture maps of ``spec``: RGB (TEX, TEX, 3) uint8 with slight fabric noise, NIR (TEX, TEX) float32."""
    slots = slot_map(spec)
    rng = rng_for(seed, "texture", key)
    rgb = np.asarray(spec.colours, np.float32)[slots] + rng.normal(0, 4, (TEX, TEX, 1)).astype(np.float32)
    ir = np.asarray(spec.ir, np.float32)[slots] + rng.normal(0, 0.02, (TEX, TEX)).astype(np.float32)
    return np.clip(rgb, 0, 255).round().astype(np.uint8), np.clip(ir, 0, 1).astype(np.float32)


@lru_cache(maxsize=2048)
def appearance(seed: int, key: int, palette_size: int = 8) -> Appearance:
    """Cached :class:`Appearance` of appearance key ``key`` (pid or distractor/junk key)."""
    spec = sample_spec(seed, key, palette_size)
    tex, ir = make_texture(seed, key, spec)
    tex.setflags(write=False)
    ir.setflags(write=False)
    return Appearance(spec, tex, ir)
