"""Time ``evaluate_rank`` (Cython and NumPy) on feature-like and uniform distances, as ratios in one run.

Two kinds of distance matrix share the same seeded identities and cameras (Market-1501- and MSMT17-sized):
*feature-like* distances (squared Euclidean distances between noisy identity centres with a camera bias, some
distractors with pid 0; a good model), and i.i.d. *uniform* distances in [0, 1) (a weak ranking, as a
cross-domain model gives: nearly the whole gallery ranks before a query's last true match). The timed runs
are interleaved (for each repeat: every distance kind, then every backend) and the median is reported, so
the ratios compare runs made under the same load. Both backends must report bit-identical figures.

Each cell has the wall time and the process CPU time (``time.process_time``); on a shared machine the CPU
time is the steadier of the two, as the wall time also counts the time other processes hold the cores.
Reported ratios (from both): NumPy / Cython for each matrix, and uniform / feature-like for each backend. The
last column times a chunked stable argsort of every row alone (``ranked_chunks``: what the NumPy backend did
before it stopped sorting), once, after the backends (wall time).

Usage:
    python benchmarks/bench_eval.py [--sizes market,msmt] [--max-queries N] [--repeat R] [--protocol market]
        [--distances feature,uniform] [--no-argsort]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.eval.rank import IS_CYTHON_AVAILABLE, evaluate_rank, ranked_chunks  # noqa: E402

SIZES = {
    "market": dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6),
    "msmt": dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15),
}
DISTANCES = ("feature", "uniform")


def make_problem(num_query, num_gallery, num_ids, num_cams, max_queries=None, seed=0, dim=64,
                 distractor_frac=0.1):
    """Synthetic re-ID problem with feature-like distances.

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


def uniform_distances(shape, seed=0):
    """(num_query, num_gallery) float32 i.i.d. uniform [0, 1) distances (a weak ranking)."""
    rng = np.random.default_rng(seed + 1)
    out = np.empty(shape, dtype=np.float32)
    for s in range(0, shape[0], 512):
        rng.random(out=out[s:s + 512], dtype=np.float32)
    return out


def agree(a, b):
    """'exact' when every figure is bit-identical, else the largest absolute difference."""
    if a is None or b is None:
        return "n/a"
    keys = ("mAP", "mINP", "num_valid_query", "num_skipped_query")
    if np.array_equal(a["cmc"], b["cmc"]) and all(a[k] == b[k] for k in keys):
        return "exact"
    diff = max(np.abs(a["cmc"] - b["cmc"]).max(), abs(a["mAP"] - b["mAP"]), abs(a["mINP"] - b["mINP"]))
    return f"NO ({diff:.2e})"


def time_interleaved(matrices, ids, backends, repeat, **kw):
    """Median wall and CPU times of every (distance kind, backend) pair over ``repeat`` interleaved rounds.

    Returns:
        times {(kind, backend): (wall s, cpu s)}, results {(kind, backend): evaluate_rank output}.
    """
    samples, results = {}, {}
    for _ in range(repeat):
        for kind, distmat in matrices.items():
            for backend in backends:
                t0, c0 = time.perf_counter(), time.process_time()
                results[kind, backend] = evaluate_rank(distmat, *ids, use_cython=backend == "cython", **kw)
                samples.setdefault((kind, backend), []).append((time.perf_counter() - t0, time.process_time() - c0))
    return {k: tuple(statistics.median(x) for x in zip(*v)) for k, v in samples.items()}, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="market,msmt", help="comma-separated subset of " + ",".join(SIZES))
    parser.add_argument("--distances", default=",".join(DISTANCES), help="comma-separated subset of "
                        + ",".join(DISTANCES))
    parser.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N queries")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved timed rounds (the median is kept)")
    parser.add_argument("--protocol", choices=("market", "cuhk03"), default="market")
    parser.add_argument("--no-argsort", action="store_true", help="skip timing the stable argsort alone")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.distances.split(",") if k.strip()]
    if not kinds or any(k not in DISTANCES for k in kinds):
        parser.error(f"--distances: choose from {DISTANCES}")
    backends = ("cython", "numpy") if IS_CYTHON_AVAILABLE else ("numpy",)
    if not IS_CYTHON_AVAILABLE:
        print("Cython evaluator not built (make eval_cylib): timing the NumPy backend only.")
    rows, failed = [], False
    for name in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        if name not in SIZES:
            parser.error(f"unknown size {name!r}; choose from {sorted(SIZES)}")
        t0 = time.perf_counter()
        distmat, *ids = make_problem(**SIZES[name], max_queries=args.max_queries, seed=args.seed)
        matrices = {"feature": distmat, "uniform": uniform_distances(distmat.shape, args.seed)}
        matrices = {k: matrices[k] for k in kinds}
        print(f"[{name}] built {len(matrices)} x {distmat.shape[0]} x {distmat.shape[1]} distance matrices "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        kw = dict(max_rank=50, use_metric_cuhk03=args.protocol == "cuhk03")
        times, results = time_interleaved(matrices, ids, backends, args.repeat, **kw)
        for kind, mat in matrices.items():
            t_sort = float("nan")
            if not args.no_argsort:
                t0 = time.perf_counter()
                sum(o.shape[0] for _, o in ranked_chunks(mat))
                t_sort = time.perf_counter() - t0
            verdict = agree(results[kind, "numpy"], results.get((kind, "cython")))
            failed |= verdict.startswith("NO")
            t_np, t_cy = times[kind, "numpy"], times.get((kind, "cython"), (float("nan"),) * 2)
            rows.append((name, kind, mat.shape, t_np, t_cy, t_sort, results[kind, "numpy"], verdict))
            print(f"[{name}/{kind}] wall / cpu s: numpy {t_np[0]:.3f} / {t_np[1]:.3f}, cython {t_cy[0]:.3f} / "
                  f"{t_cy[1]:.3f}, argsort {t_sort:.2f}", flush=True)
    head = (f"{'size':<7} {'distances':<9} {'queries x gallery':>17} {'cython s':>15} {'numpy s':>15} "
            f"{'numpy/cython':>13} {'argsort s':>9} {'R1':>6} {'mAP':>6} {'mINP':>6}  agree")
    print(f"\nprotocol: {args.protocol}; median of {args.repeat} interleaved rounds; times and ratios as wall / cpu; "
          "argsort s = a chunked stable argsort of every row alone (once, wall)\n" + head + "\n" + "-" * len(head))
    for name, kind, shape, t_np, t_cy, t_sort, res, verdict in rows:
        print(f"{name:<7} {kind:<9} {shape[0]:>7} x {shape[1]:<7} {t_cy[0]:>7.3f} / {t_cy[1]:<5.3f} "
              f"{t_np[0]:>7.3f} / {t_np[1]:<5.3f} {f'{t_np[0] / t_cy[0]:.1f}x / {t_np[1] / t_cy[1]:.1f}x':>13} "
              f"{t_sort:>9.2f} {100 * res['rank1']:>6.2f} {100 * res['mAP']:>6.2f} {100 * res['mINP']:>6.2f}  "
              f"{verdict}")
    by = {(r[0], r[1]): r for r in rows}
    for name in dict.fromkeys(r[0] for r in rows):
        if (name, "feature") in by and (name, "uniform") in by:
            f, u = by[name, "feature"], by[name, "uniform"]
            print(f"{name}: uniform / feature-like time (wall / cpu): cython {u[4][0] / f[4][0]:.2f}x / "
                  f"{u[4][1] / f[4][1]:.2f}x, numpy {u[3][0] / f[3][0]:.2f}x / {u[3][1] / f[3][1]:.2f}x")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
