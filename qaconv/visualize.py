"""Local-correspondence pictures of QAConv (the ECCV'20 paper's Fig. 2; the original's ``matching/`` folder).

For one (probe, gallery) pair, QAConv's local matching gives, for every probe feature-map location, its
contribution to the pair score and the flattened index of its best gallery location (and the same from the
gallery side). The picture puts both images side by side at the network input size (upscaled for legibility)
and joins the centres of matched cells for the strongest matches above a threshold: probe -> gallery lines in
red (the original's colour), gallery -> probe lines in blue.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from common.checkpoint import atomic_write_bytes
from common.data.dataset import read_image

# matching/demo.m multiplies the location scores by 200 ("to make them visually more recognizable") and then
# keeps those above 0.5.
DEMO_SCORE_SCALE = 200.0
PROB_COLOR = (255, 0, 0)
GAL_COLOR = (0, 96, 255)
ImageLike = Union[str, Image.Image]


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def select_matches(score, index, top: int = 5, threshold: float = 0.5, score_scale: float = 1.0
                   ) -> List[Tuple[int, int, float]]:
    """The strongest local matches of one direction.

    Args:
        score: (h, w) per-location contribution of the source image's locations.
        index: (h, w) flattened (row-major) index of the matched location in the other image.
        top: at most this many matches (strongest first); ``None`` or < 0 keeps all.
        threshold: keep locations whose ``score * score_scale`` is strictly above it.
        score_scale: multiplier of the scores before thresholding (the original demo used 200).
    Returns:
        list of (source flat index, target flat index, scaled score), descending score (ties: lower index first).
    """
    score = _to_numpy(score).astype(np.float64).reshape(-1) * float(score_scale)
    index = _to_numpy(index).astype(np.int64).reshape(-1)
    if score.shape != index.shape:
        raise ValueError(f"score and index sizes differ: {score.shape} vs {index.shape}")
    keep = np.flatnonzero(score > threshold)
    keep = keep[np.argsort(-score[keep], kind="stable")]
    if top is not None and top >= 0:
        keep = keep[:top]
    return [(int(s), int(index[s]), float(score[s])) for s in keep]


def cell_centre(flat: int, grid: Tuple[int, int], image_size: Tuple[int, int], x_offset: float = 0.0
                ) -> Tuple[float, float]:
    """Pixel (x, y) of the centre of a feature-map cell.

    Args:
        flat: row-major cell index in a grid of ``grid = (h, w)`` cells.
        grid: feature-map (h, w).
        image_size: (height, width) of the drawn image in pixels.
        x_offset: added to x (the gallery image is drawn right of the probe).
    Returns:
        (x, y) in pixels.
    """
    gh, gw = grid
    row, col = divmod(int(flat), gw)
    return x_offset + (col + 0.5) * image_size[1] / gw, (row + 0.5) * image_size[0] / gh


def _load(img: ImageLike) -> Image.Image:
    return read_image(img) if isinstance(img, (str, os.PathLike)) else img.convert("RGB")


def draw_correspondences(prob_img: ImageLike, gal_img: ImageLike, matches: Dict[str, object], out_path: str,
                         top: int = 5, threshold: float = 0.5, size: Tuple[int, int] = (384, 128),
                         upscale: int = 2, score_scale: float = DEMO_SCORE_SCALE, line_width: int = 2) -> str:
    """Draw one pair's local correspondences and write a PNG atomically.

    The PNG is ``2 * w * upscale`` pixels wide and ``h * upscale`` high (probe left, gallery right, both resized
    bicubically to the network input ``size = (h, w)``, then enlarged ``upscale`` times with nearest-neighbour
    pixels). Cell (r, c) of an (fh, fw) map is centred at ``((c + 0.5) * W / fw, (r + 0.5) * H / fh)`` of its
    image (W, H = drawn image width and height). A probe location s with
    ``prob_score[s] * score_scale > threshold`` (the ``top`` strongest) is joined to gallery cell
    ``prob_index[s]`` in :data:`PROB_COLOR` (``line_width + 2`` wide); gallery locations likewise in
    :data:`GAL_COLOR` (``line_width`` wide, drawn second, so mutual matches show as blue lines with red edges).
    Both ends of a line get a dot.

    Args:
        prob_img: probe image (PIL image or path).
        gal_img: gallery image (PIL image or path).
        matches: one pair's ``prob_score`` (fh, fw), ``prob_index`` (fh, fw), ``gal_score`` (fh, fw),
            ``gal_index`` (fh, fw) (tensors or arrays); ``score`` is not drawn.
        out_path: PNG file to write (its folder is created).
        top: at most this many lines per direction.
        threshold: minimum (scaled) location score for a line.
        size: (height, width) of the network input.
        upscale: integer magnification of the picture.
        score_scale: multiplier applied to the location scores before the threshold (default 200, the original
            demo's; pass 1 for scores that are already on the threshold's scale).
        line_width: width of the gallery -> probe lines in pixels (probe -> gallery: 2 more).
    Returns:
        ``out_path``.
    """
    h, w = int(size[0]) * int(upscale), int(size[1]) * int(upscale)
    canvas = Image.new("RGB", (2 * w, h))
    for k, img in enumerate((prob_img, gal_img)):
        net = _load(img).resize((int(size[1]), int(size[0])), Image.Resampling.BICUBIC)
        canvas.paste(net.resize((w, h), Image.Resampling.NEAREST), (k * w, 0))
    draw = ImageDraw.Draw(canvas)
    # probe -> gallery first and 2 px wider: a mutual match (both directions on the same cells) shows as a blue
    # line with red edges instead of hiding one direction
    for side, color, width in (("prob", PROB_COLOR, line_width + 2), ("gal", GAL_COLOR, line_width)):
        score = _to_numpy(matches[f"{side}_score"])
        if score.ndim != 2:
            raise ValueError(f"matches['{side}_score'] must be one pair's (h, w) map, got shape {score.shape}")
        grid = score.shape
        src_off, dst_off = (0.0, float(w)) if side == "prob" else (float(w), 0.0)
        for s, t, _ in select_matches(score, matches[f"{side}_index"], top, threshold, score_scale):
            p0 = cell_centre(s, grid, (h, w), src_off)
            p1 = cell_centre(t, grid, (h, w), dst_off)
            draw.line([p0, p1], fill=color, width=width)
            for x, y in (p0, p1):
                r = width / 2 + 1.5
                draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    atomic_write_bytes(out_path, lambda f: canvas.save(f, format="PNG"))
    return out_path


def _path_of(item) -> str:
    return str(item[0]) if isinstance(item, (tuple, list)) else str(item)


def _pair_slice(out: Dict[str, object], p: int = 0, g: int = 0) -> Dict[str, object]:
    """One pair of a ``local_matches`` result: maps (P, G, h, w) -> (h, w), score (P, G) -> scalar."""
    pair = {}
    for key, value in out.items():
        value = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        if key == "score":
            pair[key] = float(value.reshape(-1)[0]) if value.numel() == 1 else float(value[p, g])
        else:
            pair[key] = value[p, g] if value.dim() == 4 else value
    return pair


def visualize_pairs(model: torch.nn.Module, matcher: torch.nn.Module, records_pairs: Sequence[Tuple[object, object]],
                    height: int, width: int, out_dir: str, device: Union[str, torch.device] = "cpu", top: int = 5,
                    threshold: float = 0.5, score_scale: float = DEMO_SCORE_SCALE, upscale: int = 2) -> List[str]:
    """Extract both feature maps of every pair, match them locally and draw the correspondences.

    Input transform as the original test pipeline: ``Resize((height, width), bicubic)`` + ``ToTensor()`` (no
    Normalize). ``model`` maps (B, 3, H, W) to unit-norm feature maps (B, C, fh, fw);
    ``matcher.local_matches(prob_fea, gal_fea)`` returns the dict described in :func:`draw_correspondences`
    (with leading (P, G) dimensions or for a single pair). Both modules run in ``eval()`` and get their modes
    back afterwards.

    Args:
        model: backbone.
        matcher: QAConv matcher with ``local_matches``.
        records_pairs: (probe, gallery) pairs of records / ``(path, ...)`` tuples / paths.
        height: network input height.
        width: network input width.
        out_dir: output folder; files ``{n:04d}_{s:.4f}_{probe stem}-{gallery stem}.png`` with the original's
            displayed pair score ``s = sigmoid(score / 10)`` of the raw logit ``score``.
        device: device of the computation.
        top: at most this many lines per direction.
        threshold: minimum (scaled) location score for a line.
        score_scale: multiplier of the location scores before the threshold.
        upscale: magnification of the pictures.
    Returns:
        list of written PNG paths, one per pair.
    """
    from torchvision import transforms as T

    transform = T.Compose([T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()])
    modes = (model.training, matcher.training)
    model.eval()
    matcher.eval()
    written = []
    try:
        with torch.no_grad():
            for n, (prob, gal) in enumerate(records_pairs):
                images = [read_image(_path_of(prob)), read_image(_path_of(gal))]
                batch = torch.stack([transform(im) for im in images]).to(device)
                fea = model(batch)
                pair = _pair_slice(matcher.local_matches(fea[:1], fea[1:2]))
                stems = [os.path.splitext(os.path.basename(_path_of(r)))[0] for r in (prob, gal)]
                shown = 1.0 / (1.0 + math.exp(-pair["score"] / 10.0)) if "score" in pair else float("nan")
                name = f"{n:04d}_{shown:.4f}_{stems[0]}-{stems[1]}.png"
                written.append(draw_correspondences(images[0], images[1], pair, os.path.join(out_dir, name), top,
                                                    threshold, (height, width), upscale, score_scale))
    finally:
        model.train(modes[0])
        matcher.train(modes[1])
    return written
