"""Shared ranking evaluator: hand-computed cases, sklearn / loop oracles and Cython == NumPy parity."""
import unittest
import warnings
from collections import defaultdict
from unittest import mock

import numpy as np
from sklearn.metrics import average_precision_score

from common.eval import rank
from common.eval.rank import (IS_CYTHON_AVAILABLE, cuhk03_draws, eval_cuhk03_numpy, eval_market1501_numpy,
                              evaluate_rank, format_results, similarity_to_distance)

if IS_CYTHON_AVAILABLE:
    from eval_cylib.rank_cy import eval_cuhk03_cy, eval_market1501_cy

# Gallery: index -> (pid, cam). pid 0 is a distractor.
G_PIDS = np.array([1, 1, 2, 0, 1, 3])
G_CAMS = np.array([1, 2, 2, 1, 3, 1])
Q_PIDS = np.array([1, 2, 3, 4])
Q_CAMS = np.array([1, 2, 2, 1])
DIST = np.array([
    # q0 (pid 1, cam 1) ranks g1 g0 g3 g2 g4 g5; g0 (same pid, same cam) is removed ->
    #   [g1 g3 g2 g4 g5] matches [1 0 0 1 0]: AP = (1/1 + 2/4) / 2 = 0.75, INP = 2/4, first match at rank 1
    [0.2, 0.1, 0.4, 0.3, 0.5, 0.6],
    # q1 (pid 2, cam 2): its only true match g2 is in the same camera -> skipped
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    # q2 (pid 3, cam 2) ranks g1 g2 g5 g0 g3 g4, nothing removed: match at position 3 -> AP = INP = 1/3
    [0.4, 0.1, 0.2, 0.5, 0.6, 0.3],
    # q3 (pid 4): not in the gallery -> skipped
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
])
BACKENDS = (False, True) if IS_CYTHON_AVAILABLE else (False,)


def random_problem(seed, num_q=40, num_g=300, ties=False, num_ids=25):
    """Random ids / cams; some query ids are absent from the gallery. Tie-free unless ``ties``."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, num_ids, num_g)
    q_pids = rng.integers(1, num_ids + 6, num_q)
    g_cams, q_cams = rng.integers(0, 4, num_g), rng.integers(0, 4, num_q)
    if ties:
        dist = rng.integers(0, 6, (num_q, num_g)).astype(np.float64)
    else:
        dist = rng.permutation(num_q * num_g).reshape(num_q, num_g).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


def loop_reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank, priority=None):
    """Direct per-query loops (torchreid-like); CUHK03 sampling re-built with a dict per identity."""
    cmcs, aps, inps = [], [], []
    for i in range(dist.shape[0]):
        ranked = [g for g in np.argsort(dist[i], kind="stable")
                  if not (g_pids[g] == q_pids[i] and g_cams[g] == q_cams[i])]
        hits = [p for p, g in enumerate(ranked) if g_pids[g] == q_pids[i]]
        if not hits:
            continue
        aps.append(sum((n + 1) / (p + 1) for n, p in enumerate(hits)) / len(hits))
        inps.append(len(hits) / (hits[-1] + 1))
        if priority is None:
            cmcs.append([1.0 if k >= hits[0] else 0.0 for k in range(max_rank)])
            continue
        acc = np.zeros(max_rank)
        for r in range(priority.shape[0]):
            best = {}
            for p, g in enumerate(ranked):
                pid = g_pids[g]
                if pid not in best or priority[r, g] < priority[r, ranked[best[pid]]]:
                    best[pid] = p
            sampled = sorted(best.values())
            first = [s for s, p in enumerate(sampled) if g_pids[ranked[p]] == q_pids[i]][0]
            acc += np.arange(max_rank) >= first
        cmcs.append(acc / priority.shape[0])
    return np.array(cmcs), np.array(aps), np.array(inps)


class TestHandComputed(unittest.TestCase):
    def test_market_protocol(self):
        for use_cython in BACKENDS:
            res = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6, use_cython=use_cython)
            self.assertEqual(res["backend"], "cython" if use_cython else "numpy")
            self.assertEqual((res["num_valid_query"], res["num_skipped_query"]), (2, 2))
            # q0 matches from rank 1, q2 from rank 3; the shorter filtered list of q0 (5) is padded with 1
            np.testing.assert_allclose(res["cmc"], [0.5, 0.5, 1, 1, 1, 1])
            self.assertAlmostEqual(res["rank1"], 0.5)
            self.assertAlmostEqual(res["rank5"], 1.0)
            self.assertAlmostEqual(res["rank20"], 1.0)  # beyond the gallery every valid query has matched
            self.assertAlmostEqual(res["mAP"], (0.75 + 1 / 3) / 2)  # 13/24
            self.assertAlmostEqual(res["mINP"], (0.5 + 1 / 3) / 2)  # 5/12

    def test_per_query_arrays(self):
        all_cmc, all_ap, all_inp, num_valid = eval_market1501_numpy(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, 4)
        self.assertEqual(num_valid, 2)
        np.testing.assert_array_equal(all_cmc, [[1, 1, 1, 1], [0, 0, 1, 1]])
        np.testing.assert_allclose(all_ap, [0.75, 1 / 3])
        np.testing.assert_allclose(all_inp, [0.5, 1 / 3])

    def test_distractor_and_removal_matter(self):
        # distractor g3 (cam 1) relabelled as pid 1: same identity and camera as q0, so it is removed ->
        # [g1 g2 g4 g5] matches [1 0 1 0]: AP = (1 + 2/3) / 2, INP = 2/3
        g_pids = G_PIDS.copy()
        g_pids[3] = 1
        _, all_ap, all_inp, _ = eval_market1501_numpy(DIST, Q_PIDS, g_pids, Q_CAMS, G_CAMS, 6)
        self.assertAlmostEqual(all_ap[0], (1 + 2 / 3) / 2)
        self.assertAlmostEqual(all_inp[0], 2 / 3)
        # g2 (cam 2) relabelled as pid 1 is a new true match -> [1 0 1 1 0]: AP = (1 + 2/3 + 3/4) / 3, INP 3/4
        g_pids = G_PIDS.copy()
        g_pids[2] = 1
        _, all_ap, all_inp, _ = eval_market1501_numpy(DIST, Q_PIDS, g_pids, Q_CAMS, G_CAMS, 6)
        self.assertAlmostEqual(all_ap[0], (1 + 2 / 3 + 3 / 4) / 3)
        self.assertAlmostEqual(all_inp[0], 3 / 4)

    def test_ties_rank_lower_gallery_index_first(self):
        # all distances equal: the stable ranking is g0..g3. Query (pid 5, cam 0); matches g1, g3 (cam 1):
        #   [0 1 0 1] -> AP = (1/2 + 2/4) / 2 = 1/2, INP = 2/4, first match at rank 2
        g_pids, g_cams = np.array([7, 5, 8, 5]), np.array([1, 1, 1, 1])
        for use_cython in BACKENDS:
            res = evaluate_rank(np.ones((1, 4)), [5], g_pids, [0], g_cams, max_rank=4, use_cython=use_cython)
            np.testing.assert_array_equal(res["cmc"], [0, 1, 1, 1])
            self.assertEqual((res["mAP"], res["mINP"]), (0.5, 0.5))

    def test_max_rank_larger_than_gallery_warns_and_shrinks(self):
        for use_cython in BACKENDS:
            with self.assertWarnsRegex(UserWarning, "max_rank"):
                res = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=50, use_cython=use_cython)
            self.assertEqual(res["cmc"].shape, (6,))
            self.assertAlmostEqual(res["rank10"], 1.0)

    def test_small_max_rank_keeps_exact_rank20(self):
        dist, q_pids, g_pids, q_cams, g_cams = random_problem(3)
        ref_cmc, _, _ = loop_reference(dist, q_pids, g_pids, q_cams, g_cams, 20)
        res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
        self.assertEqual(res["cmc"].shape, (5,))
        self.assertAlmostEqual(res["rank20"], ref_cmc.mean(axis=0)[19])
        self.assertAlmostEqual(res["rank10"], ref_cmc.mean(axis=0)[9])

    def test_all_skipped_raises(self):
        for use_cython in BACKENDS:
            with self.assertRaisesRegex(ValueError, "skipped"):
                evaluate_rank(DIST[[1, 3]], Q_PIDS[[1, 3]], G_PIDS, Q_CAMS[[1, 3]], G_CAMS, max_rank=6,
                              use_cython=use_cython)

    def test_similarity_to_distance_keeps_ranking(self):
        scores = 1.0 - DIST
        res_a = evaluate_rank(similarity_to_distance(scores), Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6)
        res_b = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6)
        np.testing.assert_array_equal(similarity_to_distance(scores), -scores)
        self.assertEqual(res_a["mAP"], res_b["mAP"])
        np.testing.assert_array_equal(res_a["cmc"], res_b["cmc"])

    def test_format_results(self):
        text = format_results(evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6), "toy")
        self.assertIn("R1", text.splitlines()[0])
        self.assertIn("54.17%", text)  # mAP 13/24
        self.assertIn("41.67%", text)  # mINP 5/12
        self.assertIn("toy", text)


class TestCuhk03Protocol(unittest.TestCase):
    def test_hand_case_against_draws(self):
        # q0 keeps [g1 g3 g2 g4 g5]; its pid-1 entries are g1 (rank 0) and g4, behind the single-image ids 0
        # (g3) and 2 (g2): rank 0 if g1 is drawn, else 2. q2 keeps everything; its match g5 comes after g2 and,
        # when g1 is the drawn pid-1 image, after g1 too: rank 1 or 2.
        priority, winner = cuhk03_draws(G_PIDS, num_repeats=10, seed=5)
        q0_r0 = priority[:, 1] < priority[:, 4]
        q2_r1 = winner[:, 1] == 0
        expected = np.zeros(6)
        expected[0] = q0_r0.mean() / 2
        expected[1] = (q0_r0.mean() + q2_r1.mean()) / 2
        expected[2:] = 1.0
        for use_cython in BACKENDS:
            res = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6, use_metric_cuhk03=True,
                                num_repeats=10, seed=5, use_cython=use_cython)
            np.testing.assert_allclose(res["cmc"], expected)
            self.assertAlmostEqual(res["mAP"], 13 / 24)  # AP / INP use the full filtered list
            self.assertAlmostEqual(res["mINP"], 5 / 12)

    def test_draws_pick_one_uniform_entry_per_identity(self):
        priority, winner = cuhk03_draws(G_PIDS, num_repeats=4000, seed=0)
        np.testing.assert_array_equal(np.sort(priority[0]), np.arange(6))
        for pid in np.unique(G_PIDS):
            members = np.flatnonzero(G_PIDS == pid)
            np.testing.assert_array_equal(winner[:, members].sum(axis=1), 1)
            freq = winner[:, members].mean(axis=0)
            np.testing.assert_allclose(freq, 1 / members.size, atol=0.05)  # pid 1: ~1/3 each (sd 0.0075)

    def test_one_image_per_identity_equals_market(self):
        rng = np.random.default_rng(1)
        g_pids = rng.permutation(40)
        g_cams = rng.integers(0, 3, 40)
        q_pids, q_cams = rng.integers(0, 40, 25), rng.integers(0, 3, 25)
        dist = rng.permutation(25 * 40).reshape(25, 40)
        for use_cython in BACKENDS:
            a = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20, use_cython=use_cython)
            b = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20, use_cython=use_cython,
                              use_metric_cuhk03=True, seed=7)
            np.testing.assert_array_equal(a["cmc"], b["cmc"])
            self.assertEqual((a["mAP"], a["mINP"]), (b["mAP"], b["mINP"]))

    def test_deterministic_for_a_seed(self):
        problem = random_problem(2, num_q=30, num_g=200)
        a = evaluate_rank(*problem, max_rank=20, use_metric_cuhk03=True, seed=3, use_cython=False)
        b = evaluate_rank(*problem, max_rank=20, use_metric_cuhk03=True, seed=3, use_cython=False)
        c = evaluate_rank(*problem, max_rank=20, use_metric_cuhk03=True, seed=4, use_cython=False)
        np.testing.assert_array_equal(a["cmc"], b["cmc"])
        self.assertFalse(np.array_equal(a["cmc"], c["cmc"]))

    def test_matches_dict_sampling_reference(self):
        problem = random_problem(4, num_q=30, num_g=150)
        priority, winner = cuhk03_draws(problem[2], num_repeats=6, seed=9)
        ref_cmc, ref_ap, ref_inp = loop_reference(*problem, 15, priority=priority)
        all_cmc, all_ap, all_inp, num_valid = eval_cuhk03_numpy(*problem, 15, priority, winner)
        self.assertEqual(num_valid, len(ref_ap))
        np.testing.assert_allclose(all_cmc, ref_cmc)
        np.testing.assert_allclose(all_ap, ref_ap)
        np.testing.assert_allclose(all_inp, ref_inp)


class TestOracles(unittest.TestCase):
    def test_map_matches_sklearn_and_loops(self):
        dist, q_pids, g_pids, q_cams, g_cams = random_problem(0)
        aps = []
        for i in range(dist.shape[0]):
            keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
            y_true = g_pids[keep] == q_pids[i]
            if y_true.any():
                aps.append(average_precision_score(y_true, -dist[i][keep]))
        ref_cmc, _, ref_inp = loop_reference(dist, q_pids, g_pids, q_cams, g_cams, 50)
        self.assertGreater(len(q_pids) - len(aps), 0)  # some queries are skipped
        for use_cython in BACKENDS:
            res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, use_cython=use_cython)
            self.assertEqual(res["num_valid_query"], len(aps))
            self.assertAlmostEqual(res["mAP"], np.mean(aps), places=12)
            self.assertAlmostEqual(res["mINP"], ref_inp.mean(), places=12)
            np.testing.assert_allclose(res["cmc"], ref_cmc.mean(axis=0))

    def test_chunking_does_not_change_results(self):
        problem = random_problem(5, ties=True)
        ref = eval_market1501_numpy(*problem, 20)
        out = eval_market1501_numpy(*problem, 20, chunk_rows=7)
        for a, b in zip(ref, out):
            np.testing.assert_array_equal(a, b)

    def test_missing_extension_warns_once_and_uses_numpy(self):
        with mock.patch.object(rank, "IS_CYTHON_AVAILABLE", False), mock.patch.object(rank, "_CYTHON_WARNED", False):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = [evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6) for _ in range(2)]
        msgs = [str(w.message) for w in caught if "make eval_cylib" in str(w.message)]
        self.assertEqual(len(msgs), 1)
        self.assertEqual([r["backend"] for r in res], ["numpy", "numpy"])


def parity_problems():
    """Tie-free, heavily tied, few identities (many true matches per query), and NaN / inf distances."""
    yield random_problem(0)
    yield random_problem(1, num_ids=3)
    yield random_problem(2, ties=True)
    dist, *ids = random_problem(3, ties=True)
    rng = np.random.default_rng(3)
    dist[rng.random(dist.shape) < 0.1] = np.nan
    dist[rng.random(dist.shape) < 0.05] = np.inf
    yield (dist, *ids)


class TestCythonParity(unittest.TestCase):
    """The Cython backend ranks by counting (no sort): it must reproduce the NumPy figures."""

    def setUp(self):
        self.assertTrue(IS_CYTHON_AVAILABLE, "build the Cython evaluator with `make eval_cylib`")

    def assert_same(self, a, b):
        self.assertEqual(a[3], b[3])
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)

    def test_market_parity(self):
        for problem in parity_problems():
            self.assert_same(eval_market1501_numpy(*problem, 30), eval_market1501_cy(*problem, 30))
            self.assert_same(eval_market1501_numpy(*problem, 30), eval_market1501_cy(*problem, 30, chunk_rows=7))
            a = evaluate_rank(*problem, use_cython=False)
            b = evaluate_rank(*problem, use_cython=True)
            self.assertEqual({k: v for k, v in a.items() if k not in ("cmc", "backend")},
                             {k: v for k, v in b.items() if k not in ("cmc", "backend")})
            np.testing.assert_array_equal(a["cmc"], b["cmc"])

    def test_cuhk03_parity(self):
        for seed, problem in enumerate(parity_problems()):
            draws = cuhk03_draws(problem[2], num_repeats=10, seed=seed)
            self.assert_same(eval_cuhk03_numpy(*problem, 30, *draws), eval_cuhk03_cy(*problem, 30, *draws))
            self.assert_same(eval_cuhk03_numpy(*problem, 4, *draws), eval_cuhk03_cy(*problem, 4, *draws,
                                                                                   chunk_rows=3))
            a = evaluate_rank(*problem, use_cython=False, use_metric_cuhk03=True, seed=seed)
            b = evaluate_rank(*problem, use_cython=True, use_metric_cuhk03=True, seed=seed)
            np.testing.assert_array_equal(a["cmc"], b["cmc"])
            self.assertEqual((a["mAP"], a["mINP"], a["num_valid_query"]), (b["mAP"], b["mINP"], b["num_valid_query"]))


if __name__ == "__main__":
    unittest.main()
