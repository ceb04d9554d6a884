"""Synthetic dataset: determinism, Market / SYSU layouts, records, trajectories, textures, first-use generation,
and the colour-histogram baseline features."""
import hashlib
import json
import os
import re
import shutil
import tempfile
import unittest
from collections import defaultdict
from unittest import mock

import numpy as np
from PIL import Image

from common.datasets import build_dataset, synthetic_generate
from common.datasets.synthetic import Synthetic
from common.datasets.synthetic_generate import generate_atomic
from common.datasets.synthetic_person import CLOTH_PALETTE, appearance
from common.datasets.synthetic_render import render_person
from common.datasets.synthetic_plan import plan_jobs
from common.datasets.synthetic_world import SynthConfig, build_network
from common.eval.histogram import histogram_features

NAME_RE = re.compile(r"^(-1|\d{4})_c(\d)s1_(\d{6})_(\d{2})\.jpg$")
SUBSETS = ("bounding_box_train", "query", "bounding_box_test")
TINY = dict(num_ids=8, num_distractors=5, num_junk=4)


def tree_digest(folder):
    """{relative path: sha1 of bytes} of every file under folder."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


def parse_names(folder):
    """[(pid, cam 1-based, frame)] of a Market folder; fails on any bad name."""
    rows = []
    for name in sorted(os.listdir(folder)):
        m = NAME_RE.match(name)
        assert m is not None, f"bad file name {name}"
        rows.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    return rows


class TestSyntheticGeneration(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.cfg = SynthConfig(seed=1, infrared=True, textures=True, **TINY)
        cls.a = generate_atomic(cls.cfg, os.path.join(cls.tmp, "a"), verbose=False)
        cls.b = generate_atomic(cls.cfg, os.path.join(cls.tmp, "b"), verbose=False)
        cls.c = generate_atomic(SynthConfig(seed=2, infrared=True, textures=True, **TINY),
                                os.path.join(cls.tmp, "c"), verbose=False)
        with open(os.path.join(cls.a, "meta.json")) as f:
            cls.meta = json.load(f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_deterministic_same_seed_identical_bytes(self):
        da, db = tree_digest(self.a), tree_digest(self.b)
        self.assertGreater(len(da), 50)
        self.assertEqual(sorted(da), sorted(db))
        self.assertEqual(da, db)

    def test_different_seed_differs(self):
        da, dc = tree_digest(self.a), tree_digest(self.c)
        shared = set(da) & set(dc)
        self.assertTrue(set(da) != set(dc) or any(da[k] != dc[k] for k in shared))
        tex = [k for k in shared if k.startswith("textures")]
        self.assertTrue(any(da[k] != dc[k] for k in tex))

    def test_market_layout_and_names(self):
        rows = {s: parse_names(os.path.join(self.a, s)) for s in SUBSETS}
        for s, rs in rows.items():
            self.assertTrue(rs, s)
            for pid, cam, _ in rs:
                self.assertTrue(1 <= cam <= self.cfg.num_cams)
        train_ids = {p for p, _, _ in rows["bounding_box_train"]}
        test_ids = {p for p, _, _ in rows["query"]}
        self.assertEqual(len(train_ids) + len(test_ids), self.cfg.num_ids)
        self.assertFalse(train_ids & test_ids)
        self.assertFalse({0, -1} & (train_ids | test_ids))
        gallery_ids = {p for p, _, _ in rows["bounding_box_test"]}
        self.assertIn(0, gallery_ids)
        self.assertIn(-1, gallery_ids)
        self.assertFalse(gallery_ids - test_ids - {0, -1})
        # Market query: exactly one image per test id per camera where it is seen
        q_count = defaultdict(int)
        for pid, cam, _ in rows["query"]:
            q_count[(pid, cam)] += 1
        self.assertEqual(set(q_count.values()), {1})
        seen = {(p, c) for p, c, _ in rows["query"] + rows["bounding_box_test"] if p > 0}
        self.assertEqual(set(q_count), seen)
        counts = self.meta["counts"]
        self.assertEqual(counts["query_images"], len(rows["query"]))
        self.assertEqual(counts["junk_images"], self.cfg.num_junk)
        self.assertEqual(counts["distractor_images"], self.cfg.num_distractors)
        img = Image.open(os.path.join(self.a, "query", os.listdir(os.path.join(self.a, "query"))[0]))
        self.assertEqual(img.size, (64, 128))

    def test_dataset_records(self):
        ds = Synthetic(self.a)  # a folder holding meta.json is used directly
        self.assertEqual(ds.protocol, "market1501")
        self.assertEqual(sorted({r.pid for r in ds.train}), list(range(ds.num_train_pids)))
        self.assertEqual(ds.extra["train_pids_original"], sorted(self.meta["split"]["train"]))
        for r in ds.train + ds.query + ds.gallery:
            self.assertTrue(0 <= r.camid < self.cfg.num_cams)
            self.assertNotEqual(r.pid, -1)
            self.assertTrue(os.path.isfile(r.img_path))
            m = NAME_RE.match(os.path.basename(r.img_path))
            self.assertEqual((int(m.group(2)) - 1, int(m.group(3))), (r.camid, r.frame))
        self.assertIn(0, {r.pid for r in ds.gallery})
        self.assertNotIn(0, {r.pid for r in ds.query})
        n_gallery_files = len(os.listdir(os.path.join(self.a, "bounding_box_test")))
        self.assertEqual(len(ds.gallery), n_gallery_files - self.cfg.num_junk)

    def test_frames_follow_routes(self):
        net = build_network(self.cfg.seed, self.cfg.num_cams)
        dist = {frozenset((a, b)): d for a, b, d in net.edges}
        files = defaultdict(set)
        for s in SUBSETS:
            for pid, cam, frame in parse_names(os.path.join(self.a, s)):
                files[(pid, cam)].add(frame)
        for pid, visits in self.meta["routes"].items():
            for v in visits:
                self.assertEqual(files[(int(pid), v["cam"])], set(v["frames"]))
                self.assertEqual(v["frames"], sorted(v["frames"]))
            for v0, v1 in zip(visits, visits[1:]):
                gap = v1["frames"][0] - v0["frames"][-1]
                walk = dist[frozenset((v0["cam"] - 1, v1["cam"] - 1))] / 2.0 * self.cfg.fps  # at most 2 m/s
                self.assertGreater(gap, 0.9 * walk, f"id {pid}: transit faster than walking")

    def test_infrared_layout(self):
        exp = {k: open(os.path.join(self.a, "exp", f"{k}_id.txt")).read().strip() for k in ("train", "val", "test")}
        ids = {k: [int(t) for t in v.split(",") if t] for k, v in exp.items()}
        self.assertTrue(ids["train"] and ids["test"])
        self.assertFalse(set(ids["train"]) & set(ids["val"]) or set(ids["train"] + ids["val"]) & set(ids["test"]))
        for pid in ids["test"]:
            cams = [c for c in range(1, 7) if os.path.isdir(os.path.join(self.a, f"cam{c}", f"{pid:04d}"))]
            self.assertTrue({3, 6} & set(cams) and {1, 2, 4, 5} & set(cams))
        greys = []
        for cam in range(1, 7):
            for dirpath, _, names in os.walk(os.path.join(self.a, f"cam{cam}")):
                for name in names:
                    self.assertRegex(name, r"^\d{4}\.jpg$")
                    arr = np.asarray(Image.open(os.path.join(dirpath, name)).convert("RGB")).astype(int)
                    is_grey = (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
                    greys.append((cam, is_grey))
        self.assertTrue(all(g for c, g in greys if c in (3, 6)))
        self.assertFalse(any(g for c, g in greys if c not in (3, 6)))
        ds = Synthetic(self.a, layout="sysu")
        self.assertEqual(ds.protocol, "sysu")
        self.assertEqual(ds.extra["ir_cams"], [2, 5])
        self.assertTrue(ds.query and all(r.camid in (2, 5) for r in ds.query))
        self.assertTrue(ds.gallery and all(r.camid not in (2, 5) for r in ds.gallery))
        self.assertEqual(sorted({r.pid for r in ds.train}), list(range(len(ids["train"]) + len(ids["val"]))))
        self.assertEqual({r.pid for r in ds.query}, set(ids["test"]))

    def test_ir_reflectance_is_not_grey_of_rgb(self):
        lum = [0.299 * r + 0.587 * g + 0.114 * b for _, (r, g, b), _ in CLOTH_PALETTE]
        ir = [v for _, _, v in CLOTH_PALETTE]
        self.assertLess(abs(np.corrcoef(lum, ir)[0, 1]), 0.6)

    def test_textures(self):
        ds = Synthetic(self.a)
        tex = ds.extra["textures"]
        self.assertEqual(sorted(tex), list(range(1, self.cfg.num_ids + 1)))
        for pid, path in tex.items():
            self.assertTrue(os.path.isfile(path))
            arr = np.asarray(Image.open(path).convert("RGB"))
            self.assertEqual(arr.shape, (64, 64, 3))
            np.testing.assert_array_equal(arr, appearance(self.cfg.seed, pid, self.cfg.palette_size).texture)

    def test_renderer_draws_from_texture(self):
        app = appearance(self.cfg.seed, 1, self.cfg.palette_size)
        red = np.zeros_like(app.texture)
        red[..., 0] = 255
        for view in ("front", "back", "left"):
            layer, alpha = render_person(app.__class__(app.spec, red, app.ir_texture), view, 0.7, (256, 128),
                                         64.0, 240.0, 220.0)
            body = alpha > 0
            self.assertGreater(body.mean(), 0.1)
            self.assertTrue((layer[body, 0] > 0.5).all())
            self.assertTrue((layer[body, 1:3] == 0).all())


class TestFirstUseAndWorld(unittest.TestCase):
    def test_generation_on_first_use(self):
        root = tempfile.mkdtemp()
        try:
            before = synthetic_generate.GENERATION_COUNT
            ds = Synthetic(root, seed=3, verbose=False, **TINY)
            folder = os.path.join(root, "synthetic", "market_s3_n8_d5_j4")
            self.assertEqual(ds.root, folder)
            self.assertEqual(synthetic_generate.GENERATION_COUNT, before + 1)
            mtime = os.path.getmtime(os.path.join(folder, "meta.json"))
            again = build_dataset("synthetic", root, verbose=False, seed=3, **TINY)
            self.assertEqual(synthetic_generate.GENERATION_COUNT, before + 1)
            self.assertEqual(os.path.getmtime(os.path.join(folder, "meta.json")), mtime)
            self.assertEqual(len(again.gallery), len(ds.gallery))
            self.assertEqual(os.listdir(os.path.join(root, "synthetic")), ["market_s3_n8_d5_j4"])
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def test_interrupted_generation_leaves_no_dataset(self):
        root = tempfile.mkdtemp()
        calls = []

        def boom(task):
            calls.append(task)
            if len(calls) > 5:
                raise KeyboardInterrupt
            return original(task)

        original = synthetic_generate._render_task
        try:
            with mock.patch.object(synthetic_generate, "_render_task", boom):
                with self.assertRaises(KeyboardInterrupt):
                    Synthetic(root, seed=4, verbose=False, **TINY)
            self.assertEqual(os.listdir(os.path.join(root, "synthetic")), [])
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def test_config_name(self):
        self.assertEqual(SynthConfig().name(), "market_s0_n300")
        self.assertEqual(SynthConfig(seed=2, num_ids=50, num_cams=4, infrared=True).name(), "market_s2_n50_c4_ir")

    def test_transit_times_carry_temporal_signal(self):
        idents, _ = plan_jobs(SynthConfig())
        arrivals = defaultdict(dict)  # pid -> cam -> first frame
        for i in idents:
            for v in i.visits:
                arrivals[i.pid][v.cam] = v.frames[0]
        same, diff = [], []
        pids = sorted(arrivals)
        for a, b in [(0, 1), (1, 2), (2, 3)]:
            s = [arrivals[p][b] - arrivals[p][a] for p in pids if a in arrivals[p] and b in arrivals[p]]
            d = [arrivals[p][b] - arrivals[q][a] for p in pids for q in pids
                 if p != q and a in arrivals[q] and b in arrivals[p]]
            if len(s) >= 5:
                same.append(np.percentile(np.abs(s), 75) - np.percentile(np.abs(s), 25))
                diff.append(np.percentile(np.abs(d), 75) - np.percentile(np.abs(d), 25))
        self.assertTrue(same)
        self.assertLess(np.median(same) * 5, np.median(diff))


class TestHistogram(unittest.TestCase):
    def test_features(self):
        tmp = tempfile.mkdtemp()
        try:
            rng = np.random.default_rng(0)
            paths = []
            for k in range(3):
                arr = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8) if k < 2 else np.full((128, 64, 3), 200,
                                                                                               np.uint8)
                paths.append(os.path.join(tmp, f"{k}.png"))
                Image.fromarray(arr).save(paths[-1])
            f = histogram_features(paths + [paths[0]])
            self.assertEqual(f.shape, (4, 512))
            self.assertEqual(f.dtype, np.float32)
            self.assertTrue((f >= 0).all())
            np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
            np.testing.assert_allclose((f ** 2).sum(1), 1, atol=1e-5)  # squares are the L1 histogram
            np.testing.assert_array_equal(f[0], f[3])
            self.assertEqual((f[2] > 0).sum(), 1)  # a flat image fills one bin
            self.assertEqual(histogram_features(paths, stripes=2, space="rgb").shape, (3, 1024))
            self.assertEqual(histogram_features(paths, bins=4, joint=False).shape, (3, 12))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
