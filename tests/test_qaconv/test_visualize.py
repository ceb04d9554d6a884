"""Correspondence pictures: PNG size, lines where the hand-made matches put them, threshold and top-n selection,
and the model -> local_matches -> picture path with stand-in modules."""
import os
import tempfile
import unittest

import numpy as np
import torch
from PIL import Image

from qaconv.visualize import GAL_COLOR, PROB_COLOR, cell_centre, draw_correspondences, select_matches, visualize_pairs

GREY = (128, 128, 128)
SIZE = (32, 16)  # network input (h, w); drawn at x2 -> each image 32 wide, 64 high; canvas 64 x 64
GRID = (4, 2)  # feature map (h, w): cells of 16 x 16 drawn pixels, centres x in {8, 24}, y in {8, 24, 40, 56}


def grey_image(w=20, h=50):
    return Image.new("RGB", (w, h), GREY)


def hand_matches(weak=0.4):
    prob_score = torch.zeros(GRID)
    prob_index = torch.zeros(GRID, dtype=torch.long)
    prob_score[0, 0], prob_index[0, 0] = 0.9, 0  # probe (0,0) -> gallery (0,0): horizontal line at y = 8
    prob_score[2, 1], prob_index[2, 1] = weak, 4  # probe (2,1) -> gallery (2,0): line at y = 40, x 24 -> 40
    gal_score = torch.zeros(GRID)
    gal_index = torch.zeros(GRID, dtype=torch.long)
    gal_score[3, 1], gal_index[3, 1] = 0.8, 6  # gallery (3,1) -> probe (3,0): line at y = 56, x 56 -> 8
    return {"prob_score": prob_score, "prob_index": prob_index, "gal_score": gal_score, "gal_index": gal_index,
            "score": 0.7}


def pixels(img, xs, y):
    return [img.getpixel((x, y)) for x in xs]


class TestSelectMatches(unittest.TestCase):
    def test_threshold_top_and_order(self):
        score = np.array([[0.2, 0.9], [0.6, 0.7], [0.5, 0.95]])
        index = np.array([[5, 4], [3, 2], [1, 0]])
        self.assertEqual(select_matches(score, index, top=2, threshold=0.5),
                         [(5, 0, 0.95), (1, 4, 0.9)])
        # 0.5 is not strictly above the threshold
        self.assertEqual([m[0] for m in select_matches(score, index, top=10, threshold=0.5)], [5, 1, 3, 2])
        self.assertEqual([m[0] for m in select_matches(score, index, top=-1, threshold=0.0)], [5, 1, 3, 2, 4, 0])
        # score_scale multiplies before the threshold (the original demo scaled by 200)
        self.assertEqual([m[0] for m in select_matches(score / 200, index, 10, 0.5, score_scale=200)],
                         [5, 1, 3, 2])

    def test_cell_centre(self):
        self.assertEqual(cell_centre(0, GRID, (64, 32)), (8.0, 8.0))
        self.assertEqual(cell_centre(7, GRID, (64, 32), x_offset=32), (56.0, 56.0))
        self.assertEqual(cell_centre(5, GRID, (64, 32)), (24.0, 40.0))


class TestDrawCorrespondences(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def draw(self, matches, **kw):
        path = os.path.join(self.tmp.name, "sub", "pair.png")
        kw.setdefault("size", SIZE)
        kw.setdefault("score_scale", 1.0)
        out = draw_correspondences(grey_image(), grey_image(30, 70), matches, path, **kw)
        self.assertEqual(out, path)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["pair.png"])  # no temporary file left behind
        with Image.open(path) as im:
            self.assertEqual(im.format, "PNG")
            return im.convert("RGB")

    def test_lines_where_matches_say(self):
        img = self.draw(hand_matches(), threshold=0.5, line_width=2)
        self.assertEqual(img.size, (64, 64))
        self.assertTrue(all(p == PROB_COLOR for p in pixels(img, range(12, 37), 8)))  # probe -> gallery
        self.assertTrue(all(p == GAL_COLOR for p in pixels(img, range(12, 53), 56)))  # gallery -> probe
        self.assertTrue(all(p == GREY for p in pixels(img, range(28, 37), 40)))  # 0.4 < threshold: no line
        self.assertTrue(all(p == GREY for p in pixels(img, range(0, 64), 24)))  # nothing on an unused row
        self.assertEqual(img.getpixel((60, 2)), GREY)

    def test_threshold_filtering(self):
        img = self.draw(hand_matches(), threshold=0.3, line_width=2)
        self.assertTrue(all(p == PROB_COLOR for p in pixels(img, range(28, 37), 40)))
        img = self.draw(hand_matches(), threshold=0.85, line_width=2)  # only the 0.9 probe match survives
        self.assertTrue(all(p == PROB_COLOR for p in pixels(img, range(12, 37), 8)))
        self.assertTrue(all(p == GREY for p in pixels(img, range(12, 53), 56)))

    def test_top_limits_lines(self):
        m = hand_matches(weak=0.6)
        img = self.draw(m, threshold=0.5, top=1, line_width=2)
        self.assertTrue(all(p == PROB_COLOR for p in pixels(img, range(12, 37), 8)))
        self.assertTrue(all(p == GREY for p in pixels(img, range(28, 37), 40)))  # 0.6 is the second strongest
        img = self.draw(m, threshold=0.5, top=2, line_width=2)
        self.assertTrue(all(p == PROB_COLOR for p in pixels(img, range(28, 37), 40)))

    def test_mutual_match_shows_both_colours(self):
        m = hand_matches()
        m["prob_score"][1, 0], m["prob_index"][1, 0] = 0.9, 3  # probe (1,0) -> gallery (1,1), line at y = 24
        m["gal_score"][1, 1], m["gal_index"][1, 1] = 0.9, 2  # and back
        img = self.draw(m, threshold=0.5, line_width=2)
        column = [img.getpixel((30, y)) for y in range(18, 31)]
        self.assertIn(PROB_COLOR, column)  # the wider probe -> gallery line shows at the edges
        self.assertIn(GAL_COLOR, column)
        self.assertEqual(img.getpixel((30, 24)), GAL_COLOR)

    def test_paths_and_arrays_accepted_and_upscale(self):
        src = os.path.join(self.tmp.name, "probe.png")
        grey_image().save(src)
        m = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in hand_matches().items()}
        m["prob_score"] = m["prob_score"] / 200  # default score_scale 200 (the original demo): 0.9 -> 0.0045
        path = draw_correspondences(src, src, m, os.path.join(self.tmp.name, "up.png"), size=SIZE, upscale=3)
        with Image.open(path) as im:
            self.assertEqual(im.size, (2 * 16 * 3, 32 * 3))
            # probe (0,0) centre (12, 12) -> gallery (0,0) centre (48 + 12, 12)
            self.assertEqual(im.convert("RGB").getpixel((36, 12)), PROB_COLOR)

    def test_batched_maps_rejected(self):
        m = hand_matches()
        m["prob_score"] = m["prob_score"][None, None]
        with self.assertRaises(ValueError):
            self.draw(m)


class FakeMatcher(torch.nn.Module):
    """Stand-in for QAConv: records its inputs, returns the hand-made matches with (P, G) leading dimensions."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def local_matches(self, prob_fea, gal_fea):
        self.seen = (prob_fea.shape, gal_fea.shape, self.training)
        m = hand_matches()
        out = {k: v[None, None] for k, v in m.items() if k != "score"}
        out["score"] = torch.tensor([[0.7]])
        return out


class TestVisualizePairs(unittest.TestCase):
    def test_end_to_end_with_stand_ins(self):
        inputs = []
        model = torch.nn.AdaptiveAvgPool2d(GRID)
        model.register_forward_hook(lambda mod, args, out: inputs.append(args[0].clone()))
        matcher = FakeMatcher()
        model.train()
        matcher.train()
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for name, colour in (("a_probe.jpg", (250, 250, 250)), ("b_gal.jpg", (0, 0, 0))):
                paths.append(os.path.join(tmp, name))
                Image.new("RGB", (20, 50), colour).save(paths[-1])
            records = [((paths[0], 1, 0), (paths[1], 1, 1))]
            written = visualize_pairs(model, matcher, records, SIZE[0], SIZE[1], os.path.join(tmp, "out"), "cpu",
                                      score_scale=1.0)
            # displayed score sigmoid(0.7 / 10) = 0.51749...
            self.assertEqual([os.path.basename(p) for p in written], ["0000_0.5175_a_probe-b_gal.png"])
            with Image.open(written[0]) as im:
                self.assertEqual(im.size, (64, 64))
                self.assertEqual(im.convert("RGB").getpixel((20, 8)), PROB_COLOR)
        batch = inputs[0]
        self.assertEqual(tuple(batch.shape), (2, 3) + SIZE)
        # ToTensor only (no Normalize): values in [0, 1], white-ish probe and black gallery
        self.assertAlmostEqual(float(batch[0].mean()), 250 / 255, places=2)
        self.assertEqual(float(batch[1].max()), 0.0)
        self.assertEqual(matcher.seen, (torch.Size((1, 3) + GRID), torch.Size((1, 3) + GRID), False))
        self.assertTrue(model.training and matcher.training)  # modes restored


if __name__ == "__main__":
    unittest.main()
