"""Texture pairing (spec §2.3): paths for the CUHK03 and Market layouts, the missing-texture error, the
synthetic oracle mapping, and the loader's texture tensors."""
import os
import tempfile
import unittest

import numpy as np
import torch
from PIL import Image

from common.datasets.base import Record, ReidDataset
from common.errors import ReidError
from san.data import PairedDataset, build_image_transform, load_texture
from san.textures import pair_textures, texture_root, true_synthetic_textures


def touch_png(path, size=(8, 16), value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


class TestPairing(unittest.TestCase):
    def test_cuhk03_layout_and_missing(self):
        with tempfile.TemporaryDirectory() as d:
            root = os.path.join(d, "cuhk03")
            imgs = [os.path.join(root, "images_labeled", n) for n in ("1_001_1_01.png", "1_001_2_06.png",
                                                                       "2_004_1_02.png")]
            for p in imgs:
                touch_png(p)
            recs = [Record(imgs[0], 0, 0), Record(imgs[1], 0, 1)]
            ds = ReidDataset(recs, [Record(imgs[2], 4, 0)], [Record(imgs[2], 4, 0)], "cuhk03", root,
                             texture_key="cuhk03_labeled")
            tex_root = os.path.join(root, "texture_cuhk03_labeled")
            self.assertEqual(texture_root(ds), tex_root)
            with self.assertRaises(ReidError) as cm:
                pair_textures(ds, ds.train)
            msg = str(cm.exception)
            self.assertIn(os.path.join(tex_root, "1_001_1_01.png"), msg)  # the first missing file
            self.assertIn("2 of 2", msg)
            self.assertIn("generate_texture.py", msg)
            self.assertIn(f"-i {os.path.join(root, 'images_labeled')} -o {tex_root}", msg)
            touch_png(os.path.join(tex_root, "1_001_1_01.png"))
            with self.assertRaises(ReidError) as cm:
                pair_textures(ds, ds.train)
            self.assertIn("1_001_2_06.png", str(cm.exception))
            touch_png(os.path.join(tex_root, "1_001_2_06.png"))
            self.assertEqual(pair_textures(ds, ds.train),
                             [os.path.join(tex_root, "1_001_1_01.png"), os.path.join(tex_root, "1_001_2_06.png")])

    def test_market_layout_mirrors_subfolders(self):
        with tempfile.TemporaryDirectory() as d:
            root = os.path.join(d, "Market-1501-v15.09.15")
            tr = os.path.join(root, "bounding_box_train", "0002_c1s1_000451_03.jpg")
            q = os.path.join(root, "query", "0001_c1s1_001051_00.jpg")
            for p in (tr, q):
                touch_png(p)
            ds = ReidDataset([Record(tr, 0, 0)], [Record(q, 1, 0)], [Record(q, 1, 0)], "market", root)
            want = os.path.join(root, "texture_market", "bounding_box_train", "0002_c1s1_000451_03.jpg")
            touch_png(want)
            self.assertEqual(pair_textures(ds, ds.train), [want])
            other = os.path.join(d, "mytex")
            with self.assertRaisesRegex(ReidError, "mytex"):
                pair_textures(ds, ds.train, texture_dir=other)

    def test_true_synthetic(self):
        ds = ReidDataset([Record("a.jpg", 0, 0), Record("b.jpg", 1, 0)], [Record("c.jpg", 9, 1)], [], "synthetic",
                         "/x", textures={5: "/t/0005.png", 9: "/t/0009.png"}, train_pids_original=[9, 5])
        self.assertEqual(true_synthetic_textures(ds, ds.train), ["/t/0009.png", "/t/0005.png"])
        self.assertEqual(true_synthetic_textures(ds, ds.query, relabelled=False), ["/t/0009.png"])
        with self.assertRaisesRegex(ReidError, "--textures"):
            true_synthetic_textures(ReidDataset([], [], [], "synthetic", "/x"), [])

    def test_texture_tensor(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "t.png")
            arr = np.zeros((4, 4, 3), np.uint8)
            arr[:, :2] = 255
            Image.fromarray(arr).save(p)
            t = load_texture(p, 4, 4)
            self.assertEqual(tuple(t.shape), (3, 4, 4))
            self.assertEqual(t[:, :, :2].min().item(), 1.0)   # 255 -> +1
            self.assertEqual(t[:, :, 2:].max().item(), -1.0)  # 0 -> -1
            self.assertEqual(tuple(load_texture(p, 8, 16).shape), (3, 8, 16))  # resized to the decoder size
            img = os.path.join(d, "img.png")
            touch_png(img, (32, 64), 100)
            ds = PairedDataset([Record(img, 3, 1)], [p], build_image_transform(64, 32, True), (64, 64))
            x, pid, cam, idx, tex = ds[0]
            self.assertEqual((tuple(x.shape), pid, cam, idx, tuple(tex.shape)), ((3, 64, 32), 3, 1, 0, (3, 64, 64)))
            self.assertEqual(tuple(PairedDataset([Record(img, 3, 1)], None, build_image_transform(64, 32, False),
                                                 (64, 64))[0][4].shape), (0,))


if __name__ == "__main__":
    unittest.main()
