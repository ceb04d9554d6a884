"""k_reciprocal_rerank: hand-computed two-cluster cases and an explicit loop / set reference on random problems."""
import math
import unittest
import warnings

import numpy as np
import torch

from qaconv.rerank import full_distance_matrix, k_reciprocal_rerank


def reference_rerank(dist, q, k1, k2, lam):
    """Direct formulation of QAConv's re-ranking with Python sets and scalar float16 arithmetic."""
    d = np.asarray(dist, dtype=np.float32)
    n = d.shape[0]
    d0 = (d / d.max(axis=0)).T.astype(np.float32)  # column max, then transpose
    rank = [list(np.argsort(d0[i], kind="stable")) for i in range(n)]

    def reciprocal(i, k):
        return [j for j in rank[i][:k + 1] if i in set(rank[j][:k + 1])]

    half = int(round(k1 / 2))  # Python's round is banker's rounding, as np.around
    v = np.zeros((n, n), dtype=np.float16)
    for i in range(n):
        r = reciprocal(i, k1)
        members = set(r)
        for c in r:
            h = reciprocal(c, half)
            if 3 * len(set(h) & set(r)) > 2 * len(h):
                members |= set(h)
        idx = sorted(members)
        w = np.exp(-d0[i, idx].astype(np.float64))
        for j, x in zip(idx, w / w.sum()):
            v[i, j] = np.float16(x)
    if k2 != 1:
        vq = np.zeros_like(v)
        for i in range(n):
            for col in range(n):
                s = np.float32(0)
                for m in rank[i][:k2]:
                    s = np.float32(s + np.float32(v[m, col]))
                vq[i, col] = np.float16(s / np.float32(min(k2, n)))
        v = vq
    out = np.zeros((q, n - q), dtype=np.float32)
    for i in range(q):
        for j in range(q, n):
            s = np.float16(0)
            for col in range(n):
                if v[i, col] != 0 and v[j, col] != 0:
                    s = np.float16(s + min(v[i, col], v[j, col]))
            jac = np.float16(np.float16(1) - s / np.float16(np.float16(2) - s))
            out[i, j - q] = np.float32(np.float16(jac * np.float16(1 - lam))) + d0[i, j] * np.float32(lam)
    return out


def two_clusters():
    """Query 0 and gallery 1 form one cluster, gallery 2 and 3 another; column maxima are 1."""
    return np.array([[0.0, 0.2, 0.8, 1.0],
                     [0.2, 0.0, 1.0, 0.8],
                     [0.8, 1.0, 0.0, 0.2],
                     [1.0, 0.8, 0.2, 0.0]], dtype=np.float32)


class TestHandCases(unittest.TestCase):
    def test_two_clusters_without_query_expansion(self):
        # k1=1: R(i) = {i, its nearest}; half sets are {c}; V[0] = V[1] up to order = softmax of (0, -0.2).
        # sim(0, 1) = 2 * min weight = 2 / (1 + e^0.2) -> Jaccard distance = 1 - e^-0.2; other clusters: 1.
        out = k_reciprocal_rerank(two_clusters(), 1, k1=1, k2=1, lambda_value=0.3)
        jac = 1 - math.exp(-0.2)
        expected = np.array([[0.7 * jac + 0.3 * 0.2, 0.7 + 0.3 * 0.8, 0.7 + 0.3 * 1.0]])
        self.assertEqual(out.shape, (1, 3))
        self.assertEqual(out.dtype, np.float32)
        np.testing.assert_allclose(out, expected, atol=2e-3)

    def test_two_clusters_with_query_expansion(self):
        # k2=2 averages V over {i, nearest}: rows 0 and 1 both become (0.5, 0.5, 0, 0) -> Jaccard 0
        out = k_reciprocal_rerank(torch.from_numpy(two_clusters()), 1, k1=1, k2=2, lambda_value=0.3)
        np.testing.assert_allclose(out, [[0.3 * 0.2, 0.7 + 0.3 * 0.8, 0.7 + 0.3 * 1.0]], atol=2e-3)

    def test_distances_are_not_squared_and_scaled_by_column_max(self):
        # scaling every column by its own factor must not change D0 = D / column-max; squaring would
        base = two_clusters()
        scaled = base * np.array([[2.0, 5.0, 3.0, 7.0]], dtype=np.float32)
        a = k_reciprocal_rerank(base, 1, k1=1, k2=1)
        b = k_reciprocal_rerank(scaled, 1, k1=1, k2=1)
        np.testing.assert_allclose(a, b, atol=1e-6)
        self.assertAlmostEqual(float(a[0, 1]), 0.7 + 0.3 * 0.8, delta=2e-3)  # 0.8, not 0.8 ** 2

    def test_full_distance_matrix_layout(self):
        qq = np.array([[0.0, 1.0], [1.0, 0.0]])
        qg = np.array([[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]])
        gg = np.arange(9.0).reshape(3, 3)
        full, q = full_distance_matrix(qq, torch.from_numpy(qg), gg)
        self.assertEqual(q, 2)
        np.testing.assert_array_equal(full[:2, 2:], qg)
        np.testing.assert_array_equal(full[2:, :2], qg.T)
        np.testing.assert_array_equal(full[2:, 2:], gg)
        np.testing.assert_array_equal(full[:2, :2], qq)
        with self.assertRaises(ValueError):
            full_distance_matrix(qq, qg, gg[:2, :2])

    def test_bad_inputs(self):
        with self.assertRaises(ValueError):
            k_reciprocal_rerank(np.ones((3, 4)), 1)
        with self.assertRaises(ValueError):
            k_reciprocal_rerank(np.ones((3, 3)), 4)

    def test_warns_on_non_positive_column_max(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            k_reciprocal_rerank(-np.abs(two_clusters()) - 1, 1, k1=1, k2=1)
        self.assertTrue(any("column maxima" in str(w.message) for w in caught))


class TestAgainstReference(unittest.TestCase):
    def check(self, n, q, k1, k2, lam, seed):
        rng = np.random.default_rng(seed)
        # clustered points -> non-trivial reciprocal sets and expansions; asymmetric noise tests the transpose
        centres = rng.normal(size=(max(2, n // 5), 4))
        pts = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.normal(size=(n, 4))
        d = np.linalg.norm(pts[:, None] - pts[None], axis=2) + 0.05 * rng.random((n, n))
        d = d.astype(np.float32)
        out = k_reciprocal_rerank(d, q, k1=k1, k2=k2, lambda_value=lam)
        ref = reference_rerank(d, q, k1, k2, lam)
        self.assertEqual(out.shape, (q, n - q))
        np.testing.assert_allclose(out, ref, atol=2e-3, rtol=0)
        # most entries agree exactly: same float16 operations in the same order
        self.assertGreater(np.mean(out == ref), 0.95)

    def test_small_k(self):
        self.check(n=30, q=8, k1=5, k2=3, lam=0.3, seed=0)

    def test_default_parameters(self):
        self.check(n=36, q=10, k1=20, k2=6, lam=0.3, seed=1)

    def test_k1_larger_than_n(self):
        self.check(n=12, q=4, k1=20, k2=6, lam=0.5, seed=2)

    def test_odd_half_rounding(self):
        self.check(n=25, q=6, k1=5, k2=1, lam=0.2, seed=3)  # round(2.5) = 2 (banker's)


if __name__ == "__main__":
    unittest.main()
