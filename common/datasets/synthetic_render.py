"""Person body rendering: a walking figure drawn from its texture map (see ``synthetic_person``).

Every body part is a tapered segment or an ellipse with surface coordinates ``u`` (across, 0 = image left)
and ``v`` (along / top to bottom); its colour is sampled from the part's texture region, so the rendered person
and the saved texture map always agree. Four channels are rendered at once: RGB in 0-1 and NIR reflectance.

Views: ``front`` (face, chest print, backpack straps), ``back`` (hair, backpack), ``left`` / ``right``
(profile facing that image side: swinging legs and arms, backpack behind, bag at the hip). The walking phase
(radians) sets leg and arm swing.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from common.datasets.synthetic_person import REGIONS, Appearance

Part = Tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray]  # rows, cols, mask, u, v (on the bbox)
BODY_WIDTH = 1.35  # global body width factor (times the per-identity width)


def _grid(hw, y0, y1, x0, x1):
    h, w = hw
    ya, yb = max(0, int(math.floor(y0))), min(h, int(math.ceil(y1)) + 1)
    xa, xb = max(0, int(math.floor(x0))), min(w, int(math.ceil(x1)) + 1)
    if ya >= yb or xa >= xb:
        return None
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32) + 0.5
    return slice(ya, yb), slice(xa, xb), yy, xx


def segment(hw, p0, p1, w0: float, w1: float) -> Optional[Part]:
    """Tapered band from ``p0`` to ``p1`` ((x, y) canvas px), width ``w0`` -> ``w1``; None if off-canvas."""
    (x0, y0), (x1, y1) = p0, p1
    pad = max(w0, w1) / 2 + 1
    g = _grid(hw, min(y0, y1) - pad, max(y0, y1) + pad, min(x0, x1) - pad, max(x0, x1) + pad)
    if g is None:
        return None
    sy, sx, yy, xx = g
    dx, dy = x1 - x0, y1 - y0
    length = max(math.hypot(dx, dy), 1e-6)
    t = ((xx - x0) * dx + (yy - y0) * dy) / length ** 2
    s = ((xx - x0) * dy - (yy - y0) * dx) / length
    w = w0 + (w1 - w0) * np.clip(t, 0, 1)
    mask = (t >= 0) & (t <= 1) & (np.abs(s) <= w / 2)
    return sy, sx, mask, np.clip(s / w + 0.5, 0, 1), np.clip(t, 0, 1)


def ellipse(hw, cx: float, cy: float, rx: float, ry: float) -> Optional[Part]:
    """Axis-aligned ellipse with u, v spanning its bounding box."""
    g = _grid(hw, cy - ry - 1, cy + ry + 1, cx - rx - 1, cx + rx + 1)
    if g is None:
        return None
    sy, sx, yy, xx = g
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    return sy, sx, mask, np.clip((xx - cx) / (2 * rx) + 0.5, 0, 1), np.clip((yy - cy) / (2 * ry) + 0.5, 0, 1)


def sample(tex: np.ndarray, region: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Nearest texel of ``region`` at (u, v) in [0, 1]; returns (..., C)."""
    r0, c0, r1, c1 = REGIONS[region]
    rows = r0 + np.minimum((v * (r1 - r0)).astype(np.int64), r1 - r0 - 1)
    cols = c0 + np.minimum((u * (c1 - c0)).astype(np.int64), c1 - c0 - 1)
    return tex[rows, cols]


class Painter:
    """Paints parts into a (H, W, C) float layer and its coverage mask, front-most last."""

    def __init__(self, hw, tex: np.ndarray):
        self.hw, self.tex = hw, tex
        self.layer = np.zeros(hw + (tex.shape[2],), np.float32)
        self.alpha = np.zeros(hw, np.float32)

    def paint(self, part: Optional[Part], region: str, u_map=None, shade: float = 1.0,
              where=None, cylinder: bool = True) -> None:
        """Fill ``part`` (optionally only where ``where(u, v)``) with ``region`` texels at ``u_map(u)``."""
        if part is None:
            return
        sy, sx, mask, u, v = part
        if where is not None:
            mask = mask & where(u, v)
        if not mask.any():
            return
        um, vm = u[mask], v[mask]
        val = sample(self.tex, region, u_map(um) if u_map else um, vm)
        k = shade * ((0.72 + 0.28 * np.sqrt(np.clip(1 - (2 * um - 1) ** 2, 0, 1))) if cylinder else 1.0)
        self.layer[sy, sx][mask] = val * (np.asarray(k, np.float32)[..., None] if cylinder else k)
        self.alpha[sy, sx][mask] = 1.0


def render_person(app: Appearance, view: str, phase: float, hw: Tuple[int, int], cx: float, feet: float,
                  height: float) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one walking person.

    Args:
        app: appearance (spec + texture maps).
        view: 'front' | 'back' | 'left' | 'right'.
        phase: walking phase in radians.
        hw: canvas (H, W) in pixels.
        cx, feet, height: horizontal centre, feet row and body height in canvas pixels.
    Returns:
        layer (H, W, 4) float32 (RGB 0-1, NIR 0-1) and coverage (H, W) float32 in {0, 1}.
    """
    sp = app.spec
    tex = np.concatenate([app.texture.astype(np.float32) / 255.0, app.ir_texture[..., None]], axis=2)
    p = Painter(hw, tex)
    ph, bw = height, sp.width * BODY_WIDTH

    def Y(f):
        return feet - ph * (1 - f)

    hip = Y(1 - sp.legs - 0.035)
    ankle, swing = Y(0.965), math.sin(phase)
    head_ry, head_cy = 0.066 * ph * sp.head, Y(0.074)
    if view in ("front", "back"):
        front = view == "front"
        mirror = None if front else (lambda u: 1 - u)
        sw, hw_ = 0.3 * bw * ph, 0.24 * bw * ph
        rx = 0.055 * ph * sp.head
        if sp.hair_style == "long" and front:
            p.paint(segment(hw, (cx, Y(0.05)), (cx, Y(0.2)), 2.3 * rx, 2.0 * rx), "hair", cylinder=False)
        for side, lift in ((-1, max(0.0, swing)), (1, max(0.0, -swing))):
            hx = cx + side * 0.06 * bw * ph
            end = (hx + side * 0.012 * ph, ankle - 0.05 * ph * lift)
            half = (lambda u: 0.5 * u) if (side < 0) == front else (lambda u: 0.5 + 0.5 * u)
            leg_map = half if front else (lambda u, h=half: h(1 - u))
            p.paint(segment(hw, (hx, hip), end, 0.12 * bw * ph, 0.075 * bw * ph),
                    "bottom_front" if front else "bottom_back", leg_map)
            p.paint(ellipse(hw, end[0], end[1] + 0.015 * ph, 0.04 * ph, 0.022 * ph), "shoes")
        p.paint(segment(hw, (cx, Y(0.105)), (cx, Y(0.15)), 0.045 * ph, 0.05 * ph), "skin")
        p.paint(segment(hw, (cx, Y(0.14)), (cx, hip + 0.03 * ph), sw, hw_), "top_front" if front else "top_back",
                mirror)
        if sp.backpack and front:
            for s in (-1, 1):
                p.paint(segment(hw, (cx + s * sw * 0.28, Y(0.142)), (cx + s * sw * 0.26, Y(0.3)),
                                0.025 * ph, 0.025 * ph), "pack", shade=0.85)
        bag_side = None if sp.bag is None else ((1 if sp.bag == "left" else -1) * (1 if front else -1))
        if bag_side is not None:
            p.paint(segment(hw, (cx - bag_side * sw * 0.35, Y(0.15)), (cx + bag_side * (hw_ / 2 + 0.04 * ph),
                                                                       Y(0.45)), 0.018 * ph, 0.018 * ph), "bag")
        for side in (-1, 1):
            sx0 = cx + side * (sw / 2 - 0.025 * ph)
            p.paint(segment(hw, (sx0, Y(0.155)), (sx0 + side * 0.03 * ph, Y(0.155) + 0.36 * ph * (1 - 0.05 * abs(
                swing))), 0.06 * ph, 0.045 * ph), "arm")
        if sp.backpack and not front:
            p.paint(segment(hw, (cx, Y(0.17)), (cx, Y(0.42)), 0.62 * sw, 0.6 * sw), "pack")
        if bag_side is not None:
            bx = cx + bag_side * (hw_ / 2 + 0.045 * ph)
            p.paint(segment(hw, (bx, Y(0.45)), (bx, Y(0.58)), 0.09 * ph, 0.09 * ph), "bag")
        head = ellipse(hw, cx, head_cy, rx, head_ry)
        p.paint(head, "skin")
        p.paint(head, "hair", where=(lambda u, v: v < 0.36) if front else (lambda u, v: v < 0.9))
        if sp.hair_style == "long" and not front:
            p.paint(segment(hw, (cx, Y(0.06)), (cx, Y(0.24)), 2.2 * rx, 2.0 * rx), "hair")
        if sp.hat:
            p.paint(head, "hat", where=lambda u, v: v < 0.3)
            p.paint(segment(hw, (cx, Y(0.045)), (cx, Y(0.055)), 2.3 * rx, 2.3 * rx), "hat", cylinder=False)
        return p.layer, p.alpha

    f = 1 if view == "right" else -1
    tw = 0.19 * bw * ph
    theta = 0.42 * swing
    leg_len = ankle - hip
    # far side first (darker), then near side
    for sgn, shade, region in ((-1, 0.8, "bottom_back"), (1, 1.0, "bottom_front")):
        a = sgn * theta
        end = (cx + f * math.sin(a) * leg_len, hip + math.cos(a) * leg_len)
        p.paint(segment(hw, (cx, hip), end, 0.12 * bw * ph, 0.075 * bw * ph), region, lambda u: 0.5 * u, shade)
        p.paint(ellipse(hw, end[0] + f * 0.02 * ph, end[1] + 0.012 * ph, 0.05 * ph, 0.022 * ph), "shoes",
                shade=shade)
    shoulder = (cx, Y(0.16))

    def arm(a, shade):
        end = (cx + f * math.sin(a) * 0.36 * ph, shoulder[1] + math.cos(a) * 0.36 * ph)
        p.paint(segment(hw, shoulder, end, 0.06 * ph, 0.045 * ph), "arm", shade=shade)

    near_bag = sp.bag is not None and ((sp.bag == "right") == (f == 1))
    if sp.bag is not None and not near_bag:
        p.paint(segment(hw, (cx - f * 0.05 * ph, Y(0.45)), (cx - f * 0.05 * ph, Y(0.57)), 0.1 * ph, 0.1 * ph),
                "bag", shade=0.8)
    arm(0.8 * theta, 0.8)
    p.paint(segment(hw, (cx, Y(0.105)), (cx, Y(0.15)), 0.045 * ph, 0.05 * ph), "skin")
    torso = segment(hw, (cx, Y(0.14)), (cx, hip + 0.03 * ph), tw, 0.94 * tw)
    if f == 1:
        p.paint(torso, "top_front", lambda u: u - 0.5, where=lambda u, v: u >= 0.5)
        p.paint(torso, "top_back", lambda u: 0.5 - u, where=lambda u, v: u < 0.5)
    else:
        p.paint(torso, "top_front", lambda u: 0.5 + u, where=lambda u, v: u < 0.5)
        p.paint(torso, "top_back", lambda u: 1.5 - u, where=lambda u, v: u >= 0.5)
    if sp.backpack:
        bx = cx - f * (tw / 2 + 0.04 * ph)
        p.paint(segment(hw, (bx, Y(0.17)), (bx, Y(0.42)), 0.1 * ph, 0.09 * ph), "pack")
    if near_bag:
        p.paint(segment(hw, (cx + f * 0.03 * ph, Y(0.15)), (cx, Y(0.45)), 0.018 * ph, 0.018 * ph), "bag")
        p.paint(segment(hw, (cx - f * 0.01 * ph, Y(0.45)), (cx - f * 0.01 * ph, Y(0.57)), 0.1 * ph, 0.1 * ph), "bag")
    arm(-0.8 * theta, 1.0)
    rx = 0.06 * ph * sp.head
    head = ellipse(hw, cx + f * 0.01 * ph, head_cy, rx, head_ry)
    p.paint(head, "skin")
    p.paint(head, "hair", where=lambda u, v: (v < 0.36) | ((f * (u - 0.5) < -0.05) & (v < 0.75)))
    if sp.hair_style == "long":
        p.paint(segment(hw, (cx - f * 0.03 * ph, Y(0.05)), (cx - f * 0.05 * ph, Y(0.22)), 0.06 * ph,
                        0.05 * ph), "hair")
    if sp.hat:
        p.paint(head, "hat", where=lambda u, v: v < 0.3)
        p.paint(segment(hw, (cx, Y(0.05)), (cx + f * 0.08 * ph, Y(0.052)), 0.015 * ph, 0.015 * ph), "hat",
                cylinder=False)
    return p.layer, p.alpha
