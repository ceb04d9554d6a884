"""k-reciprocal re-ranking: dense ``qaconv.rerank`` against the sparse, selecting ``common.rerank``, as ratios.

Both re-rank the same feature-like problem (identity centroids plus noise, L2-normalised, ``--dim`` 2048) with
the squared Euclidean distance of ``common.eval.distance.compute_distmat``, k1=20, k2=6, lambda=0.3:

* dense: the full (q+g)^2 float32 matrix (``compute_distmat`` of all features against all), then
  ``qaconv.rerank.k_reciprocal_rerank``;
* sparse: ``common.rerank.rerank_features`` (distance blocks inside, never the (q+g)^2 matrix).

``--input distances`` gives every variant the three distance matrices (q x g, q x q, g x g) that torchreid's
``re_ranking(q_g_dist, q_q_dist, g_g_dist)`` takes, computed before the clock starts, and adds that dense,
sorting re-ranking (``benchmarks/ref_rerank_torchreid.py``, torchreid's steps re-written here) as the reference:

* torchreid: the stand-in for ``torchreid.utils.rerank.re_ranking`` (full argsort, dense float32 V and V_qe);
* dense: ``qaconv.rerank.full_distance_matrix`` then ``k_reciprocal_rerank``;
* sparse: ``common.rerank.rerank_sparse`` over ``stitched_block_fn`` blocks of the given matrices.

Each variant runs in a fresh subprocess of this run; the figures are its wall time (distances included) and its
peak RSS (VmHWM, restarted once the inputs exist, so that building them does not count), also minus the RSS then. The two outputs are compared (max abs
difference, share of bit-equal entries; the distance blocks and the full matrix come from BLAS calls of different
shapes, so the inputs themselves may differ in the last bits).

    python benchmarks/bench_rerank.py                 # Market-1501 size x 0.25 (842 + 3,978), dense and sparse
    python benchmarks/bench_rerank.py --scale 1       # Market-1501 size: 3,368 + 15,913
    python benchmarks/bench_rerank.py --msmt          # MSMT17 size 11,659 + 82,161, sparse only
    python benchmarks/bench_rerank.py --scale 1 --input distances   # against torchreid's re-ranking, same run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

MARKET = (3368, 15913)
MSMT = (11659, 82161)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    """Peak RSS since the last :func:`reset_peak` (VmHWM), else since the process started (ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Restart the peak-RSS count at the current RSS (Linux: ``5`` into /proc/self/clear_refs); False if unable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_features(q: int, g: int, dim: int, seed: int = 0) -> np.ndarray:
    """(q + g, dim) float32 unit-norm features: ~ (q + g) / 8 identities, centroid + 0.6 x noise."""
    rng = np.random.default_rng(seed)
    n = q + g
    ids = rng.integers(0, max(1, n // 8), size=n)
    centroids = rng.standard_normal((max(1, n // 8), dim), dtype=np.float32)
    x = centroids[ids] + np.float32(0.6) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _given_distances(feats: np.ndarray, q: int):
    """(q_g, q_q, g_g) float32 squared Euclidean distances, as a torchreid user passes them."""
    from common.eval.distance import compute_distmat
    qf, gf = feats[:q], feats[q:]
    return tuple(np.asarray(compute_distmat(a, b, metric="euclidean"), dtype=np.float32)
                 for a, b in ((qf, gf), (qf, qf), (gf, gf)))


def _slices(idx: np.ndarray):
    """A contiguous index array as a slice (a view), else the array."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from common.eval.distance import compute_distmat
    from common.rerank import rerank_features, rerank_sparse, stitched_block_fn
    from qaconv.rerank import full_distance_matrix, k_reciprocal_rerank

    feats = make_features(args.q, args.g, args.dim)
    given = _given_distances(feats, args.q) if args.input == "distances" else None
    rss0 = rss_mb()
    reset = reset_peak()  # the peak of building the inputs is not the variant's
    t0 = time.perf_counter()
    t1 = t0
    stats = {}
    if given is not None:
        qg, qq, gg = given
        if args.child == "torchreid":
            from benchmarks.ref_rerank_torchreid import torchreid_style_rerank
            out = torchreid_style_rerank(qg, qq, gg)
        elif args.child == "dense":
            full, _ = full_distance_matrix(qq, qg, gg)
            out = k_reciprocal_rerank(full, args.q)
            del full
        else:
            q = args.q

            def self_block(rows, cols):
                src, off = (qq, 0) if rows[0] < q else (gg, q)
                r, c = _slices(rows - off), _slices(cols - off)
                return src[r, c] if isinstance(r, slice) or isinstance(c, slice) else src[np.ix_(r, c)]

            out = rerank_sparse(stitched_block_fn(qg, self_block), q, args.g, stats=stats)
    elif args.child == "dense":
        full = compute_distmat(feats, feats, metric="euclidean")
        t1 = time.perf_counter()
        out = k_reciprocal_rerank(full, args.q)
        del full
    else:
        out = rerank_features(feats[:args.q], feats[args.q:], stats=stats)
    t2 = time.perf_counter()
    if args.out:
        np.save(args.out, out)
    print(json.dumps(dict(variant=args.child, seconds=t2 - t0, dist_seconds=t1 - t0, peak_mb=peak_rss_mb(),
                          rss0_mb=rss0, peak_reset=reset, **stats)))


def run_child(variant: str, q: int, g: int, args, out: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--q", str(q), "--g", str(g),
           "--dim", str(args.dim), "--threads", str(args.threads), "--input", args.input, "--out", out]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{variant} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.25, help="fraction of Market-1501's 3,368 + 15,913 (0.25)")
    ap.add_argument("--msmt", action="store_true", help="MSMT17 size 11,659 + 82,161, sparse only")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--input", choices=("features", "distances"), default="features",
                    help="features: distances computed inside each variant (timed); distances: the three "
                         "matrices given (not timed), with torchreid's re-ranking as the reference")
    ap.add_argument("--child", choices=("torchreid", "dense", "sparse"), help=argparse.SUPPRESS)
    ap.add_argument("--q", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--g", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    q, g = MSMT if args.msmt else (max(1, round(MARKET[0] * args.scale)), max(1, round(MARKET[1] * args.scale)))
    if args.msmt:
        variants = ("sparse",)
    else:
        variants = ("torchreid", "dense", "sparse") if args.input == "distances" else ("dense", "sparse")
    given = "the three distance matrices given (not timed)" if args.input == "distances" else \
        "distances computed inside (timed)"
    print(f"k-reciprocal re-ranking, q={q:,} g={g:,} (N={q + g:,}), dim={args.dim}, threads={args.threads}, "
          f"k1=20 k2=6 lambda=0.3; {given}; each variant in a fresh subprocess")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            res[v] = run_child(v, q, g, args, os.path.join(tmp, f"{v}.npy"))
        base = "inputs" if args.input == "distances" else "features"
        rows = [("variant", "time (s)", "of which (q+g)^2 distances (s)", "peak RSS (MB)",
                 f"peak - RSS with {base} (MB)")]
        for v in variants:
            r = res[v]
            timed_dist = v == "dense" and args.input == "features"
            rows.append((v, f"{r['seconds']:.1f}", f"{r['dist_seconds']:.1f}" if timed_dist else "-",
                         f"{r['peak_mb']:.0f}", f"{r['peak_mb'] - r['rss0_mb']:.0f}"))
        for ref in [v for v in variants if v != "sparse"]:
            d, s = res[ref], res["sparse"]
            rows.append((f"{ref} / sparse", f"{d['seconds'] / s['seconds']:.2f}x", "-",
                         f"{d['peak_mb'] / s['peak_mb']:.2f}x",
                         f"{(d['peak_mb'] - d['rss0_mb']) / max(1.0, s['peak_mb'] - s['rss0_mb']):.2f}x"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for i, r in enumerate(rows):
            print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
            if i == 0:
                print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        print(f"sparse: {res['sparse'].get('fallback_rows', 0)} rows recomputed in full (ties), "
              f"{res['sparse'].get('nnz_v', 0):,} non-zeros in V")
        b = np.load(os.path.join(tmp, "sparse.npy"))
        if "dense" in res:
            a = np.load(os.path.join(tmp, "dense.npy"))
            diff = float(np.abs(a.astype(np.float64) - b).max())
            print(f"output: max |dense - sparse| = {diff:.3g}, bit-equal entries {100 * float(np.mean(a == b)):.2f} %")
        if "torchreid" in res:  # other arithmetic (squared input, float32 V): compare the rankings
            t = np.load(os.path.join(tmp, "torchreid.npy"))
            top1 = float(np.mean(np.argmin(t, 1) == np.argmin(b, 1)))
            k = min(10, g)
            tk, bk = np.argsort(t, 1)[:, :k], np.argsort(b, 1)[:, :k]
            overlap = float(np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(tk, bk)]))
            print(f"torchreid vs sparse rankings: same top-1 for {100 * top1:.1f} % of queries, "
                  f"top-{k} overlap {100 * overlap:.1f} %")


if __name__ == "__main__":
    main()
