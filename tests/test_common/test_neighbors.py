"""common/neighbors.py against dense references written directly from the formulas (loops over sets), on
problems with many tied distances (small-integer features, so every distance is exact in float32)."""
import unittest

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from common.neighbors import (dense_jaccard, feature_distance, feature_knn, jaccard_distance, jaccard_from_features,
                              knn, kreciprocal_encoding, kreciprocal_sets, query_expansion)


def tied_features(n, d=3, levels=3, seed=0):
    """Integer-valued features: many exactly equal distances (and duplicate points)."""
    return np.random.RandomState(seed).randint(0, levels, size=(n, d)).astype(np.float32)


def dense_sqeuclid(x):
    x = x.astype(np.float64)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def ref_reciprocal(rank, i, width):
    fwd = rank[i, :width]
    return [j for j in fwd if i in rank[j, :width]]


def ref_V(dist, rank, k1):
    """Dense V from the definition: R(i), the 2/3-overlap expansion by R(c, round(k1/2)), softmax(-d)."""
    n = dist.shape[0]
    half = int(np.around(k1 / 2))
    V = np.zeros((n, n))
    sets = []
    for i in range(n):
        r = ref_reciprocal(rank, i, k1 + 1)
        exp = set(r)
        for c in r:
            rc = ref_reciprocal(rank, c, half + 1)
            if len(set(rc) & set(r)) > 2.0 / 3.0 * len(rc):
                exp |= set(rc)
        exp = sorted(exp)
        sets.append(exp)
        w = np.exp(-dist[i, exp])
        V[i, exp] = w / w.sum()
    return V, sets


def ref_qe(V, rank, k2):
    return np.stack([V[rank[i, :k2]].mean(0) for i in range(V.shape[0])]) if k2 > 1 else V


def ref_jaccard(V):
    n = V.shape[0]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            smax = np.maximum(V[i], V[j]).sum()
            out[i, j] = 1.0 - np.minimum(V[i], V[j]).sum() / smax if smax > 0 else 1.0
    return out


class TestKnn(unittest.TestCase):
    def test_matches_stable_argsort_with_ties(self):
        x = tied_features(97, d=2, levels=3)          # 9 distinct points -> huge tie groups
        dist = dense_sqeuclid(x)
        ref = np.argsort(dist, axis=1, kind="stable")[:, :13]
        block, _ = feature_distance(x, device="cpu")
        for rc, cc in [(7, 5), (97, 97), (10, 1000), (1, 13)]:
            idx, d = knn(97, 97, 13, block, row_chunk=rc, col_chunk=cc, device="cpu")
            np.testing.assert_array_equal(idx, ref, err_msg=f"chunks {rc}x{cc}")
            np.testing.assert_array_equal(d, np.take_along_axis(dist, ref, 1).astype(np.float32))

    def test_rectangular_and_custom_distance(self):
        # any distance works through the callback: here negative scores of a "similarity" computed per block
        rng = np.random.RandomState(1)
        s = rng.randint(0, 4, size=(23, 41)).astype(np.float32)
        calls = []

        def block(rows, cols):
            calls.append((len(rows), len(cols)))
            return -torch.from_numpy(s)[rows][:, cols]
        idx, d = knn(23, 41, 6, block, row_chunk=5, col_chunk=9, device="cpu")
        np.testing.assert_array_equal(idx, np.argsort(-s, axis=1, kind="stable")[:, :6])
        self.assertLessEqual(max(r * c for r, c in calls), 5 * 9)   # never more than one block at a time

    def test_k_capped(self):
        x = tied_features(4)
        idx, _ = feature_knn(x, 10, device="cpu")
        self.assertEqual(idx.shape, (4, 4))

    def test_cosine(self):
        x = np.random.RandomState(2).randn(30, 5).astype(np.float32)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        ref = np.argsort(1 - xn @ xn.T, axis=1, kind="stable")[:, :4]
        idx, _ = feature_knn(x, 4, metric="cosine", device="cpu")
        np.testing.assert_array_equal(idx[:, 1:], ref[:, 1:])


class TestKReciprocal(unittest.TestCase):
    def setUp(self):
        self.x = tied_features(60, d=3, levels=3, seed=3)
        self.dist = dense_sqeuclid(self.x)
        self.block, self.pair = feature_distance(self.x, device="cpu")

    def test_sets_and_V_match_the_definition(self):
        for k1, search in [(6, 6), (6, 7), (9, 9), (4, 12)]:   # SpCL searches k1 (sees k1), re-ranking k1 + 1
            rank, _ = knn(60, 60, search, self.block, device="cpu")
            V_ref, sets = ref_V(self.dist, rank, k1)
            m = kreciprocal_sets(rank, k1, row_chunk=7)
            for i in range(60):
                self.assertEqual(list(m[i].indices), sets[i], f"R*({i}), k1={k1}")
            V = kreciprocal_encoding(rank, self.pair, k1, row_chunk=11).toarray()
            np.testing.assert_allclose(V, V_ref, rtol=1e-5, atol=1e-7)
            sizes = np.array([len(x) for x in sets])    # a point with > k1 duplicates may miss its own list
            np.testing.assert_allclose(V.sum(1), (sizes > 0).astype(float), rtol=1e-5)

    def test_expansion_is_exercised(self):
        # the test problem must contain rows where the expansion adds members beyond R(i)
        rank, _ = knn(60, 60, 9, self.block, device="cpu")
        m = kreciprocal_sets(rank, 9)
        grew = sum(len(m[i].indices) > len(ref_reciprocal(rank, i, 10)) for i in range(60))
        self.assertGreater(grew, 0)

    def test_hand_worked_case(self):
        # points 0,1,2 mutually nearest; 3 far away. k1=2: lists [self, nearest, 2nd]
        rank = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1], [3, 2, 1]])
        m = kreciprocal_sets(rank, 2)
        self.assertEqual(list(m[0].indices), [0, 1, 2])
        self.assertEqual(list(m[3].indices), [3])        # 2 and 1 do not list 3

    def test_query_expansion(self):
        rank, _ = knn(60, 60, 8, self.block, device="cpu")
        V_ref, _ = ref_V(self.dist, rank, 8)
        V = kreciprocal_encoding(rank, self.pair, 8)
        np.testing.assert_allclose(query_expansion(V, rank, 6).toarray(), ref_qe(V_ref, rank, 6), rtol=1e-5,
                                   atol=1e-7)
        self.assertIs(query_expansion(V, rank, 1), V)


class TestJaccard(unittest.TestCase):
    def test_matches_dense_formula(self):
        x = tied_features(50, d=3, levels=3, seed=4)
        dist = dense_sqeuclid(x)
        block, pair = feature_distance(x, device="cpu")
        rank, _ = knn(50, 50, 7, block, device="cpu")
        V_ref = ref_qe(ref_V(dist, rank, 7)[0], rank, 3)
        J_ref = ref_jaccard(V_ref)
        V = query_expansion(kreciprocal_encoding(rank, pair, 7), rank, 3)
        J = jaccard_distance(V, row_chunk=9)
        np.testing.assert_allclose(dense_jaccard(J), J_ref, atol=1e-6)
        small_steps = jaccard_distance(V, max_pairs=5)          # steps cut by the triple budget: same result
        np.testing.assert_array_equal(small_steps.toarray(), J.toarray())
        np.testing.assert_array_equal(small_steps.indptr, J.indptr)
        # stored entries are exactly the overlapping pairs plus the diagonal: O(N k), not N x N
        overlap = (np.minimum(V_ref[:, None, :], V_ref[None, :, :]).sum(-1) > 0) | np.eye(50, dtype=bool)
        stored = np.zeros((50, 50), bool)
        coo = J.tocoo()
        stored[coo.row, coo.col] = True
        np.testing.assert_array_equal(stored, overlap)

    def test_rows_and_cols_subset(self):
        x = np.random.RandomState(5).randn(40, 4).astype(np.float32)
        block, pair = feature_distance(x, device="cpu")
        rank, _ = knn(40, 40, 8, block, device="cpu")
        V = query_expansion(kreciprocal_encoding(rank, pair, 8), rank, 4)
        full = dense_jaccard(jaccard_distance(V))
        q, g = np.arange(0, 10), np.arange(10, 40)
        np.testing.assert_allclose(dense_jaccard(jaccard_distance(V, rows=q, cols=g)), full[np.ix_(q, g)],
                                   atol=1e-7)

    def test_hand_computed_pair(self):
        V = sp.csr_matrix(np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75], [0.0, 0.0, 1.0]]))
        J = dense_jaccard(jaccard_distance(V))
        # rows 0,1: min sum 0.25, max sum 0.5 + 0.5 + 0.75 = 1.75
        self.assertAlmostEqual(J[0, 1], 1 - 0.25 / 1.75, places=6)
        self.assertAlmostEqual(J[1, 2], 1 - 0.75 / 1.25, places=6)
        self.assertEqual(J[0, 2], 1.0)
        self.assertEqual(list(np.diag(J)), [0.0, 0.0, 0.0])

    def test_dbscan_sparse_equals_dense(self):
        # clustered data: DBSCAN on the sparse Jaccard gives the labels of DBSCAN on the dense reference
        rng = np.random.RandomState(6)
        centers = rng.randn(6, 8) * 3
        x = np.concatenate([c + 0.6 * rng.randn(12, 8) for c in centers] + [rng.randn(5, 8) * 6]).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        n = len(x)
        dist = dense_sqeuclid(x)
        block, _ = feature_distance(x, device="cpu")
        rank, _ = knn(n, n, 10, block, device="cpu")
        J_ref = ref_jaccard(ref_qe(ref_V(dist, rank, 10)[0], rank, 6))
        J = jaccard_from_features(x, k1=10, k2=6, device="cpu")
        for eps in (0.4, 0.6):
            self.assertGreater(np.abs(J_ref - eps).min(), 1e-5)   # no pair sits on the threshold
            dense = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(J_ref)
            sparse = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(J)
            np.testing.assert_array_equal(sparse, dense)
            self.assertGreater(len(set(dense) - {-1}), 1)
            # pruning stored pairs beyond eps keeps the labels and the diagonal, and stores fewer pairs
            pruned = jaccard_from_features(x, k1=10, k2=6, device="cpu", max_dist=eps)
            np.testing.assert_array_equal(DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(pruned),
                                          dense)
            self.assertLess(pruned.nnz, J.nnz)
            self.assertTrue((pruned.data <= eps).all())
            diag = np.asarray(pruned[np.arange(n), np.arange(n)]).ravel()
            np.testing.assert_array_equal(diag, np.diag(J.toarray()))


if __name__ == "__main__":
    unittest.main()
