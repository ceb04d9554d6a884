"""Ranked-list grids: size, border colours, ranking with same-camera exclusion, folder layout."""
import os
import tempfile
import unittest

import numpy as np
from PIL import Image

from common.datasets.base import Record
from common.eval.visualize import visualize_ranked_results

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
        w, h, b, gap, topk = 16, 32, 3, 5, 3
        paths = visualize_ranked_results(self.distmat, self.query, self.gallery, self.out, topk=topk, width=w,
                                         height=h, border=b, gap=gap)
        self.assertEqual(paths, [os.path.join(self.out, "q0001_c0.png"), os.path.join(self.out, "q0002_c1.png")])
        img = np.asarray(Image.open(paths[0]).convert("RGB"))
        tile_w = w + 2 * b
        self.assertEqual(img.shape, (h + 2 * b, (topk + 1) * tile_w + topk * gap, 3))
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
                                         border=2, gap=4)
        self.assertEqual([os.path.basename(p) for p in paths], ["q0001_c0_q0.png", "q0001_c0_q1.png"])
        # query 0 has 4 valid gallery images, query 1 all 5
        self.assertEqual(Image.open(paths[0]).size, (5 * 12 + 4 * 4, 20))
        self.assertEqual(Image.open(paths[1]).size, (6 * 12 + 5 * 4, 20))

    def test_shape_mismatch_raises(self):
        with self.assertRaises(ValueError):
            visualize_ranked_results(self.distmat[:, :3], self.query, self.gallery, self.out)


if __name__ == "__main__":
    unittest.main()
