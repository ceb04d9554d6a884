"""common.rerank: the sparse, selecting k-reciprocal re-ranking equals the dense qaconv.rerank bit for bit.

The reference is ``qaconv.rerank.k_reciprocal_rerank`` on the full (q+g)^2 matrix; the sparse code only sees
that matrix through ``block_fn`` slices of bounded size. Equality is exact (``np.array_equal``): both perform the
same float operations in the same order (see common/rerank.py; the only reordered sum, each V row's float64
normaliser, is exact for distances in [0, 1] after the column normalisation, which all problems here have).
"""
from __future__ import annotations

import numpy as np
import pytest

from common.rerank import neighbour_lists, rerank_features, rerank_sparse
from common.eval.distance import compute_distmat
from qaconv.rerank import k_reciprocal_rerank


class Blocks:
    """block_fn over a full matrix that records the largest block it was asked for."""

    def __init__(self, d: np.ndarray):
        self.d, self.largest = d, 0

    def __call__(self, rows, cols):
        self.largest = max(self.largest, len(rows) * len(cols))
        return self.d[np.ix_(rows, cols)]


def _features(rng, n, dim=12):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).astype(np.float32)


def _problem(kind: str, q: int, g: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = q + g
    if kind == "features":  # symmetric, zero diagonal
        return _features(rng, n)
    if kind == "rounded":  # feature-like with many exact ties
        return np.round(_features(rng, n)).astype(np.float32)
    if kind == "levels":  # 4 distance levels: ties everywhere, non-symmetric, self not always nearest
        return (rng.integers(0, 4, size=(n, n)) + 1).astype(np.float32)
    if kind == "scores":  # QAConv-like 1 - sigmoid(score / 10), non-symmetric
        s = rng.normal(scale=20.0, size=(n, n))
        return (1.0 - 1.0 / (1.0 + np.exp(-s / 10.0))).astype(np.float32)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["features", "rounded", "levels", "scores"])
@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.0), (3, 10, 0.5), (1, 1, 1.0), (8, 3, 0.9)])
def test_equals_dense(kind, k1, k2, lam):
    q, g = 23, 71
    d = _problem(kind, q, g, seed=k1 * 7 + k2)
    dense = k_reciprocal_rerank(d, q, k1=k1, k2=k2, lambda_value=lam)
    blocks = Blocks(d)
    sparse = rerank_sparse(blocks, q, g, k1=k1, k2=k2, lambda_value=lam, row_chunk=16, col_chunk=40,
                           query_chunk=7)
    assert sparse.dtype == np.float32 and sparse.shape == (q, g)
    assert np.array_equal(sparse, dense)
    # never asked for more than one neighbour-pass block, let alone the (q+g)^2 matrix
    assert blocks.largest <= 16 * 40 < (q + g) ** 2


@pytest.mark.parametrize("keep", [None, 21, 22])
def test_ties_across_the_cut_are_recomputed(keep):
    """With keep = K the candidate list ends exactly at the cut: tied rows must be redone in full."""
    q, g = 20, 60
    d = _problem("levels", q, g, seed=3)
    stats = {}
    sparse = rerank_sparse(Blocks(d), q, g, keep=keep, row_chunk=32, col_chunk=25, stats=stats)
    assert np.array_equal(sparse, k_reciprocal_rerank(d, q))
    if keep == 21:
        assert stats["fallback_rows"] > 0  # the exactness check fired, and the redone rows are right


def test_neighbour_lists_are_a_stable_argsort():
    """Independent reference: the first k columns of a stable argsort of (D / column max)^T, by a direct loop."""
    rng = np.random.default_rng(5)
    n, k = 57, 9
    d = rng.integers(0, 6, size=(n, n)).astype(np.float32) + 0.5
    d0 = (d / d.max(axis=0)[None, :]).T
    expect = np.array([sorted(range(n), key=lambda j: (d0[i, j], j))[:k] for i in range(n)])
    top, top_d0, _, _, col_max, _ = neighbour_lists(Blocks(d), n, k, keep=k, row_chunk=10, col_chunk=13)
    assert np.array_equal(top, expect)
    assert np.array_equal(top_d0, np.take_along_axis(d0, expect, 1))
    assert np.array_equal(col_max, d.max(axis=0))


def test_nonpositive_column_maximum_warns_and_still_matches():
    q, g = 10, 30
    d = _problem("features", q, g, seed=1)
    d[:, 4] = -d[:, 4] - 1.0  # column maximum < 0: ordering flips; both versions must flip alike
    with pytest.warns(RuntimeWarning):
        dense = k_reciprocal_rerank(d, q, k1=5, k2=3)
    with pytest.warns(RuntimeWarning):
        sparse = rerank_sparse(Blocks(d), q, g, k1=5, k2=3, row_chunk=8, col_chunk=8)
    assert np.array_equal(sparse, dense)


def test_rerank_features_matches_dense_on_feature_distances():
    """Integer-valued features keep every dot product exact in float32, so blocks equal the full matrix."""
    rng = np.random.default_rng(2)
    qf = rng.integers(-3, 4, size=(19, 8)).astype(np.float32)
    gf = rng.integers(-3, 4, size=(53, 8)).astype(np.float32)
    allf = np.concatenate([qf, gf])
    full = compute_distmat(allf, allf, metric="euclidean")
    dense = k_reciprocal_rerank(full, 19, k1=6, k2=3, lambda_value=0.3)
    sparse = rerank_features(qf, gf, k1=6, k2=3, lambda_value=0.3, row_chunk=16, col_chunk=20)
    assert np.array_equal(sparse, dense)


def test_hand_worked_case():
    """q=1, g=2, k1=1, k2=1: a 3-point problem small enough to follow by hand.

    D = [[0, 1, 4], [1, 0, 2], [4, 2, 0]] (symmetric, column maxima 4, 2, 4). D0 = D / colmax, transposed:
    row 0 = [0, .25, 1], row 1 = [.5, 0, 1], row 2 = [1, .5, 0]. With k1 = 1 every item's first 2 neighbours:
    0 -> (0, 1), 1 -> (1, 0), 2 -> (2, 1). R(0) = {0, 1} (1 lists 0), R(1) = {1, 0}, R(2) = {2} (1 does not list 2).
    Half sets (round(0.5) = 0, so width 1) are {self}, always inside, so nothing is added.
    V[0] = exp(-[0, .25]) normalised on {0, 1}, V[2] = [0, 0, 1]. Jaccard(0, 1): V[1] = exp(-[.5, 0]) normalised;
    Jaccard(0, 2) = 1 (no shared column). lambda = 0.5: final = 0.5 jaccard + 0.5 D0[0, 1:].
    """
    d = np.array([[0, 1, 4], [1, 0, 2], [4, 2, 0]], dtype=np.float32)
    v0 = np.exp(-np.array([0.0, 0.25]))
    v0 = (v0 / v0.sum()).astype(np.float16)
    v1 = np.exp(-np.array([0.5, 0.0]))
    v1 = (v1 / v1.sum()).astype(np.float16)
    sim = np.float16(np.minimum(v0[0], v1[0])) + np.float16(np.minimum(v0[1], v1[1]))
    jac01 = np.float16(1) - sim / (np.float16(2) - sim)
    expect = np.array([[np.float32(jac01 * np.float16(0.5)) + np.float32(0.25) * np.float32(0.5),
                        np.float32(np.float16(1) * np.float16(0.5)) + np.float32(1.0) * np.float32(0.5)]],
                      dtype=np.float32)
    got = rerank_sparse(Blocks(d), 1, 2, k1=1, k2=1, lambda_value=0.5)
    assert np.array_equal(got, expect)


def test_nan_and_inf_entries_propagate_as_in_dense():
    """A NaN distance poisons its column maximum (a whole D0 row of NaN, recomputed in full and ranked by a
    stable argsort: NaN last, index order); an inf one makes its D0 row 0 / NaN. Both must come out alike."""
    q, g = 15, 45
    d = _problem("features", q, g, seed=4)
    d[3, 7], d[20, 2] = np.nan, np.inf
    with np.errstate(invalid="ignore"):
        dense = k_reciprocal_rerank(d, q, k1=5, k2=3)
        stats = {}
        sparse = rerank_sparse(Blocks(d), q, g, k1=5, k2=3, row_chunk=8, col_chunk=9, stats=stats)
    assert np.isnan(dense).any() and stats["fallback_rows"] >= 2
    assert np.array_equal(sparse, dense, equal_nan=True)


def test_stitched_block_fn_builds_the_full_matrix_layout():
    """[[qq, qg], [qg^T, gg]] as qaconv.rerank.full_distance_matrix, from qg and a self-block callback only."""
    from common.rerank import stitched_block_fn
    from qaconv.rerank import full_distance_matrix

    rng = np.random.default_rng(9)
    q, g = 11, 29
    qq, qg, gg = (rng.random(s).astype(np.float32) for s in ((q, q), (q, g), (g, g)))  # qq, gg not symmetric
    full, _ = full_distance_matrix(qq, qg, gg)
    asked = []

    def self_block(rows, cols):
        asked.append((rows < q).all() == (cols < q).all() and ((rows < q).all() or (rows >= q).all()))
        return full[np.ix_(rows, cols)] if (rows < q).all() else gg[np.ix_(rows - q, cols - q)]

    fn = stitched_block_fn(qg, self_block)
    rows, cols = rng.permutation(q + g)[:17], rng.permutation(q + g)[:23]
    assert np.array_equal(fn(rows, cols), full[np.ix_(rows, cols)])
    assert asked and all(asked)  # never asked for a cross block
    assert np.array_equal(rerank_sparse(fn, q, g, k1=6, k2=3, row_chunk=8, col_chunk=16),
                          k_reciprocal_rerank(full, q, k1=6, k2=3))
