"""k-reciprocal re-ranking: dense ``qaconv.rerank`` against the sparse, selecting ``common.rerank``, as ratios.

Both re-rank the same feature-like problem (identity centroids plus noise, L2-normalised, ``--dim`` 2048) with
the squared Euclidean distance of ``common.eval.distance.compute_distmat``, k1=20, k2=6, lambda=0.3:

* dense: the full (q+g)^2 float32 matrix (``compute_distmat`` of all features against all), then
  ``qaconv.rerank.k_reciprocal_rerank``;
* sparse: ``common.rerank.rerank_features`` (distance blocks inside, never the (q+g)^2 matrix).

Each variant runs in a fresh subprocess of this run; the figures are its wall time (distances included) and its
peak RSS (``ru_maxrss``), also minus the RSS once the features exist. The two outputs are compared (max abs
difference, share of bit-equal entries; the distance blocks and the full matrix come from BLAS calls of different
shapes, so the inputs themselves may differ in the last bits).

    python benchmarks/bench_rerank.py                 # Market-1501 size x 0.25 (842 + 3,978), dense and sparse
    python benchmarks/bench_rerank.py --scale 1       # Market-1501 size: 3,368 + 15,913
    python benchmarks/bench_rerank.py --msmt          # MSMT17 size 11,659 + 82,161, sparse only
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_features(q: int, g: int, dim: int, seed: int = 0) -> np.ndarray:
    """(q + g, dim) float32 unit-norm features: ~ (q + g) / 8 identities, centroid + 0.6 x noise."""
    rng = np.random.default_rng(seed)
    n = q + g
    ids = rng.integers(0, max(1, n // 8), size=n)
    centroids = rng.standard_normal((max(1, n // 8), dim), dtype=np.float32)
    x = centroids[ids] + np.float32(0.6) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from common.eval.distance import compute_distmat
    from common.rerank import rerank_features
    from qaconv.rerank import k_reciprocal_rerank

    feats = make_features(args.q, args.g, args.dim)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    stats = {}
    if args.child == "dense":
        full = compute_distmat(feats, feats, metric="euclidean")
        t1 = time.perf_counter()
        out = k_reciprocal_rerank(full, args.q)
        del full
    else:
        t1 = t0
        out = rerank_features(feats[:args.q], feats[args.q:], stats=stats)
    t2 = time.perf_counter()
    if args.out:
        np.save(args.out, out)
    print(json.dumps(dict(variant=args.child, seconds=t2 - t0, dist_seconds=t1 - t0, peak_mb=peak_rss_mb(),
                          rss0_mb=rss0, **stats)))


def run_child(variant: str, q: int, g: int, args, out: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--q", str(q), "--g", str(g),
           "--dim", str(args.dim), "--threads", str(args.threads), "--out", out]
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
    ap.add_argument("--child", choices=("dense", "sparse"), help=argparse.SUPPRESS)
    ap.add_argument("--q", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--g", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    q, g = MSMT if args.msmt else (max(1, round(MARKET[0] * args.scale)), max(1, round(MARKET[1] * args.scale)))
    variants = ("sparse",) if args.msmt else ("dense", "sparse")
    print(f"k-reciprocal re-ranking, q={q:,} g={g:,} (N={q + g:,}), dim={args.dim}, threads={args.threads}, "
          f"k1=20 k2=6 lambda=0.3; each variant in a fresh subprocess")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            res[v] = run_child(v, q, g, args, os.path.join(tmp, f"{v}.npy"))
        rows = [("variant", "time (s)", "of which (q+g)^2 distances (s)", "peak RSS (MB)",
                 "peak - RSS with features (MB)")]
        for v in variants:
            r = res[v]
            rows.append((v, f"{r['seconds']:.1f}", f"{r['dist_seconds']:.1f}" if v == "dense" else "-",
                         f"{r['peak_mb']:.0f}", f"{r['peak_mb'] - r['rss0_mb']:.0f}"))
        if len(variants) == 2:
            d, s = res["dense"], res["sparse"]
            rows.append(("dense / sparse", f"{d['seconds'] / s['seconds']:.2f}x", "-",
                         f"{d['peak_mb'] / s['peak_mb']:.2f}x",
                         f"{(d['peak_mb'] - d['rss0_mb']) / max(1.0, s['peak_mb'] - s['rss0_mb']):.2f}x"))
            a, b = np.load(os.path.join(tmp, "dense.npy")), np.load(os.path.join(tmp, "sparse.npy"))
            diff = float(np.abs(a.astype(np.float64) - b).max())
            same = float(np.mean(a == b))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for i, r in enumerate(rows):
            print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
            if i == 0:
                print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        print(f"sparse: {res['sparse'].get('fallback_rows', 0)} rows recomputed in full (ties), "
              f"{res['sparse'].get('nnz_v', 0):,} non-zeros in V")
        if len(variants) == 2:
            print(f"output: max |dense - sparse| = {diff:.3g}, bit-equal entries {100 * same:.2f} %")


if __name__ == "__main__":
    main()
