"""benchmarks/ref_rerank_torchreid.py (the torchreid stand-in the re-ranking benchmark times) is the same algorithm.

torchreid squares its input and keeps V in float32; ``qaconv.rerank`` (Zhong et al. as QAConv applies it) does not
square and keeps V in float16. Fed sqrt(D), the stand-in squares back to D, so the two may differ only by the
float16 rounding of V (a few 1e-3), while a broken step (neighbour sets, expansion rule, query expansion, Jaccard)
moves entries by much more.
"""
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks.ref_rerank_torchreid import torchreid_style_rerank  # noqa: E402
from qaconv.rerank import full_distance_matrix, k_reciprocal_rerank  # noqa: E402


def problem(q, g, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, (q + g) // 6, size=q + g)
    x = rng.standard_normal(((q + g) // 6, 8))[ids] + 0.5 * rng.standard_normal((q + g, 8))
    d = ((x[:, None] - x[None]) ** 2).sum(-1).astype(np.float32)
    return d[:q, q:], d[:q, :q], d[q:, q:]


class TestTorchreidStandIn(unittest.TestCase):
    def test_same_as_dense_up_to_float16(self):
        for seed, (q, g) in enumerate([(12, 60), (30, 90)]):
            qg, qq, gg = problem(q, g, seed)
            ref = torchreid_style_rerank(np.sqrt(qg), np.sqrt(qq), np.sqrt(gg), k1=6, k2=3)
            full, _ = full_distance_matrix(qq, qg, gg)
            ours = k_reciprocal_rerank(full, q, k1=6, k2=3)
            self.assertEqual(ref.shape, (q, g))
            self.assertLess(float(np.abs(ref - ours).max()), 5e-3)
            d0 = full[q:, :q].T / full[:, :q].max(0)[:, None]  # (D / column max)^T, query rows
            jac = (ours - 0.3 * d0) / 0.7  # the Jaccard part is not trivial
            self.assertGreater(float((jac < 0.99).mean()), 0.05)
            other = k_reciprocal_rerank(full, q, k1=6, k2=1)  # one step changed: far beyond the tolerance
            self.assertGreater(float(np.abs(ref - other).max()), 5e-2)

    def test_squares_its_input(self):
        qg, qq, gg = problem(10, 40, 3)
        a = torchreid_style_rerank(qg, qq, gg, k1=6, k2=3)
        full, _ = full_distance_matrix(qq, qg, gg)
        self.assertGreater(float(np.abs(a - k_reciprocal_rerank(full, 10, k1=6, k2=3)).max()), 1e-2)


if __name__ == "__main__":
    unittest.main()
