"""Ranked-list pictures: the query followed by its top-k gallery matches, green border = same identity, red =
different identity, and under each tile a caption: its rank (``query`` for the query, ``#3`` for the third match)
on one line, its person id and camera (``id 12 c4``, the camera numbered from 1 as in the file names) on the next.
Gallery images of the query's own identity seen by the query's own camera are skipped, as the Market-1501 protocol
(and torchreid's visualiser) does."""
from __future__ import annotations

import os
import shutil
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.data.dataset import read_image

GREEN = (0, 255, 0)
RED = (255, 0, 0)
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)


def ranked_gallery(dist_row: np.ndarray, q_pid: int, q_camid: int, g_pids: np.ndarray, g_camids: np.ndarray,
                   topk: int) -> np.ndarray:
    """Gallery indices by ascending distance, same-pid-same-camera entries removed, at most ``topk``.

    Args:
        dist_row: (num_gallery,) distances of one query.
        q_pid: query person id.
        q_camid: query camera id.
        g_pids: (num_gallery,) gallery person ids.
        g_camids: (num_gallery,) gallery camera ids.
        topk: list length.
    Returns:
        (<= topk,) int64 gallery indices.
    """
    order = np.argsort(dist_row, kind="stable")
    keep = ~((g_pids[order] == q_pid) & (g_camids[order] == q_camid))
    return order[keep][:topk].astype(np.int64)


def caption_lines(rank: int, pid: int, camid: int) -> Tuple[str, str]:
    """The two caption lines of a tile.

    Args:
        rank: 0 for the query, else the 1-based rank of the gallery image.
        pid: person id as stored in the record.
        camid: 0-based camera id (printed 1-based, as ``c4`` in ``0002_c4s1_...jpg``).
    Returns:
        ``('query' or '#<rank>', 'id <pid> c<camid + 1>')``.
    """
    return ("query" if rank == 0 else f"#{rank}"), f"id {int(pid)} c{int(camid) + 1}"


def _tile(path: str, width: int, height: int, border: int, color, caption: int, lines: Sequence[str],
          font) -> Image.Image:
    """(height + 2 border + caption) x (width + 2 border) tile: the framed image over a white caption band."""
    tile_w, framed_h = width + 2 * border, height + 2 * border
    tile = Image.new("RGB", (tile_w, framed_h + caption), WHITE)
    tile.paste(Image.new("RGB", (tile_w, framed_h), color), (0, 0))
    tile.paste(read_image(path).resize((width, height), Image.Resampling.BILINEAR), (border, border))
    if caption > 0:
        draw = ImageDraw.Draw(tile)
        y = framed_h + 1
        for line in lines:
            x = max(0, (tile_w - int(round(draw.textlength(line, font=font)))) // 2)
            draw.text((x, y), line, fill=BLACK, font=font)
            y += _line_height(font)
    return tile


def _line_height(font) -> int:
    """Pixels per caption line: the extent of ascenders to descenders drawn at y = 0, plus 1."""
    _, _, _, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "#Ag0|", font=font)
    return int(bottom) + 1


def _names(records: Sequence, chosen: Sequence[int]) -> dict:
    """Output name of each chosen query: its file stem, made unique with ``_q<index>`` when stems repeat."""
    names = [os.path.splitext(os.path.basename(records[i][0]))[0] for i in chosen]
    unique = len(set(names)) == len(names)
    return {i: (n if unique else f"{n}_q{i}") for i, n in zip(chosen, names)}


def visualize_ranked_results(distmat: np.ndarray, query_records: Sequence, gallery_records: Sequence,
                             out_dir: str, topk: int = 10, query_indices: Optional[Sequence[int]] = None,
                             width: int = 64, height: int = 128, write_folders: bool = False, border: int = 4,
                             gap: int = 8, caption: Optional[int] = None) -> List[str]:
    """Write one PNG grid per query (and optionally torchreid-style folders of copied images).

    Grid layout: one row of ``1 + n`` tiles (n <= topk ranked gallery images), each tile the image resized to
    (height, width) inside a ``border``-pixel frame (black for the query, green for a true match, red
    otherwise) above a white ``caption``-pixel band with two centred black lines of PIL's default font (see
    :func:`caption_lines`: ``query`` / ``#3``, then ``id 12 c4``); tiles separated by ``gap`` white pixels. The PNG
    is therefore ``(1 + n) * (width + 2 * border) + n * gap`` pixels wide and
    ``height + 2 * border + caption`` high.
    Names: ``out_dir/<query file stem>.png``. With ``write_folders``, ``out_dir/<query file stem>/`` receives
    ``query_top000_name_<query file name>`` and ``gallery_top{rank:03d}_name_<gallery file name>`` copies
    (rank from 1). When chosen queries share a file name (e.g. SYSU-MM01's per-identity ``0001.jpg``), every
    name gets a ``_q<query index>`` suffix.

    Args:
        distmat: (num_query, num_gallery) distances (smaller = more similar).
        query_records: query records ``(img_path, pid, camid, ...)``.
        gallery_records: gallery records.
        out_dir: output folder (created).
        topk: gallery images per query.
        query_indices: queries to draw (default: all).
        width: tile image width.
        height: tile image height.
        write_folders: also write the per-query folders of copies.
        border: frame width in pixels.
        gap: white space between tiles in pixels.
        caption: height of the caption band in pixels; None = two lines of the font (28 with Pillow's default
            FreeType font), 0 = no caption.
    Returns:
        list of written PNG grid paths, in query order.
    """
    distmat = np.asarray(distmat)
    if distmat.shape != (len(query_records), len(gallery_records)):
        raise ValueError(f"distmat shape {distmat.shape} does not match {len(query_records)} queries x "
                         f"{len(gallery_records)} gallery images")
    g_pids = np.asarray([r[1] for r in gallery_records], dtype=np.int64)
    g_camids = np.asarray([r[2] for r in gallery_records], dtype=np.int64)
    chosen = list(range(len(query_records))) if query_indices is None else [int(i) for i in query_indices]
    names = _names(query_records, chosen)
    os.makedirs(out_dir, exist_ok=True)
    font = ImageFont.load_default()
    if caption is None:
        caption = 2 * _line_height(font) + 2
    caption = max(0, int(caption))
    tile_w, tile_h = width + 2 * border, height + 2 * border + caption
    written = []
    for q in chosen:
        q_path, q_pid, q_cam = query_records[q][0], int(query_records[q][1]), int(query_records[q][2])
        ranked = ranked_gallery(distmat[q], q_pid, q_cam, g_pids, g_camids, topk)
        n = 1 + len(ranked)
        canvas = Image.new("RGB", (n * tile_w + (n - 1) * gap, tile_h), WHITE)
        canvas.paste(_tile(q_path, width, height, border, BLACK, caption, caption_lines(0, q_pid, q_cam), font),
                     (0, 0))
        for rank, g in enumerate(ranked, start=1):
            color = GREEN if g_pids[g] == q_pid else RED
            lines = caption_lines(rank, g_pids[g], g_camids[g])
            canvas.paste(_tile(gallery_records[g][0], width, height, border, color, caption, lines, font),
                         (rank * (tile_w + gap), 0))
        path = os.path.join(out_dir, names[q] + ".png")
        canvas.save(path)
        written.append(path)
        if write_folders:
            qdir = os.path.join(out_dir, names[q])
            os.makedirs(qdir, exist_ok=True)
            shutil.copy(q_path, os.path.join(qdir, "query_top000_name_" + os.path.basename(q_path)))
            for rank, g in enumerate(ranked, start=1):
                g_path = gallery_records[g][0]
                shutil.copy(g_path, os.path.join(qdir, f"gallery_top{rank:03d}_name_" + os.path.basename(g_path)))
    return written
