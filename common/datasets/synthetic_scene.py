"""Camera scenes and image formation of the synthetic re-ID dataset.

Each camera owns a textured background strip (wall / facade with windows, posters and doors over a paved
ground, plus clutter: poles, trees, bins, benches, parked cars) in RGB and NIR. An image is composed at 2x
resolution (``CANVAS`` = 256 x 128): background crop -> person (or a junk crop) -> optional occluder; then
down-sampled to 128 x 64 and passed through the camera: white-balance cast, exposure, saturation and gamma
(RGB) or active IR illumination (NIR, written as 3-channel grey), low resolution, blur and sensor noise.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from common.datasets.synthetic_person import CLOTH_PALETTE, appearance
from common.datasets.synthetic_render import render_person
from common.datasets.synthetic_plan import ImageJob
from common.datasets.synthetic_world import Camera, SynthConfig, build_network, rng_for

OUT_HW = (128, 64)
CANVAS = (256, 128)
SCENE_W = 768
BG_SATURATION = 0.35
# background materials: sRGB and NIR reflectance (vegetation is bright in NIR, glass and asphalt dark)
MATERIALS = {"concrete": ((168, 166, 160), 0.5), "asphalt": ((72, 72, 78), 0.22), "brick": ((150, 78, 58), 0.55),
             "sandstone": ((198, 178, 138), 0.6), "glass": ((62, 82, 104), 0.12), "grass": ((72, 122, 60), 0.9),
             "foliage": ((42, 92, 44), 0.88), "metal": ((96, 98, 104), 0.3), "wood": ((120, 84, 52), 0.5),
             "tiles": ((140, 132, 126), 0.45), "dark": ((30, 30, 34), 0.2)}


def _mat(rng, name=None):
    """(RGB 0-1 array, NIR) of a named material, or of a random material / palette paint if name is None."""
    if name is None:
        if rng.random() < 0.45:
            _, rgb, ir = CLOTH_PALETTE[int(rng.integers(len(CLOTH_PALETTE)))]
            return np.array(rgb, np.float32) / 255, float(ir)
        name = list(MATERIALS)[int(rng.integers(len(MATERIALS)))]
    rgb, ir = MATERIALS[name]
    return np.array(rgb, np.float32) / 255, float(ir)


def _fill(img, y0, y1, x0, x1, mat, shade=1.0):
    h, w = img.shape[:2]
    y0, y1, x0, x1 = max(0, int(y0)), min(h, int(y1)), max(0, int(x0)), min(w, int(x1))
    if y0 < y1 and x0 < x1:
        img[y0:y1, x0:x1, :3] = mat[0] * shade
        img[y0:y1, x0:x1, 3] = mat[1] * shade


@lru_cache(maxsize=16)
def scene(seed: int, cam: int, scene_seed: int) -> np.ndarray:
    """Background strip of camera ``cam``: (CANVAS[0], SCENE_W, 4) float32, RGB 0-1 and NIR 0-1."""
    rng = rng_for(seed, "scene", cam, scene_seed % 1000)
    h, w = CANVAS[0], SCENE_W
    img = np.zeros((h, w, 4), np.float32)
    horizon = int(h * rng.uniform(0.5, 0.72))
    wall = _mat(rng, str(rng.choice(["concrete", "brick", "sandstone", "glass", "tiles"])))
    _fill(img, 0, horizon, 0, w, wall)
    if rng.random() < 0.6:  # brick / panel courses
        step = int(rng.integers(6, 14))
        img[0:horizon:step, :, :] *= 0.8
    wx, ww, wh = int(rng.integers(40, 90)), int(rng.integers(18, 36)), int(rng.integers(24, 50))
    for x in range(int(rng.integers(0, wx)), w, wx):  # windows, doors, posters along the facade
        r = rng.random()
        if r < 0.5:
            for y in range(int(rng.integers(4, 20)), horizon - wh - 30, wh + int(rng.integers(12, 30))):
                _fill(img, y, y + wh, x, x + ww, _mat(rng, "glass"), rng.uniform(0.7, 1.2))
        elif r < 0.7:
            _fill(img, horizon - int(h * 0.35), horizon, x, x + ww + 8, _mat(rng, "dark"))
        else:
            y = int(rng.integers(10, max(11, horizon - 60)))
            _fill(img, y, y + int(rng.integers(20, 50)), x, x + int(rng.integers(20, 50)), _mat(rng))
    ground = _mat(rng, str(rng.choice(["asphalt", "concrete", "tiles", "grass", "sandstone"])))
    _fill(img, horizon, h, 0, w, ground)
    y, gap = horizon + 3, 4.0
    while y < h:  # paving courses, wider apart towards the camera
        img[int(y), :, :] *= 0.85
        y, gap = y + gap, gap * 1.35
    for _ in range(int(rng.integers(6, 14))):  # clutter
        kind, x = int(rng.integers(5)), int(rng.integers(-20, w))
        if kind == 0:  # pole
            _fill(img, int(rng.integers(0, horizon // 2)), horizon + int(rng.integers(5, 40)), x,
                  x + int(rng.integers(3, 8)), _mat(rng, "metal"))
        elif kind == 1:  # tree: trunk and crown
            _fill(img, horizon - 60, horizon + 10, x + 16, x + 24, _mat(rng, "wood"))
            cy, r = horizon - int(rng.integers(70, 110)), int(rng.integers(22, 40))
            yy, xx = np.mgrid[0:h, 0:w]
            m = ((yy - cy) ** 2 + (xx - x - 20) ** 2 < r * r) & (rng.random((h, w)) < 0.9)
            col, ir = _mat(rng, "foliage")
            img[m, :3], img[m, 3] = col * rng.uniform(0.7, 1.2), ir
        elif kind == 2:  # bin / bollard
            _fill(img, horizon - int(rng.integers(10, 30)), horizon + int(rng.integers(10, 50)), x,
                  x + int(rng.integers(10, 24)), _mat(rng))
        elif kind == 3:  # bench
            y0 = horizon + int(rng.integers(0, 40))
            _fill(img, y0 - 14, y0 - 8, x, x + 60, _mat(rng, "wood"))
            _fill(img, y0 - 8, y0, x + 4, x + 8, _mat(rng, "metal"))
            _fill(img, y0 - 8, y0, x + 52, x + 56, _mat(rng, "metal"))
        else:  # parked car: painted body, dark windows, wheels
            y0, cw, paint = horizon + int(rng.integers(-10, 20)), int(rng.integers(90, 140)), _mat(rng)
            _fill(img, y0 - 50, y0 - 8, x, x + cw, paint)
            _fill(img, y0 - 70, y0 - 50, x + 20, x + cw - 25, _mat(rng, "glass"))
            _fill(img, y0 - 12, y0 + 4, x + 12, x + 32, _mat(rng, "dark"))
            _fill(img, y0 - 12, y0 + 4, x + cw - 32, x + cw - 12, _mat(rng, "dark"))
    light = np.linspace(rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1), w, dtype=np.float32)
    img *= light[None, :, None]
    img += rng.normal(0, 0.025, (h, w, 1)).astype(np.float32)
    grey = img[..., :3].mean(axis=2, keepdims=True)
    img[..., :3] = grey + BG_SATURATION * (img[..., :3] - grey)  # real backgrounds are mostly muted
    return np.clip(img, 0, 1)


def _occlude(canvas, vr: np.random.Generator) -> None:
    """Paint a per-visit occluder: something low in front (bench, car, bush, bin) or a pole / passer-by."""
    h, w = canvas.shape[:2]
    mat = _mat(vr)
    if vr.random() < 0.6:
        top = int(h * vr.uniform(0.55, 0.8))
        x0 = int(w * vr.uniform(-0.3, 0.3))
        _fill(canvas, top, h, x0, x0 + int(w * vr.uniform(0.7, 1.3)), mat, vr.uniform(0.7, 1.1))
    else:
        bw = int(w * vr.uniform(0.15, 0.4))
        x0 = 0 if vr.random() < 0.5 else w - bw
        _fill(canvas, int(h * vr.uniform(0, 0.2)), h, x0, x0 + bw, mat, vr.uniform(0.6, 1.0))


def _camera_rgb(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Camera response on (H, W, 3) sRGB 0-1: cast, exposure, saturation, gamma -> uint8."""
    lin = np.power(np.clip(img, 0, 1), 2.2) * (np.asarray(cam.wb, np.float32) * cam.exposure
                                                * (1 + rng.normal(0, 0.06)))
    grey = lin.mean(axis=2, keepdims=True)
    lin = grey + cam.saturation * (lin - grey)
    return (np.power(np.clip(lin, 0, 1), cam.gamma / 2.2) * 255).round().astype(np.uint8)


def _camera_ir(ir: np.ndarray, cam: Camera, rng: np.random.Generator, cx: float) -> np.ndarray:
    """Active-IR response on (H, W) NIR reflectance: spotlight falloff, gain, gamma -> (H, W, 3) grey uint8."""
    h, w = ir.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    spot = 0.55 + 0.65 * np.exp(-(((yy - h * 0.5) / (h * 0.7)) ** 2 + ((xx - cx) / (w * 1.2)) ** 2))
    val = np.clip(ir * spot * cam.exposure * (1 + rng.normal(0, 0.08)), 0, 1) ** (cam.gamma * 0.9)
    g = (val * 255).round().astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def render_image(cfg: SynthConfig, job: ImageJob, modality: str = "rgb") -> Image.Image:
    """Render one crop (PIL RGB, 64 x 128). ``modality``: 'rgb' or 'ir' (3-channel grey, R == G == B).

    Per-tracklet choices (background position, walking drift, occluder, distance) come from the ``visit``
    stream; per-image ones (detection jitter, pose, noise) from the ``image`` stream, so a job renders the
    same whatever else is generated. The RGB and IR renderings of a job share geometry.
    """
    cam = build_network(cfg.seed, cfg.num_cams).cameras[job.cam]
    vr = rng_for(cfg.seed, "visit", job.person, job.cam, job.visit_frame)
    rng = rng_for(cfg.seed, "image", job.person, job.cam, job.frame, job.det)
    h, w = CANVAS
    bg = scene(cfg.seed, job.cam, cam.scene_seed)
    drift = {"left": -1, "right": 1}.get(job.view, 0) * vr.uniform(8, 16)
    x_off = int(np.clip(vr.integers(0, SCENE_W - w) + drift * job.step, 0, SCENE_W - w))
    canvas = bg[:, x_off:x_off + w].copy()
    height = h * cam.scale * (1 + vr.normal(0, 0.05)) * (1 + rng.normal(0, 0.03))
    cx = w / 2 + rng.normal(0, 0.05) * w
    feet = h / 2 + height / 2 + rng.normal(0, 0.03) * h
    if job.kind == "junk_part":  # a body part blown up, or a person mostly out of frame
        if rng.random() < 0.5:
            height *= rng.uniform(1.8, 2.8)
            feet = h / 2 + height * rng.uniform(-0.3, 0.5)
        else:
            cx = w * (rng.choice([-0.3, 1.3]) + rng.normal(0, 0.1))
    elif job.kind == "distractor" and rng.random() < 0.4:  # sloppy detection
        height *= rng.uniform(0.6, 1.2)
        cx, feet = cx + rng.normal(0, 0.15) * w, feet + rng.normal(0, 0.1) * h
    if job.kind != "junk_bg":
        app = appearance(cfg.seed, job.person, cfg.palette_size)
        phase = math.pi * app.spec.cadence * job.frame / cfg.fps + vr.uniform(0, 2 * math.pi)
        layer, alpha = render_person(app, job.view, phase, CANVAS, cx, feet, height)
        canvas = canvas * (1 - alpha[..., None]) + layer * alpha[..., None]
    if job.kind == "person" and vr.random() < cam.occlusion:
        _occlude(canvas, vr)
    small = canvas.reshape(h // 2, 2, w // 2, 2, 4).mean(axis=(1, 3))
    if modality == "ir":
        arr = _camera_ir(small[..., 3], cam, rng, cx / 2)
    else:
        arr = _camera_rgb(small[..., :3], cam, rng)
    img = Image.fromarray(arr)
    if cam.lowres > 1:
        size = (max(8, int(OUT_HW[1] / cam.lowres)), max(16, int(OUT_HW[0] / cam.lowres)))
        img = img.resize(size, Image.BILINEAR).resize((OUT_HW[1], OUT_HW[0]), Image.BILINEAR)
    radius = cam.blur + rng.uniform(0, 0.3)
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    noise = rng.normal(0, cam.noise, (OUT_HW[0], OUT_HW[1], 1 if modality == "ir" else 3))
    arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255).round().astype(np.uint8)
    if modality == "ir":
        arr = np.repeat(arr[..., :1], 3, axis=2)
    return Image.fromarray(arr)
