"""tlift: a two-camera case computed by hand, and a direct triple-loop reference on random problems."""
import math
import unittest

import numpy as np
import torch

from qaconv.tlift import tlift, tlift_weights


def reference_tlift(score, g_cam, g_time, p_cam, p_time, num_cams, tau, sigma, K, alpha):
    """Per probe, per gallery camera, per gallery image, straight from the definition."""
    num_p, num_g = score.shape
    w = np.zeros((num_p, num_g))
    for i in range(num_p):
        if not 0 <= p_cam[i] < num_cams:
            continue
        near = [j for j in range(num_p) if p_cam[j] == p_cam[i] and abs(p_time[j] - p_time[i]) < tau]
        for c in range(num_cams):
            cols = [b for b in range(num_g) if g_cam[b] == c]
            if not cols:
                continue
            values = sorted(score[j, b] for j in near for b in cols)
            thr = values[-K] if len(values) > K else values[0]
            pivots = [b for j in near for b in cols if score[j, b] >= thr]  # a multiset
            for a in cols:
                w[i, a] = sum(math.exp(-(g_time[a] - g_time[b]) ** 2 / sigma ** 2) for b in pivots) / len(pivots)
    return (w + alpha) * score, w


class TestHandCase(unittest.TestCase):
    # probes: cameras 0, 0, 0, 1, 2 (camera 2 >= num_cams); p0 and p1 co-occur (|50| < 100), p2 is exactly tau
    # away from p1 (strict inequality: not co-occurring). Gallery: g0 in camera 0, g1..g3 in camera 1.
    score = np.array([[0.5, 0.9, 0.1, 0.3],
                      [0.4, 0.85, 0.8, 0.6],
                      [0.3, 0.6, 0.7, 0.5],
                      [0.2, 0.1, 0.3, 0.9],
                      [0.6, 0.5, 0.4, 0.3]])
    p_cam, p_time = np.array([0, 0, 0, 1, 2]), np.array([0.0, 50.0, 150.0, 0.0, 0.0])
    g_cam, g_time = np.array([0, 1, 1, 1]), np.array([100.0, 200.0, 400.0, 1000.0])

    def expected_w(self):
        e1, e9, e16 = math.exp(-1), math.exp(-9), math.exp(-16)  # (200/200)^2, (600/200)^2, (800/200)^2
        # p0, p1 vs camera 1: scores {.9,.1,.3,.85,.8,.6}, K=3 -> thr .8 -> pivots g1, g1, g2 (multiset)
        pair = [1.0, (2 + e1) / 3, (2 * e1 + 1) / 3, (2 * e16 + e9) / 3]
        # p2 and p3 alone with 3 scores (not more than K): thr = minimum -> pivots g1, g2, g3
        alone = [1.0, (1 + e1 + e16) / 3, (e1 + 1 + e9) / 3, (e16 + e9 + 1) / 3]
        # camera 0 has one gallery image: whatever the pivots, W = exp(0) = 1; probe 4 keeps W = 0
        return np.array([pair, pair, alone, alone, [0.0, 0.0, 0.0, 0.0]])

    def test_weights(self):
        w = tlift_weights(self.score, self.g_cam, self.g_time, self.p_cam, self.p_time, num_cams=2, tau=100,
                          sigma=200, K=3)
        np.testing.assert_allclose(w, self.expected_w(), rtol=1e-12, atol=1e-15)

    def test_output_fusion(self):
        out = tlift(self.score, self.g_cam, self.g_time, self.p_cam, self.p_time, num_cams=2, tau=100, sigma=200,
                    K=3, alpha=0.2)
        np.testing.assert_allclose(out, (self.expected_w() + 0.2) * self.score, rtol=1e-12)
        np.testing.assert_allclose(out[4], 0.2 * self.score[4])

    def test_float32_and_torch_input(self):
        s32 = torch.from_numpy(self.score.astype(np.float32))
        out = tlift(s32, self.g_cam, self.g_time, self.p_cam, self.p_time, num_cams=2, K=3)
        self.assertEqual(out.dtype, np.float32)
        np.testing.assert_allclose(out, (self.expected_w() + 0.2) * self.score, rtol=1e-6)

    def test_top_k_threshold(self):
        # K=1: p0/p1 pivot = g1 only -> W(g2) = e^-1 exactly
        w = tlift_weights(self.score, self.g_cam, self.g_time, self.p_cam, self.p_time, num_cams=2, K=1)
        self.assertAlmostEqual(w[0, 2], math.exp(-1), places=12)
        self.assertAlmostEqual(w[0, 1], 1.0, places=12)


class TestAgainstReference(unittest.TestCase):
    def check(self, seed, num_p, num_g, num_cams, K, ties):
        rng = np.random.default_rng(seed)
        score = rng.random((num_p, num_g))
        if ties:
            score = np.round(score, 1)  # many ties: more than K pivots
        p_cam = rng.integers(0, num_cams + 1, num_p)  # some probes outside [0, num_cams)
        g_cam = rng.integers(0, num_cams, num_g)
        p_time = rng.integers(0, 400, num_p).astype(float)
        g_time = rng.integers(0, 400, num_g).astype(float)
        out = tlift(score, g_cam, g_time, p_cam, p_time, num_cams, tau=60, sigma=80, K=K, alpha=0.3)
        ref, ref_w = reference_tlift(score, g_cam, g_time, p_cam, p_time, num_cams, 60, 80, K, 0.3)
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
        self.assertTrue(np.any(ref_w > 0) and np.any(p_cam >= num_cams))

    def test_random(self):
        self.check(0, 25, 30, 3, K=4, ties=False)

    def test_random_with_ties(self):
        self.check(1, 30, 20, 2, K=5, ties=True)

    def test_random_default_k(self):
        self.check(2, 40, 35, 4, K=10, ties=True)

    def test_shape_errors(self):
        with self.assertRaises(ValueError):
            tlift(np.zeros((2, 3)), [0, 0], [0, 0, 0], [0, 0], [0, 0], 1)


if __name__ == "__main__":
    unittest.main()
