"""SYSU-MM01 protocol on hand-built galleries (0-based camids: camera k -> k-1)."""
import unittest

import numpy as np
import torch

from crossmodal_bot.evaluate_sysu import (eval_sysu, evaluate_sysu, pairwise_distance, sample_sysu_gallery,
                                         sysu_trial_view)


def full_gallery():
    """ids 1..3 x cams {0,1,3,4}, 3 images each, except (2, cam 3) absent and (3, cam 4) with one image;
    plus two IR images (cam 2) that must never be drawn."""
    pids, cams = [], []
    for pid in (1, 2, 3):
        for cam in (0, 1, 3, 4):
            n = 0 if (pid, cam) == (2, 3) else 1 if (pid, cam) == (3, 4) else 3
            pids += [pid] * n
            cams += [cam] * n
    return np.array(pids + [1, 2]), np.array(cams + [2, 2])


class TestSampling(unittest.TestCase):
    def test_single_shot_all(self):
        pids, cams = full_gallery()
        idx = sample_sysu_gallery(pids, cams, mode="all", shots=1, seed=0)
        groups = sorted(zip(pids[idx].tolist(), cams[idx].tolist()))
        expected = sorted((p, c) for p in (1, 2, 3) for c in (0, 1, 3, 4) if (p, c) != (2, 3))
        self.assertEqual(groups, expected)  # exactly one image per existing (id, camera)

    def test_indoor_and_multi_shot(self):
        pids, cams = full_gallery()
        idx = sample_sysu_gallery(pids, cams, mode="indoor", shots=1, seed=3)
        self.assertEqual(len(idx), 6)
        self.assertTrue(set(cams[idx].tolist()) <= {0, 1})
        idx10 = sample_sysu_gallery(pids, cams, mode="indoor", shots=10, seed=3)
        np.testing.assert_array_equal(idx10, np.flatnonzero(np.isin(cams, [0, 1])))  # all 3 of every group
        many = np.array([7] * 12), np.array([0] * 12)
        drawn = sample_sysu_gallery(*many, mode="all", shots=10, seed=0)
        self.assertEqual(len(set(drawn.tolist())), 10)  # without replacement

    def test_seeds_are_deterministic(self):
        pids, cams = full_gallery()
        a = [sample_sysu_gallery(pids, cams, "all", 1, seed=s) for s in range(10)]
        b = [sample_sysu_gallery(pids, cams, "all", 1, seed=s) for s in range(10)]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        self.assertGreater(len({tuple(x) for x in a}), 1)


class TestEvalSysu(unittest.TestCase):
    # sampled gallery: g0 (id1, cam2), g1 (id2, cam1), g2 (id1, cam1), g3 (id2, cam2)   [1-based cameras]
    G_PIDS, G_CAMS = np.array([1, 2, 1, 2]), np.array([1, 0, 0, 1])

    def test_camera3_queries_do_not_see_camera2(self):
        # query A: id1 from camera 3. Ranked: g3 (id2, cam2), g0 (id1, cam2), g2 (id1, cam1), g1 (id2, cam1).
        # Every camera-2 entry is dropped (mangye16's rule, not only same-id ones): list = id1, id2 -> AP 1.
        # (Dropping only same-id camera-2 images would leave id2, id1, id2 -> AP 0.5.)
        dist = np.array([[0.1, 0.4, 0.3, 0.05]])
        res = eval_sysu(dist, np.array([1]), self.G_PIDS, np.array([2]), self.G_CAMS)
        self.assertEqual(res["mAP"], 1.0)
        self.assertEqual(res["mINP"], 1.0)
        np.testing.assert_array_equal(res["cmc"], [1.0, 1.0])
        # the same query from camera 6 keeps everything: id2, id1, id1, id2 -> AP (1/2 + 2/3)/2, INP 2/3
        res6 = eval_sysu(dist, np.array([1]), self.G_PIDS, np.array([5]), self.G_CAMS)
        self.assertAlmostEqual(res6["mAP"], (1 / 2 + 2 / 3) / 2)
        self.assertAlmostEqual(res6["mINP"], 2 / 3)
        np.testing.assert_array_equal(res6["cmc"], [0.0, 1.0])

    def test_several_queries_and_skipping(self):
        # A: id1 cam3 -> id2, id1 after removal (AP 1/2, INP 1/2, cmc 0,1);
        # B: id1 cam6 -> id1, id2, id1, id2 (AP (1 + 2/3)/2, INP 2/3, cmc 1,1); C: id9 -> no match, skipped.
        d = np.array([[0.1, 0.2, 0.3, 0.4]] * 3)
        res = eval_sysu(d, np.array([1, 1, 9]), self.G_PIDS, np.array([2, 5, 5]), self.G_CAMS)
        self.assertEqual(res["num_valid"], 2)
        np.testing.assert_allclose(res["cmc"], [0.5, 1.0])
        self.assertAlmostEqual(res["mAP"], (0.5 + (1 + 2 / 3) / 2) / 2)
        self.assertAlmostEqual(res["mINP"], (0.5 + 2 / 3) / 2)

    def test_cmc_deduplicates_identities(self):
        # ranked ids 2, 2, 1, 3 -> de-duplicated 2, 1, 3: rank-2 hit (a plain CMC would give rank-3)
        g_pids, g_cams = np.array([2, 2, 1, 3]), np.array([0, 3, 0, 4])
        res = eval_sysu(np.array([[0.1, 0.2, 0.3, 0.4]]), np.array([1]), g_pids, np.array([5]), g_cams)
        np.testing.assert_array_equal(res["cmc"], [0.0, 1.0, 1.0])
        self.assertAlmostEqual(res["mAP"], 1 / 3)
        self.assertAlmostEqual(res["mINP"], 1 / 3)

    def test_no_match_at_all_raises(self):
        with self.assertRaises(ValueError):
            eval_sysu(np.zeros((1, 4)), np.array([9]), self.G_PIDS, np.array([5]), self.G_CAMS)


class TestEvaluateSysu(unittest.TestCase):
    def test_trial_average_equals_mean_of_trials(self):
        rng = np.random.default_rng(0)
        g_pids, g_cams = full_gallery()
        keep = g_cams != 2
        g_pids, g_cams = g_pids[keep], g_cams[keep]
        q_pids, q_cams = np.array([1, 1, 2, 3, 3]), np.array([2, 5, 2, 5, 2])
        qf = torch.from_numpy(rng.normal(size=(5, 8)).astype(np.float32))
        gf = torch.from_numpy(rng.normal(size=(len(g_pids), 8)).astype(np.float32))
        res = evaluate_sysu(qf, q_pids, q_cams, gf, g_pids, g_cams, mode="all", shots=1, trials=10)
        self.assertEqual([t["seed"] for t in res["trials"]], list(range(10)))
        for key in ("rank1", "rank10", "rank20", "mAP", "mINP"):
            self.assertAlmostEqual(res[key], np.mean([t[key] for t in res["trials"]]), places=12)
        # trial 4 by hand: sample with seed 4, Euclidean distances, eval_sysu
        cols = sample_sysu_gallery(g_pids, g_cams, "all", 1, seed=4)
        dist = ((qf.double()[:, None] - gf.double()[cols][None]) ** 2).sum(-1).numpy()
        ref = eval_sysu(dist, q_pids, g_pids[cols], q_cams, g_cams[cols])
        self.assertAlmostEqual(res["trials"][4]["mAP"], ref["mAP"], places=9)
        self.assertAlmostEqual(res["trials"][4]["rank1"], ref["cmc"][0], places=9)
        again = evaluate_sysu(qf, q_pids, q_cams, gf, g_pids, g_cams, mode="all", shots=1, trials=10)
        self.assertEqual(res["trials"], again["trials"])
        indoor = evaluate_sysu(qf, q_pids, q_cams, gf, g_pids, g_cams, mode="indoor", trials=2, metric="cosine")
        self.assertEqual(indoor["trials"][0]["gallery_size"], 6)

    def test_cosine_distance(self):
        q, g = np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 3.0]])
        np.testing.assert_allclose(pairwise_distance(q, g, "cosine"), [[0.0, 1.0]], atol=1e-12)
        np.testing.assert_allclose(pairwise_distance(q, g, "euclidean"), [[1.0, 10.0]], atol=1e-12)


class TestTrialView(unittest.TestCase):
    """sysu_trial_view: what the ranked-list pictures of ``--mode visualize`` show on SYSU."""

    def test_columns_and_camera_rule(self):
        g_pids, g_cams = full_gallery()
        keep = g_cams != 2
        g_pids, g_cams = g_pids[keep], g_cams[keep]
        q_cams = np.array([2, 5])  # a camera-3 and a camera-6 query
        dist = np.arange(2 * len(g_pids), dtype=np.float64).reshape(2, -1)
        view, cols = sysu_trial_view(dist, q_cams, g_pids, g_cams, mode="all", shots=1, seed=4)
        np.testing.assert_array_equal(cols, sample_sysu_gallery(g_pids, g_cams, "all", 1, seed=4))
        self.assertEqual(view.shape, (2, len(cols)))
        cam2 = g_cams[cols] == 1
        self.assertTrue(cam2.any() and (~cam2).any())
        self.assertTrue(np.all(np.isinf(view[0, cam2])))  # camera 3 vs camera 2: never shown
        np.testing.assert_array_equal(view[0, ~cam2], dist[0, cols][~cam2])
        np.testing.assert_array_equal(view[1], dist[1, cols])  # camera 6 sees the whole trial gallery
        np.testing.assert_array_equal(dist[0], np.arange(len(g_pids)))  # the input is left alone
        indoor, cols_in = sysu_trial_view(dist, q_cams, g_pids, g_cams, mode="indoor", shots=10, seed=0)
        self.assertEqual(set(g_cams[cols_in].tolist()), {0, 1})
        self.assertEqual(indoor.shape, (2, len(cols_in)))


if __name__ == "__main__":
    unittest.main()
