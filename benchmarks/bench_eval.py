"""Time ``evaluate_rank`` with the Cython and NumPy backends on Market-1501- and MSMT17-sized problems.

Synthetic, feature-like distance matrices (squared Euclidean distances between noisy identity centres with a
camera bias, some distractors with pid 0) are built with a fixed seed; both backends evaluate the same
matrix, and the figures they report must agree exactly.

Usage:
    python benchmarks/bench_eval.py [--sizes market,msmt] [--max-queries N] [--repeat R] [--protocol market]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.eval.rank import IS_CYTHON_AVAILABLE, evaluate_rank, ranked_chunks  # noqa: E402

SIZES = {
    "market": dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6),
    "msmt": dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15),
}


def make_problem(num_query, num_gallery, num_ids, num_cams, max_queries=None, seed=0, dim=64,
                 distractor_frac=0.1):
    """Synthetic re-ID problem.

    Args:
        num_query, num_gallery, num_ids, num_cams (int): problem size.
        max_queries (int, optional): keep only the first N queries (the distance rows are only computed for them).
        seed (int): generator seed.
        dim (int): feature dimension.
        distractor_frac (float): fraction of gallery images that are distractors (pid 0, random features).

    Returns:
        distmat (n, num_gallery) float32, q_pids (n,), g_pids (num_gallery,), q_camids (n,), g_camids
        (num_gallery,) int64 arrays, n = min(num_query, max_queries).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids + 1, dim)).astype(np.float32)
    cam_bias = 0.5 * rng.standard_normal((num_cams, dim)).astype(np.float32)
    g_pids = rng.integers(1, num_ids + 1, num_gallery)
    g_pids[rng.random(num_gallery) < distractor_frac] = 0
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_cams, q_cams = rng.integers(0, num_cams, num_gallery), rng.integers(0, num_cams, num_query)
    n = num_query if max_queries is None else min(num_query, max_queries)
    q_pids, q_cams = q_pids[:n], q_cams[:n]

    def features(pids, cams):
        f = centres[pids] + cam_bias[cams] + 0.8 * rng.standard_normal((pids.size, dim)).astype(np.float32)
        f[pids == 0] = 1.5 * rng.standard_normal((int((pids == 0).sum()), dim))
        return f

    qf, gf = features(q_pids, q_cams), features(g_pids, g_cams)
    gf_t, g_sq = np.ascontiguousarray(gf.T), (gf * gf).sum(axis=1)
    distmat = np.empty((n, num_gallery), dtype=np.float32)
    for s in range(0, n, 512):  # in place, chunk by chunk: no full-size temporaries
        block = distmat[s:s + 512]
        np.matmul(qf[s:s + 512], gf_t, out=block)
        block *= -2.0
        block += (qf[s:s + 512] ** 2).sum(axis=1)[:, None]
        block += g_sq[None, :]
    return distmat, q_pids, g_pids, q_cams, g_cams


def timed(fn, repeat):
    """Best wall time over ``repeat`` calls and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def agree(a, b):
    """'exact' when every figure is bit-identical, else the largest absolute difference."""
    if a is None or b is None:
        return "n/a"
    keys = ("mAP", "mINP", "num_valid_query", "num_skipped_query")
    if np.array_equal(a["cmc"], b["cmc"]) and all(a[k] == b[k] for k in keys):
        return "exact"
    diff = max(np.abs(a["cmc"] - b["cmc"]).max(), abs(a["mAP"] - b["mAP"]), abs(a["mINP"] - b["mINP"]))
    return f"NO ({diff:.2e})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="market,msmt", help="comma-separated subset of " + ",".join(SIZES))
    parser.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N queries")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per backend (best is kept)")
    parser.add_argument("--protocol", choices=("market", "cuhk03"), default="market")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not IS_CYTHON_AVAILABLE:
        print("Cython evaluator not built (make eval_cylib): timing the NumPy backend only.")
    rows, failed = [], False
    for name in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        if name not in SIZES:
            parser.error(f"unknown size {name!r}; choose from {sorted(SIZES)}")
        t0 = time.perf_counter()
        problem = make_problem(**SIZES[name], max_queries=args.max_queries, seed=args.seed)
        print(f"[{name}] built {problem[0].shape[0]} x {problem[0].shape[1]} distmat "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        kw = dict(max_rank=50, use_metric_cuhk03=args.protocol == "cuhk03")
        t_np, r_np = timed(lambda: evaluate_rank(*problem, use_cython=False, **kw), args.repeat)
        t_cy, r_cy = (timed(lambda: evaluate_rank(*problem, use_cython=True, **kw), args.repeat)
                      if IS_CYTHON_AVAILABLE else (float("nan"), None))
        # the NumPy backend's chunked stable argsort alone, timed after the backends (warm caches)
        t_sort, _ = timed(lambda: sum(o.shape[0] for _, o in ranked_chunks(problem[0])), args.repeat)
        verdict = agree(r_np, r_cy)
        failed |= verdict.startswith("NO")
        rows.append((name, problem[0].shape, t_sort, t_np, t_cy, r_np, verdict))
        print(f"[{name}] sort {t_sort:.2f} s, numpy {t_np:.2f} s, cython {t_cy:.2f} s", flush=True)
    head = (f"{'size':<7} {'queries x gallery':>17} {'numpy s':>8} {'(sort s)':>9} {'cython s':>9} "
            f"{'speed-up':>9} {'R1':>6} {'mAP':>6} {'mINP':>6}  agree")
    print(f"\nprotocol: {args.protocol}; best of {args.repeat}; speed-up = numpy s / cython s; (sort s) = the "
          "NumPy backend's chunked stable argsort alone (the Cython backend does not sort)\n"
          + head + "\n" + "-" * len(head))
    for name, shape, t_sort, t_np, t_cy, res, verdict in rows:
        print(f"{name:<7} {shape[0]:>7} x {shape[1]:<7} {t_np:>8.2f} {t_sort:>9.2f} {t_cy:>9.2f} "
              f"{t_np / t_cy:>8.1f}x {100 * res['rank1']:>6.2f} {100 * res['mAP']:>6.2f} {100 * res['mINP']:>6.2f}"
              f"  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
