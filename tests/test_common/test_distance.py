"""compute_distmat against scipy's cdist and a direct double loop; chunking; input types; normalisation."""
import unittest

import numpy as np
import torch
from scipy.spatial.distance import cdist

from common.eval.distance import compute_distmat, normalize_features


class TestDistance(unittest.TestCase):
    def setUp(self):
        rng = np.random.RandomState(0)
        self.q = rng.randn(13, 7).astype(np.float32)
        self.g = rng.randn(29, 7).astype(np.float32)

    def test_squared_euclidean_matches_double_loop_and_cdist(self):
        d = compute_distmat(torch.from_numpy(self.q), torch.from_numpy(self.g), metric="euclidean")
        self.assertEqual(d.shape, (13, 29))
        self.assertEqual(d.dtype, np.float32)
        loop = np.array([[float(((qi.astype(np.float64) - gj) ** 2).sum()) for gj in self.g] for qi in self.q])
        np.testing.assert_allclose(d, loop, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(d, cdist(self.q, self.g, "sqeuclidean"), rtol=1e-5, atol=1e-4)

    def test_cosine_matches_cdist(self):
        d = compute_distmat(self.q, self.g, metric="cosine")
        np.testing.assert_allclose(d, cdist(self.q, self.g, "cosine"), rtol=1e-5, atol=1e-5)
        # cosine distance ignores the scale of the features
        d2 = compute_distmat(self.q * 5.0, self.g * 0.1, metric="cosine")
        np.testing.assert_allclose(d, d2, atol=1e-5)

    def test_chunked_equals_unchunked(self):
        for metric in ("euclidean", "cosine"):
            full = compute_distmat(self.q, self.g, metric=metric, chunk_size=4096)
            for chunk in (1, 4, 13, 100):
                np.testing.assert_allclose(compute_distmat(self.q, self.g, metric=metric, chunk_size=chunk), full,
                                           rtol=1e-6, atol=1e-6)

    def test_numpy_float64_and_torch_inputs_agree(self):
        a = compute_distmat(self.q.astype(np.float64), self.g.astype(np.float64))
        b = compute_distmat(torch.from_numpy(self.q), torch.from_numpy(self.g), device="cpu")
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

    def test_self_distance_is_zero_not_negative(self):
        x = self.q * 100.0
        d = compute_distmat(x, x)
        self.assertTrue(np.all(d >= 0))
        self.assertLess(np.abs(np.diag(d)).max(), 1e-1)

    def test_errors(self):
        with self.assertRaises(ValueError):
            compute_distmat(self.q, self.g[:, :5])
        with self.assertRaises(ValueError):
            compute_distmat(self.q, self.g, metric="manhattan")

    def test_normalize_features(self):
        t = normalize_features(torch.from_numpy(self.q))
        self.assertIsInstance(t, torch.Tensor)
        np.testing.assert_allclose(t.norm(dim=1).numpy(), np.ones(13), atol=1e-6)
        n = normalize_features(self.q)
        self.assertIsInstance(n, np.ndarray)
        np.testing.assert_allclose(n, self.q / np.linalg.norm(self.q, axis=1, keepdims=True), atol=1e-6)
        z = normalize_features(np.zeros((2, 3), dtype=np.float32))
        self.assertTrue(np.all(np.isfinite(z)))


if __name__ == "__main__":
    unittest.main()
