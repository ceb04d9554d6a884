"""Pseudo-labelling: DBSCAN labels and outliers, outlier relabelling, centres, diagnostics; hard-sample deduction."""
import unittest

import numpy as np
import torch

from mprd.cluster import cluster_centers, cluster_quality, dbscan, idx_to_labels, pseudo_labels
from mprd.mixing import HardPairs, hard_samples


class TestDBSCAN(unittest.TestCase):
    def test_hand_built_distances(self):
        # two tight groups of 4 and 5 points, one lone point, one point near only 2 of group A
        n = 11
        d = np.ones((n, n))
        for grp in ([0, 1, 2, 3], [4, 5, 6, 7, 8]):
            for i in grp:
                for j in grp:
                    d[i, j] = 0.1
        d[9, 9] = 0
        d[10, [0, 1]] = d[[0, 1], 10] = 0.2     # within eps of 0 and 1: a border point of group A
        np.fill_diagonal(d, 0)
        labels = dbscan(d, eps=0.3, min_samples=4)
        self.assertEqual(len(set(labels[:4])), 1)
        self.assertEqual(len(set(labels[4:9])), 1)
        self.assertNotEqual(labels[0], labels[4])
        self.assertEqual(labels[9], -1)                      # lone point: outlier
        self.assertEqual(labels[10], labels[0])              # border point joins the core's cluster
        # min_samples counts the point itself: a group of 3 is not a cluster at min_samples 4
        d3 = np.ones((3, 3)) * 0.1
        np.fill_diagonal(d3, 0)
        self.assertTrue((dbscan(d3, 0.3, 4) == -1).all())

    def test_outlier_relabelling(self):
        idx, k = idx_to_labels(np.array([1, -1, 0, 1, -1, 2, -1]))
        self.assertEqual(k, 3)
        np.testing.assert_array_equal(idx, [1, 3, 0, 1, 4, 2, 5])   # k-th outlier -> K + k, in index order

    def test_centres(self):
        f = torch.tensor([[1., 0.], [0., 1.], [3., 0.], [0., 5.]])
        c = cluster_centers(f, np.array([0, 1, 0, 2]), 2)           # image 3 is an outlier (label 2 >= K)
        torch.testing.assert_close(c, torch.tensor([[1., 0.], [0., 1.]]))
        c = cluster_centers(f, np.array([0, 0, 1, 1]), 2)
        torch.testing.assert_close(c, torch.tensor([[2 ** -0.5, 2 ** -0.5], [3 / 34 ** 0.5, 5 / 34 ** 0.5]]))

    def test_quality(self):
        q = cluster_quality(np.array([0, 0, 1, 1, 2]), 2, np.array([7, 7, 9, 9, 4]))
        self.assertEqual((q["clusters"], q["outliers"]), (2, 1))
        self.assertAlmostEqual(q["nmi"], 1.0)
        self.assertAlmostEqual(q["ari"], 1.0)
        q = cluster_quality(np.array([0, 0, 0, 0]), 1, np.array([1, 1, 2, 2]))
        self.assertAlmostEqual(q["ari"], 0.0)

    def test_pseudo_labels_on_clustered_features(self):
        rng = np.random.RandomState(0)
        centres = rng.randn(5, 16) * 4
        f = np.concatenate([c + 0.3 * rng.randn(10, 16) for c in centres]).astype(np.float32)
        f = torch.nn.functional.normalize(torch.from_numpy(f), dim=1)
        idx, k, cent = pseudo_labels(f, eps=0.5, k1=8, k2=3, device="cpu")
        self.assertEqual(k, 5)
        truth = np.repeat(np.arange(5), 10)
        self.assertAlmostEqual(cluster_quality(idx, k, truth)["ari"], 1.0)
        self.assertEqual(tuple(cent.shape), (5, 16))


class TestHardSamples(unittest.TestCase):
    def test_hand_case(self):
        now = np.array([0, 0, 0, 1, 1, 5])
        prev = np.array([2, 2, 3, 3, 4, 3])
        pos, neg = hard_samples(0, now, prev)       # 0's cluster now {0,1,2}, before {0,1}
        np.testing.assert_array_equal(pos, [2])
        np.testing.assert_array_equal(neg, [])
        pos, neg = hard_samples(2, now, prev)       # now {0,1,2}, before {2,3,5}
        np.testing.assert_array_equal(pos, [0, 1])
        np.testing.assert_array_equal(neg, [3, 5])

    def test_epoch0_prior_is_identity(self):
        now = np.array([0, 1, 0, 0])
        pos, neg = hard_samples(0, now, np.arange(4))
        np.testing.assert_array_equal(pos, [2, 3])
        self.assertEqual(len(neg), 0)

    def test_fallback_off_by_one_and_filter(self):
        now = np.array([0, 0, 1, 1, 2])
        prev = now.copy()                           # nothing changed: no hard positives anywhere
        hp = HardPairs(now, prev)
        pos, _, _ = hp(2)
        np.testing.assert_array_equal(pos, [0, 1])  # the cluster of image n-1 = 1 (original, spec P5)
        pos, _, _ = hp(0)
        np.testing.assert_array_equal(pos, [4])     # n-1 = -1 wraps to the last image
        pos, _, _ = HardPairs(now, prev, fix_fallback=True)(2)
        np.testing.assert_array_equal(pos, [2, 3])
        # link filter: positives kept where P > 0.5, negatives where P <= 0.5
        now, prev = np.array([0, 0, 0, 1, 1]), np.array([0, 1, 1, 0, 0])
        probs = {1: 0.9, 2: 0.5, 3: 0.2, 4: 0.7}
        hp = HardPairs(now, prev, link_fn=lambda pairs: np.array([probs[v] for _, v in pairs]))
        pos, neg, had = hp(0)
        np.testing.assert_array_equal(pos, [1])
        np.testing.assert_array_equal(neg, [3])
        self.assertTrue(had)


if __name__ == "__main__":
    unittest.main()


class TestCoreDistances(unittest.TestCase):
    def test_by_hand(self):
        from mprd.cluster import core_distances
        import scipy.sparse as sp
        rows = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
        cols = [0, 1, 2, 3, 1, 0, 2, 0, 3, 0]
        vals = [0, .1, .3, .2, 0, .1, 0, .3, 0, .2]
        d = sp.csr_matrix((vals, (rows, cols)), shape=(4, 4))
        # image 0: others 0.1, 0.2, 0.3 -> min_samples 4 (itself + 3) -> 0.3; the rest have one stored neighbour
        np.testing.assert_allclose(core_distances(d, 4), [0.3, np.inf, np.inf, np.inf])
        np.testing.assert_allclose(core_distances(d, 2), [0.1, 0.1, 0.3, 0.2])

    def test_matches_dbscan_core_points(self):
        # reference: sklearn's own core points; eps = core distance makes a point core, just below does not
        from sklearn.cluster import DBSCAN
        from mprd.cluster import core_distances, jaccard
        g = torch.Generator().manual_seed(0)
        f = torch.nn.functional.normalize(torch.randn(6, 16, generator=g).repeat_interleave(10, 0)
                                          + 0.4 * torch.randn(60, 16, generator=g), dim=1)
        d = jaccard(f, 8, 3, "cpu")
        core = core_distances(d, 4)
        self.assertTrue(np.isfinite(core).sum() > 30)
        for i in np.nonzero(np.isfinite(core) & (core > 0))[0][:10]:
            at = set(DBSCAN(eps=core[i], min_samples=4, metric="precomputed").fit(d).core_sample_indices_)
            below = set(DBSCAN(eps=core[i] - 1e-6, min_samples=4, metric="precomputed").fit(d).core_sample_indices_)
            self.assertIn(i, at)
            self.assertNotIn(i, below)

    def test_summary_keeps_inf(self):
        from mprd.cluster import distance_summary
        s = distance_summary(np.array([0.1, 0.2, 0.3, 0.4, np.inf]), qs=(0, 50, 75, 100))
        self.assertEqual(s, {"core_p0": 0.1, "core_p50": 0.3, "core_p75": 0.4, "core_p100": np.inf})
