"""Non-finite distances: the shared check (common.eval.distance) and the open-reid evaluator (common.eval.cmc).

Every expected value is worked out by hand in the comments; the rule under test: +inf ranks last silently, NaN
ranks last as +inf with one warning naming the count, a matrix without a finite entry is a ReidError.
"""
import unittest
import warnings

import numpy as np
import torch

from common.errors import ReidError
from common.eval.cmc import CMC_CONFIGS, cmc, evaluate_all, mean_ap
from common.eval.distance import NonFiniteDistanceWarning, check_finite_distances, rankable_distances

# 2 queries x 3 gallery images, every entry valid (query cams 0, gallery cams 1).
G_IDS, G_CAMS = np.array([1, 2, 1]), np.array([1, 1, 1])
Q_IDS, Q_CAMS = np.array([1, 2]), np.array([0, 0])
DIST = np.array([
    # q0 (id 1): g1 0.2 (id 2), g2 0.5 (id 1), g0 NaN (id 1) last -> matches at positions 1 and 2 (0-based).
    #   first match at rank index 1; AP = (1/2 + 2/3) / 2 = 7/12. (NaN ranked first would give rank 0, AP 5/6.)
    [np.nan, 0.2, 0.5],
    # q1 (id 2): g0 0.1, g2 0.3, g1 +inf (id 2) last -> match at position 2; AP = 1/3.
    [0.1, np.inf, 0.3],
])
ARGS = (DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS)
NAN_MESSAGE = "open-reid evaluator distmat: 1 of 6 distances is NaN; ranked last (as +inf)"


def caught(fn, *args, **kwargs):
    """(result, list of NonFiniteDistanceWarning messages) of ``fn(*args, **kwargs)``."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in record if issubclass(w.category, NonFiniteDistanceWarning)]


class TestCheckFiniteDistances(unittest.TestCase):
    def test_mask_and_warning_text(self):
        mask, messages = caught(check_finite_distances, DIST, "2x3")
        np.testing.assert_array_equal(mask, [[True, False, False], [False, True, False]])
        self.assertEqual(messages, ["2x3: 1 of 6 distances is NaN; ranked last (as +inf)"])

    def test_warning_points_at_the_caller(self):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            check_finite_distances(DIST)
            cmc(*ARGS, topk=3)
        self.assertEqual([w.filename for w in record], [__file__, __file__])

    def test_counts_nan_and_negative_inf(self):
        d = np.array([[np.nan, -np.inf, 1.0], [np.nan, np.inf, 2.0]], dtype=np.float32)
        mask, messages = caught(check_finite_distances, torch.from_numpy(d), "q x g")
        np.testing.assert_array_equal(mask, [[True, True, False], [True, True, False]])
        self.assertEqual(messages, ["q x g: 3 of 6 distances are NaN or -inf (2 NaN, 1 -inf); ranked last (as +inf)"])

    def test_finite_and_plus_inf_pass_silently(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            self.assertFalse(check_finite_distances(np.ones((2, 3))).any())
            np.testing.assert_array_equal(check_finite_distances(DIST[1:]), [[False, True, False]])
            self.assertFalse(check_finite_distances(np.ones((2, 3), dtype=np.int64)).any())

    def test_rankable_distances_replaces_nan_only_where_needed(self):
        finite = np.ones((2, 3))
        self.assertIs(rankable_distances(finite), finite)
        out, messages = caught(rankable_distances, DIST)
        np.testing.assert_array_equal(out, [[np.inf, 0.2, 0.5], [0.1, np.inf, 0.3]])
        self.assertTrue(np.isnan(DIST[0, 0]), "the input is not modified")
        self.assertEqual(len(messages), 1)

    def test_entirely_non_finite_is_a_reid_error(self):
        for d in (np.full((2, 3), np.nan), np.full((2, 3), np.inf), np.array([[np.nan, np.inf, -np.inf]])):
            with self.assertRaises(ReidError) as ctx:
                check_finite_distances(d, "market")
            self.assertIn("every distance is NaN/inf: the model has diverged", ctx.exception.what)
            self.assertIn("market", ctx.exception.what)
            self.assertIn("--lr", ctx.exception.fix)


class TestOpenReidEvaluatorOnNaN(unittest.TestCase):
    def test_cmc_nan_and_inf_rank_last(self):
        # q0 first match at index 1, q1 at index 2 -> ret [0, 1, 1] over 2 queries
        curve, messages = caught(cmc, *ARGS, topk=3, **CMC_CONFIGS["market1501"])
        np.testing.assert_allclose(curve, [0, 0.5, 1])
        self.assertEqual(messages, [NAN_MESSAGE])
        # all shots: q0's two matches at positions 1, 2 -> ranks 1 - 0 and 2 - 1, half each; q1 rank 2
        np.testing.assert_allclose(caught(cmc, *ARGS, topk=3, **CMC_CONFIGS["allshots"])[0], [0, 0.5, 1])

    def test_mean_ap_hand_case(self):
        (m, per_query), messages = caught(mean_ap, *ARGS, return_per_query=True)
        np.testing.assert_allclose(per_query, [7 / 12, 1 / 3])
        self.assertAlmostEqual(m, 11 / 24)
        self.assertEqual(messages, [NAN_MESSAGE])
        # trapezoid: q0's PR points (R, P) = (0, 1) (0, 0) (1/2, 1/2) (1, 2/3) -> 1/8 + 7/24 = 5/12;
        #   q1's (0, 1) (0, 0) (0, 0) (1, 1/3) -> 1/6
        (_, per_query), _ = caught(mean_ap, *ARGS, ap_variant="trapezoid", return_per_query=True)
        np.testing.assert_allclose(per_query, [5 / 12, 1 / 6])

    def test_nan_and_inf_tie_in_gallery_order(self):
        # one query (id 1); gallery ids [1, 1, 2, 2], distances [0.1, NaN, 0.2, +inf].
        # CMC order g0 (match), g2, then the +inf block in gallery order g1 (NaN, match), g3 -> matches at
        # positions 0 and 2 -> all-shots ranks 0 and 1 (numpy's own order, +inf before NaN, would give 0 and 2).
        d = np.array([[0.1, np.nan, 0.2, np.inf]])
        ids, cams = np.array([1, 1, 2, 2]), np.ones(4, dtype=np.int64)
        curve, _ = caught(cmc, d, [1], ids, [0], cams, topk=4)
        np.testing.assert_allclose(curve, [0.5, 1, 1, 1])

    def test_mean_ap_tied_block(self):
        # query id 1, gallery ids [1, 2, 1, 2], distances [NaN, 0.1, inf, NaN]: g1 (no) then a tied block of
        # {g0 match, g2 match, g3 no}. scikit-learn's step AP counts the block at its end: R 0 -> 1 at P = 2/4,
        # AP = 1/2 (breaking the tie would give 7/12 with the matches first, 5/12 with them last).
        d = np.array([[np.nan, 0.1, np.inf, np.nan]])
        ids, cams = np.array([1, 2, 1, 2]), np.ones(4, dtype=np.int64)
        m, messages = caught(mean_ap, d, [1], ids, [0], cams)
        self.assertAlmostEqual(m, 0.5)
        self.assertEqual(messages, ["open-reid evaluator distmat: 2 of 4 distances are NaN; ranked last (as +inf)"])

    def test_row_without_finite_entry(self):
        # q0 entirely NaN: its scores all tie -> AP = positives / entries = 2/3; q1 as above (1/3)
        d = DIST.copy()
        d[0] = np.nan
        (m, per_query), _ = caught(mean_ap, d, Q_IDS, G_IDS, Q_CAMS, G_CAMS, return_per_query=True)
        np.testing.assert_allclose(per_query, [2 / 3, 1 / 3])

    def test_evaluate_all_warns_once(self):
        out, messages = caught(evaluate_all, torch.from_numpy(DIST), Q_IDS, G_IDS, Q_CAMS, G_CAMS, cmc_topk=(1, 2, 3))
        self.assertEqual(messages, [NAN_MESSAGE])
        self.assertAlmostEqual(out["mAP"], 11 / 24)
        self.assertEqual([out[f"market1501_rank{k}"] for k in (1, 2, 3)], [0.0, 0.5, 1.0])

    def test_all_nan_raises(self):
        d = np.full((2, 3), np.nan)
        for fn in (cmc, mean_ap, evaluate_all):
            with self.assertRaisesRegex(ReidError, "every distance is NaN/inf: the model has diverged"):
                fn(d, Q_IDS, G_IDS, Q_CAMS, G_CAMS)


if __name__ == "__main__":
    unittest.main()
