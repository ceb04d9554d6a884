"""open-reid style CMC / mAP: hand-computed 5x5 cases, a loop oracle and the sampling settings."""
import unittest

import numpy as np
from sklearn.metrics import average_precision_score

from common.eval.cmc import CMC_CONFIGS, cmc, evaluate_all, mean_ap

# Gallery index -> (pid, cam): g0 (1, 1), g1 (1, 2), g2 (2, 1), g3 (1, 3), g4 (3, 2).
G_IDS = np.array([1, 1, 2, 1, 3])
G_CAMS = np.array([1, 2, 1, 3, 2])
Q_IDS = np.array([1, 2, 9, 3, 1])
Q_CAMS = np.array([1, 2, 1, 2, 2])
DIST = np.array([
    # q0 (1, cam 1) ranks g0..g4; g0 is invalid (same id and camera). Valid [g1 g2 g3 g4] = [1 0 1 0]:
    #   hits at k = 0, 2 -> k - j = 0, 1. With separate_camera_set (no cam 1): [g1 g3 g4] = [1 1 0] -> 0, 0.
    [0, 1, 2, 3, 4],
    # q1 (2, cam 2) ranks g4 g0 g1 g3 g2: all valid, hit at k = 4. Separate cameras drop g4, g1: [g0 g3 g2] -> 2.
    [1, 2, 4, 3, 0],
    # q2: id 9 is not in the gallery -> skipped.
    [0, 1, 2, 3, 4],
    # q3 (3, cam 2): its only gallery image g4 is in cam 2 -> skipped.
    [0, 1, 2, 3, 4],
    # q4 (1, cam 2) ranks g4 g3 g2 g1 g0; g1 is invalid. Valid [g4 g3 g2 g0] = [0 1 0 1]: k = 1, 3 -> 1, 2.
    #   Separate cameras drop g4: [g3 g2 g0] = [1 0 1] -> 0, 1.
    [4, 3, 2, 1, 0],
], dtype=np.float64)
ARGS = (DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS)


def loop_cmc(dist, q_ids, g_ids, q_cams, g_cams, topk, separate_camera_set=False, first_match_break=False):
    """Plain loop over matches (no sampling), the open-reid accumulation written out."""
    ret, valid_queries = np.zeros(topk), 0
    for i in range(dist.shape[0]):
        ranked = np.argsort(dist[i], kind="stable")
        kept = [g for g in ranked if (g_ids[g] != q_ids[i] or g_cams[g] != q_cams[i])
                and not (separate_camera_set and g_cams[g] == q_cams[i])]
        index = [k for k, g in enumerate(kept) if g_ids[g] == q_ids[i]]
        if not index:
            continue
        valid_queries += 1
        for j, k in enumerate(index):
            if k - j >= topk:
                break
            if first_match_break:
                ret[k - j] += 1
                break
            ret[k - j] += 1.0 / len(index)
    return np.cumsum(ret) / valid_queries


class TestOpenReidCmc(unittest.TestCase):
    def test_allshots(self):
        # ret = q0 [.5 .5 0 0 0] + q1 [0 0 0 0 1] + q4 [0 .5 .5 0 0]; 3 valid queries
        np.testing.assert_allclose(cmc(*ARGS, topk=5, **CMC_CONFIGS["allshots"]),
                                   np.cumsum([0.5, 1, 0.5, 0, 1]) / 3)

    def test_first_match_break(self):
        # ret = q0 [1 0 0 0 0] + q1 [0 0 0 0 1] + q4 [0 1 0 0 0]
        np.testing.assert_allclose(cmc(*ARGS, topk=5, **CMC_CONFIGS["market1501"]), np.cumsum([1, 1, 0, 0, 1]) / 3)

    def test_separate_camera_set(self):
        # ret = q0 [1 0 0 0 0] (two halves at rank 0) + q1 [0 0 1 0 0] + q4 [.5 .5 0 0 0]
        np.testing.assert_allclose(cmc(*ARGS, topk=5, separate_camera_set=True), np.cumsum([1.5, 0.5, 1, 0, 0]) / 3)
        np.testing.assert_allclose(cmc(*ARGS, topk=5, separate_camera_set=True, first_match_break=True),
                                   np.cumsum([2, 0, 1, 0, 0]) / 3)

    def test_topk_truncation_and_topk_beyond_gallery(self):
        # q1's match at rank 4 falls outside top-3 but the query still counts
        np.testing.assert_allclose(cmc(*ARGS, topk=3), np.cumsum([0.5, 1, 0.5]) / 3)
        curve = cmc(*ARGS, topk=8)
        self.assertEqual(curve.shape, (8,))
        np.testing.assert_allclose(curve[4:], 1.0)

    def test_single_gallery_shot_hand_case(self):
        # cuhk03 setting (separate cameras + one image per id): q0 samples [g1|g3, g4] -> rank 0; q1 samples
        # [g0|g3, g2] -> rank 1; q4 samples [g3, g2] (rank 0) or [g2, g0] (rank 1), n0 of 10 repeats at rank 0.
        curve = cmc(*ARGS, topk=5, seed=11, **CMC_CONFIGS["cuhk03"])
        np.testing.assert_allclose(curve[1:], 1.0)
        n0 = curve[0] * 30 - 10
        self.assertAlmostEqual(n0, round(n0))
        self.assertTrue(0 <= round(n0) <= 10)
        np.testing.assert_array_equal(curve, cmc(*ARGS, topk=5, seed=11, **CMC_CONFIGS["cuhk03"]))
        # the draw of q4's pid-1 image is uniform: over many seeds n0 / 10 averages 1/2 (sd ~0.011 here)
        firsts = [cmc(*ARGS, topk=1, seed=s, **CMC_CONFIGS["cuhk03"])[0] for s in range(200)]
        self.assertAlmostEqual(np.mean(firsts) * 3 - 1, 0.5, delta=0.05)
        self.assertGreater(np.std(firsts), 0)

    def test_matches_loop_oracle_on_random_problems(self):
        rng = np.random.default_rng(0)
        for _ in range(3):
            g_ids, g_cams = rng.integers(0, 12, 60), rng.integers(0, 3, 60)
            q_ids, q_cams = rng.integers(0, 15, 20), rng.integers(0, 3, 20)
            dist = rng.permutation(20 * 60).reshape(20, 60).astype(np.float64)
            for sep in (False, True):
                for fmb in (False, True):
                    np.testing.assert_allclose(
                        cmc(dist, q_ids, g_ids, q_cams, g_cams, topk=10, separate_camera_set=sep,
                            first_match_break=fmb),
                        loop_cmc(dist, q_ids, g_ids, q_cams, g_cams, 10, sep, fmb))

    def test_no_valid_query_raises(self):
        with self.assertRaisesRegex(ValueError, "No valid query"):
            cmc(DIST[2:4], Q_IDS[2:4], G_IDS, Q_CAMS[2:4], G_CAMS)


class TestOpenReidMeanAP(unittest.TestCase):
    def test_step_ap_hand_case(self):
        # q0 [1 0 1 0] -> (1 + 2/3) / 2; q1 [0 0 0 0 1] -> 1/5; q4 [0 1 0 1] -> (1/2 + 2/4) / 2; q2, q3 skipped
        m, per_query = mean_ap(*ARGS, return_per_query=True)
        np.testing.assert_allclose(per_query, [5 / 6, 1 / 5, 1 / 2])
        self.assertAlmostEqual(m, 23 / 45)

    def test_trapezoid_ap_hand_case(self):
        # area under the linearly interpolated PR curve. q0: points (R, P) = (0, 1) (.5, 1) (.5, .5) (1, 2/3)
        #   -> .5 * 1 + .5 * (1/2 + 2/3) / 2 = 19/24. q1: (0, 1) (0, 0) ... (1, 1/5) -> 1 * (0 + 1/5) / 2 = 1/10.
        #   q4: (0, 1) (0, 0) (.5, .5) (.5, 1/3) (1, .5) -> .5 * .5 / 2 + .5 * (1/3 + 1/2) / 2 = 1/3.
        _, per_query = mean_ap(*ARGS, ap_variant="trapezoid", return_per_query=True)
        np.testing.assert_allclose(per_query, [19 / 24, 1 / 10, 1 / 3])
        with self.assertRaises(ValueError):
            mean_ap(*ARGS, ap_variant="bogus")

    def test_matches_sklearn_oracle(self):
        rng = np.random.default_rng(1)
        g_ids, g_cams = rng.integers(0, 10, 50), rng.integers(0, 3, 50)
        q_ids, q_cams = rng.integers(0, 12, 15), rng.integers(0, 3, 15)
        dist = rng.random((15, 50))
        aps = []
        for i in range(15):
            valid = (g_ids != q_ids[i]) | (g_cams != q_cams[i])
            if (g_ids[valid] == q_ids[i]).any():
                aps.append(average_precision_score(g_ids[valid] == q_ids[i], -dist[i, valid]))
        self.assertAlmostEqual(mean_ap(dist, q_ids, g_ids, q_cams, g_cams), np.mean(aps), places=12)

    def test_evaluate_all(self):
        out = evaluate_all(*ARGS)
        self.assertAlmostEqual(out["mAP"], 23 / 45)
        self.assertAlmostEqual(out["market1501_rank1"], 1 / 3)
        self.assertAlmostEqual(out["allshots_rank1"], 1 / 6)
        self.assertEqual(out["market1501"].shape, (20,))


if __name__ == "__main__":
    unittest.main()
