"""Ranked-list grids: size, border colours, captions (rank, id, camera), ranking with same-camera exclusion,
folder layout."""
import os
import tempfile
import unittest

import numpy as np
from PIL import Image

from common.datasets.base import Record
from common.eval.visualize import caption_lines, visualize_ranked_results

COLOURS = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (200, 200, 10), (10, 200, 200)]


class TestVisualize(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        root = self.tmp.name
        self.out = os.path.join(root, "out")

        def solid(name, colour):
            path = os.path.join(root, name)
            Image.new("RGB", (20, 40), colour).save(path)
            return path

        self.query = [Record(solid("q0001_c0.png", (128, 128, 128)), 1, 0),
                      Record(solid("q0002_c1.png", (90, 90, 90)), 2, 1)]
        # gallery: (pid, camid); g0 shares the query's pid AND camera -> must be skipped for query 0
        specs = [(1, 0), (2, 1), (1, 1), (3, 2), (1, 2)]
        self.gallery = [Record(solid(f"g{i}.png", COLOURS[i]), pid, cam) for i, (pid, cam) in enumerate(specs)]
        self.distmat = np.array([[0.0, 0.2, 0.3, 0.5, 0.9],
                                 [0.4, 0.1, 0.2, 0.3, 0.05]], dtype=np.float32)

    def tearDown(self):
        self.tmp.cleanup()

    def test_grid_size_and_border_colours(self):
        w, h, b, gap, topk, cap = 16, 32, 3, 5, 3, 11
        paths = visualize_ranked_results(self.distmat, self.query, self.gallery, self.out, topk=topk, width=w,
                                         height=h, border=b, gap=gap, caption=cap)
        self.assertEqual(paths, [os.path.join(self.out, "q0001_c0.png"), os.path.join(self.out, "q0002_c1.png")])
        img = np.asarray(Image.open(paths[0]).convert("RGB"))
        tile_w = w + 2 * b
        self.assertEqual(img.shape, (h + 2 * b + cap, (topk + 1) * tile_w + topk * gap, 3))
        # query 0 ranks g1 (pid 2, red), g2 (pid 1 cam 1, green), g3 (pid 3, red); g0 is same pid + same camera
        expected = [((0, 0, 0), (128, 128, 128)), ((255, 0, 0), COLOURS[1]), ((0, 255, 0), COLOURS[2]),
                    ((255, 0, 0), COLOURS[3])]
        for t, (frame, inner) in enumerate(expected):
            x0 = t * (tile_w + gap)
            self.assertEqual(tuple(img[0, x0]), frame, f"tile {t} frame")
            self.assertEqual(tuple(img[h + 2 * b - 1, x0 + tile_w - 1]), frame, f"tile {t} frame")
            self.assertEqual(tuple(img[b + h // 2, x0 + b + w // 2]), inner, f"tile {t} content")
            if t < topk:
                self.assertEqual(tuple(img[h // 2, x0 + tile_w + gap // 2]), (255, 255, 255), "gap is white")
        # query 1 (pid 2, cam 1): g4 red, g1 skipped (same pid, same cam), g2 red, g3 red
        img1 = np.asarray(Image.open(paths[1]).convert("RGB"))
        inner1 = [tuple(img1[b + h // 2, t * (tile_w + gap) + b + w // 2]) for t in range(1, 4)]
        self.assertEqual(inner1, [COLOURS[4], COLOURS[2], COLOURS[3]])
        self.assertEqual(tuple(img1[0, tile_w + gap]), (255, 0, 0))

    def test_folder_layout_and_query_subset(self):
        paths = visualize_ranked_results(self.distmat, self.query, self.gallery, self.out, topk=2,
                                         query_indices=[1], write_folders=True)
        self.assertEqual(paths, [os.path.join(self.out, "q0002_c1.png")])
        names = sorted(os.listdir(os.path.join(self.out, "q0002_c1")))
        self.assertEqual(names, ["gallery_top001_name_g4.png", "gallery_top002_name_g2.png",
                                 "query_top000_name_q0002_c1.png"])
        self.assertFalse(os.path.exists(os.path.join(self.out, "q0001_c0.png")))

    def test_fewer_valid_than_topk_and_duplicate_stems(self):
        sub = os.path.join(self.tmp.name, "cam2")
        os.makedirs(sub)
        dup = os.path.join(sub, "q0001_c0.png")
        Image.new("RGB", (20, 40), (1, 2, 3)).save(dup)
        query = [self.query[0], Record(dup, 9, 5)]
        dist = np.tile(self.distmat[:1], (2, 1))
        paths = visualize_ranked_results(dist, query, self.gallery, self.out, topk=10, width=8, height=16,
                                         border=2, gap=4, caption=0)
        self.assertEqual([os.path.basename(p) for p in paths], ["q0001_c0_q0.png", "q0001_c0_q1.png"])
        # query 0 has 4 valid gallery images, query 1 all 5
        self.assertEqual(Image.open(paths[0]).size, (5 * 12 + 4 * 4, 20))
        self.assertEqual(Image.open(paths[1]).size, (6 * 12 + 5 * 4, 20))

    def test_caption_text(self):
        # rank 0 is the query; cameras are printed 1-based as in the file names (camid 3 -> c4)
        self.assertEqual(caption_lines(0, 12, 3), ("query", "id 12 c4"))
        self.assertEqual(caption_lines(3, 12, 3), ("#3", "id 12 c4"))
        self.assertEqual(caption_lines(10, np.int64(1501), np.int64(0)), ("#10", "id 1501 c1"))

    def test_captions_drawn_under_each_tile(self):
        # default 64x128 tiles; query 0 shows: query (id 1 c1), #1 g1 (id 2 c2), #2 g2 (id 1 c2), #3 g3 (id 3 c3);
        # query 1 shows: query (id 2 c2), #1 g4 (id 1 c3), #2 g2 (id 1 c2), ...
        w, h, b, gap = 64, 128, 4, 8
        paths = visualize_ranked_results(self.distmat, self.query, self.gallery, self.out, topk=3)
        img0, img1 = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in paths)
        tile_w, framed_h = w + 2 * b, h + 2 * b
        cap = img0.shape[0] - framed_h
        self.assertGreaterEqual(cap, 20, "two lines of text need a band")
        self.assertEqual(img0.shape[1], 4 * tile_w + 3 * gap)

        def band(img, t, line):
            """Caption pixels of tile t: line 0 (rank) = upper half of the band, line 1 (id, camera) = lower."""
            rows = slice(framed_h, framed_h + cap // 2) if line == 0 else slice(framed_h + cap // 2, None)
            return img[rows, t * (tile_w + gap): t * (tile_w + gap) + tile_w]

        for img in (img0, img1):
            for t in range(4):
                for line in (0, 1):
                    ink = band(img, t, line).sum(axis=2) < 3 * 128
                    self.assertTrue(ink.any(), f"tile {t} line {line}: text is drawn")
                    self.assertLess(ink.mean(), 0.5, "on a white band")
            self.assertEqual(tuple(img[-1, 0]), (255, 255, 255), "band is white")
            self.assertEqual(tuple(img[framed_h - 1, 0]), (0, 0, 0), "query frame ends above the band")
        # the rank line differs from tile to tile; the id line differs where the id or the camera does
        for t, u in ((0, 1), (1, 2), (2, 3)):
            self.assertFalse(np.array_equal(band(img0, t, 0), band(img0, u, 0)), f"rank line {t} vs {u}")
        self.assertFalse(np.array_equal(band(img0, 1, 1), band(img0, 3, 1)), "id 2 c2 vs id 3 c3")
        self.assertFalse(np.array_equal(band(img0, 1, 1), band(img0, 2, 1)), "id 2 c2 vs id 1 c2")
        self.assertFalse(np.array_equal(band(img0, 0, 1), band(img0, 2, 1)), "id 1 c1 vs id 1 c2")
        # ... and is the same text where both are: query 1 (id 2 c2) and query 0's #1 (g1, id 2 c2);
        # query 0's #2 and query 1's #2 are both g2 (id 1 c2)
        np.testing.assert_array_equal(band(img1, 0, 1), band(img0, 1, 1))
        np.testing.assert_array_equal(band(img1, 2, 1), band(img0, 2, 1))
        np.testing.assert_array_equal(band(img1, 2, 0), band(img0, 2, 0))
        # frames keep their meaning: query 0's #1 (g1, id 2) red, #2 (g2, id 1) green
        self.assertEqual(tuple(img0[framed_h - 1, tile_w + gap]), (255, 0, 0))
        self.assertEqual(tuple(img0[framed_h - 1, 2 * (tile_w + gap)]), (0, 255, 0))

    def test_shape_mismatch_raises(self):
        with self.assertRaises(ValueError):
            visualize_ranked_results(self.distmat[:, :3], self.query, self.gallery, self.out)


if __name__ == "__main__":
    unittest.main()
