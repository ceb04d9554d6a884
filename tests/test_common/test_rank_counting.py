"""The counting evaluators (NumPy and Cython, no sort of the gallery) against the former sort-based NumPy code.

``SortedReference`` below is the NumPy evaluator as it was before issue 13 (a stable argsort of every row,
then the filtered match list), kept verbatim in behaviour as the reference: every figure of the new paths
must be bit-identical to it on random problems with ties, NaN rows and entries, +-inf, signed zeros, queries
without a match, few identities, both protocols and several chunk sizes.
"""
import unittest

import numpy as np

from benchmarks.bench_eval import make_problem, uniform_distances
from common.eval.rank import (IS_CYTHON_AVAILABLE, cuhk03_draws, eval_cuhk03_numpy, eval_market1501_numpy,
                              evaluate_rank, match_positions, order_keys)

if IS_CYTHON_AVAILABLE:
    from eval_cylib.rank_cy import eval_cuhk03_cy, eval_market1501_cy


class SortedReference:
    """The pre-issue-13 NumPy evaluator: rank by a stable float32 argsort, then filter (reference only)."""

    @staticmethod
    def query(raw_matches, max_rank):
        pos = np.flatnonzero(raw_matches)
        if pos.size == 0:
            return None
        n = pos.size
        cmc = (np.arange(max_rank) >= pos[0]).astype(np.float64)
        precision = np.arange(1, n + 1, dtype=np.float64) / (pos + 1)
        return cmc, float(np.cumsum(precision)[-1] / n), float(n / (pos[-1] + 1))

    @staticmethod
    def stack(cmcs, aps, inps, max_rank):
        all_cmc = np.stack(cmcs) if cmcs else np.zeros((0, max_rank))
        return all_cmc, np.asarray(aps, dtype=np.float64), np.asarray(inps, dtype=np.float64), len(aps)

    @classmethod
    def market(cls, dist, q_pids, g_pids, q_cams, g_cams, max_rank):
        order = np.argsort(np.asarray(dist, dtype=np.float32), axis=1, kind="stable")
        matches = g_pids[order] == q_pids[:, None]
        keep = ~(matches & (g_cams[order] == q_cams[:, None]))
        out = [cls.query(matches[i][keep[i]], max_rank) for i in range(order.shape[0])]
        out = [o for o in out if o is not None]
        return cls.stack([o[0] for o in out], [o[1] for o in out], [o[2] for o in out], max_rank)

    @classmethod
    def cuhk03(cls, dist, q_pids, g_pids, q_cams, g_cams, max_rank, priority, winner):
        order = np.argsort(np.asarray(dist, dtype=np.float32), axis=1, kind="stable")
        winner = np.asarray(winner, dtype=bool)
        num_repeats = priority.shape[0]
        cmcs, aps, inps = [], [], []
        for i in range(order.shape[0]):
            ranked = order[i]
            kept = ranked[~((g_pids[ranked] == q_pids[i]) & (g_cams[ranked] == q_cams[i]))]
            matches = g_pids[kept] == q_pids[i]
            res = cls.query(matches, max_rank)
            if res is None:
                continue
            pos = np.flatnonzero(matches)
            chosen = pos[np.argmin(priority[:, kept[pos]], axis=1)]
            before = np.cumsum(winner[:, kept] & ~matches, axis=1)
            rank = np.where(chosen > 0, before[np.arange(num_repeats), np.maximum(chosen - 1, 0)], 0)
            cmcs.append((np.arange(max_rank)[None, :] >= rank[:, None]).sum(axis=0) / num_repeats)
            aps.append(res[1])
            inps.append(res[2])
        return cls.stack(cmcs, aps, inps, max_rank)


def make_ids(rng, num_q, num_g, num_ids, num_cams=4):
    """Random ids / cams; query ids above ``num_ids`` have no gallery image (skipped queries)."""
    g_pids = rng.integers(0, num_ids, num_g)
    q_pids = rng.integers(1, num_ids + 4, num_q)
    return q_pids, g_pids, rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)


def problems():
    """(name, dist, q_pids, g_pids, q_cams, g_cams): the cases both counting paths must get exactly right."""
    rng = np.random.default_rng(13)
    num_q, num_g = 30, 400
    ids = make_ids(rng, num_q, num_g, 25)
    yield ("uniform float32", rng.random((num_q, num_g), dtype=np.float32), *ids)
    yield ("uniform float64 (cast to float32 ties)", rng.random((num_q, num_g)) * 1e-7 + 1.0, *ids)
    yield ("few identities", rng.random((num_q, num_g)), *make_ids(rng, num_q, num_g, 3))
    yield ("heavy ties", rng.integers(0, 5, (num_q, num_g)).astype(np.float64), *ids)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, 1.0, 2.0])
    yield ("special values only", rng.choice(special, (num_q, num_g)), *ids)
    dist = rng.integers(0, 8, (num_q, num_g)).astype(np.float32)
    for value, frac in ((np.nan, 0.15), (np.inf, 0.05), (-np.inf, 0.05), (-0.0, 0.1), (0.0, 0.1)):
        dist[rng.random(dist.shape) < frac] = value
    dist[2] = np.nan  # a whole NaN row: every entry ties, ranked by gallery index
    dist[3] = 1.0  # a whole tied row
    dist[4, ::2] = np.nan  # NaN last matches, NaN non-matches before and after them
    yield ("NaN rows and entries, inf, signed zeros", dist, *ids)
    # match distances spread over a huge range (bucket scale overflows) or a tiny one (scale is inf)
    wide = (rng.random((num_q, num_g)) * 6e38 - 3e38).astype(np.float32)  # hi - lo overflows float32
    yield ("huge range", wide, *ids)
    tiny = (rng.integers(0, 4, (num_q, num_g)) * 1e-45).astype(np.float32)
    yield ("subnormal range", tiny, *ids)
    # a good ranking: true matches close (few entries before the last match), others far
    q_pids, g_pids, q_cams, g_cams = ids
    good = rng.random((num_q, num_g)).astype(np.float32) + 1.0
    same = q_pids[:, None] == g_pids[None, :]
    good[same] = rng.random(int(same.sum())) * 1.05
    yield ("feature-like", good, *ids)


class TestOrderKeys(unittest.TestCase):
    def test_key_order_is_the_stable_argsort(self):
        values = np.array([np.nan, 1.0, -0.0, np.inf, 0.0, -np.inf, -1e-45, 1e-45, -2.5, np.nan, 0.0, -0.0,
                           3.4e38, -3.4e38, 1.0], dtype=np.float32)
        values[9] = -np.float32(np.nan)  # a negative NaN: still last, by index among NaNs
        keys = order_keys(values, np.arange(values.size))
        np.testing.assert_array_equal(np.argsort(keys), np.argsort(values, kind="stable"))
        # hand-worked: -inf, -3.4e38, -2.5, -1e-45, then the four zeros by index (2, 4, 10, 11), 1e-45, ...
        np.testing.assert_array_equal(np.argsort(keys), [5, 13, 8, 6, 2, 4, 10, 11, 7, 1, 14, 12, 3, 0, 9])
        self.assertEqual(len(set(keys.tolist())), values.size)


class TestMatchPositions(unittest.TestCase):
    def test_hand_worked_row(self):
        # query (pid 5, cam 0); gallery pids / cams below. Stable ranking of the row:
        # g4 (0.1), g0 (0.2), g2 (0.2), g5 (0.3), g1 (nan), g3 (nan), g6 (nan)
        # g2 is pid 5 in cam 0: removed. Kept list: g4 g0 g5 g1 g3 g6 -> matches g0 (pos 1), g3 (pos 4), g6 (5)
        row = np.array([[0.2, np.nan, 0.2, np.nan, 0.1, 0.3, np.nan]], dtype=np.float32)
        g_pids = np.array([5, 7, 5, 5, 8, 9, 5])
        g_cams = np.array([1, 1, 0, 2, 1, 1, 3])
        by_pid = np.argsort(g_pids, kind="stable")
        rows, cols, pos = match_positions(row, np.array([5]), np.array([0]), g_cams, by_pid, g_pids[by_pid])
        np.testing.assert_array_equal(rows, [0, 0, 0])
        np.testing.assert_array_equal(cols, [0, 3, 6])
        np.testing.assert_array_equal(pos, [1, 4, 5])
        if IS_CYTHON_AVAILABLE:
            _, ap, inp, _ = eval_market1501_cy(row, [5], g_pids, [0], g_cams, 7)
            self.assertEqual(ap[0], (1 / 2 + 2 / 5 + 3 / 6) / 3)
            self.assertEqual(inp[0], 3 / 6)


class TestCountingEqualsSorting(unittest.TestCase):
    def assert_same(self, got, ref, what):
        self.assertEqual(got[3], ref[3], what)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b, err_msg=what)

    def backends(self):
        self.assertTrue(IS_CYTHON_AVAILABLE, "build the Cython evaluator with `make eval_cylib`")
        return (("numpy", eval_market1501_numpy, eval_cuhk03_numpy), ("cython", eval_market1501_cy, eval_cuhk03_cy))

    def test_market_protocol(self):
        for name, *problem in problems():
            ref = SortedReference.market(*problem, 25)
            self.assertGreater(len(problem[1]) - ref[3], 0, name)  # some queries are skipped
            for backend, market, _ in self.backends():
                for chunk_rows in (None, 7, 1):
                    self.assert_same(market(*problem, 25, chunk_rows=chunk_rows), ref,
                                     f"{name}, {backend}, chunk_rows={chunk_rows}")

    def test_cuhk03_protocol(self):
        for seed, (name, *problem) in enumerate(problems()):
            priority, winner = cuhk03_draws(problem[2], num_repeats=7, seed=seed)
            ref = SortedReference.cuhk03(*problem, 25, priority, winner)
            for backend, _, cuhk03 in self.backends():
                for chunk_rows in (None, 4):
                    self.assert_same(cuhk03(*problem, 25, priority, winner, chunk_rows=chunk_rows), ref,
                                     f"{name}, {backend}, chunk_rows={chunk_rows}")

    def test_benchmark_problems_both_backends(self):
        # the benchmark's two matrices, shrunk: feature-like (few entries before the last match) and uniform
        dist, *ids = make_problem(num_query=60, num_gallery=3000, num_ids=150, num_cams=6)
        for name, mat in (("feature-like", dist), ("uniform", uniform_distances(dist.shape))):
            ref = SortedReference.market(mat, *ids, 50)
            for use_cython in (False, True):
                res = evaluate_rank(mat, *ids, max_rank=50, use_cython=use_cython)
                np.testing.assert_array_equal(res["cmc"], ref[0].sum(axis=0) / ref[3], err_msg=name)
                self.assertEqual(res["mAP"], float(np.mean(ref[1])), name)
                self.assertEqual(res["mINP"], float(np.mean(ref[2])), name)
                self.assertEqual(res["num_valid_query"], ref[3], name)
        self.assertGreater(float(np.mean(SortedReference.market(dist, *ids, 50)[1])), 0.3)  # really feature-like


if __name__ == "__main__":
    unittest.main()
