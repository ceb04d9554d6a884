"""The original's RandomMultipleGallerySampler rules and the fixed-length epoch stream."""
import unittest

import numpy as np

from mprd.sampler import IterBatchSampler, RandomMultipleGallerySampler


class TestSampler(unittest.TestCase):
    def setUp(self):
        # id 0: cams 0,0,1,2; id 1: one camera only (3 images); id 2: a single image
        self.labels = [0, 0, 0, 0, 1, 1, 1, 2]
        self.cams = [0, 0, 1, 2, 3, 3, 3, 4]

    def test_groups_follow_the_camera_rule(self):
        s = RandomMultipleGallerySampler(self.labels, self.cams, num_instances=3)
        for seed in range(20):
            out = s.one_pass(np.random.RandomState(seed))
            groups, i = [], 0
            while i < len(out):                       # regroup: anchor then K-1 mates (none for id 2)
                y = self.labels[out[i]]
                size = 1 if y == 2 else 3
                groups.append(out[i:i + size])
                i += size
            self.assertEqual(sorted(self.labels[g[0]] for g in groups), [0, 1, 2])
            for g in groups:
                self.assertEqual({self.labels[j] for j in g}, {self.labels[g[0]]})
                anchor = g[0]
                if self.labels[anchor] == 0:          # other cameras exist: mates all from other cameras
                    others = [j for j in range(4) if self.cams[j] != self.cams[anchor]]
                    self.assertTrue(all(j in others for j in g[1:]))
                    if len(others) >= 3:              # enough: without replacement
                        self.assertEqual(len(set(g[1:])), 2)
                if self.labels[anchor] == 1:          # one camera: mates are the other images, never the anchor
                    self.assertNotIn(anchor, g[1:])   # 2 others < K = 3: drawn with replacement

    def test_epoch_stream(self):
        s = RandomMultipleGallerySampler(self.labels, self.cams, num_instances=3)
        b = list(IterBatchSampler(s, 4, iters=7, seed=1, epoch=0))
        self.assertEqual(len(b), 7)
        self.assertTrue(all(len(x) == 4 for x in b))
        self.assertEqual(b, list(IterBatchSampler(s, 4, iters=7, seed=1, epoch=0)))     # replays exactly
        self.assertNotEqual(b, list(IterBatchSampler(s, 4, iters=7, seed=1, epoch=1)))
        # a pass has 7 indices -> one batch of 4 per pass (the rest dropped), so 7 batches = 7 passes
        rng = np.random.RandomState(0)
        passes = [s.one_pass(rng) for _ in range(1)]
        self.assertEqual(len(passes[0]), 7)


if __name__ == "__main__":
    unittest.main()
