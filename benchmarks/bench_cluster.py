"""The MPRD clustering stage, features -> k-reciprocal Jaccard -> DBSCAN, at Market-1501 / MSMT17 training size:
``common.neighbors`` (chunked exact k-NN + sparse Jaccard, O(N k) memory) against a dense NumPy reference written
the way SpCL / cluster-contrast do it (N x N distance, full argsort, dense V, inverted-index Jaccard, dense DBSCAN).

Features: seeded unit-norm "identity" features (``--ids`` centres, images spread over them with noise), so the
neighbour structure resembles trained re-ID features. k1 = 30, k2 = 6, eps per ``--eps`` (Market 0.4), min
samples 4. Each variant runs in a fresh child process; peak memory is its peak resident set (``ru_maxrss``)
minus its resident set after the features are made. Reported: seconds per stage, peak MiB, clusters, outliers,
and whether both variants give the same DBSCAN labels. The dense reference runs only where its estimated memory
(about 5 N^2 x 4 bytes) fits in ``--dense-max-gib``.

Usage:
    python benchmarks/bench_cluster.py [--size market|msmt|N] [--dim 2048] [--device auto] [--dense-max-gib 8] [--prune]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = {"market": (12936, 751), "msmt": (32621, 1041)}


def make_features(n: int, ids: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    centres = rng.randn(ids, dim).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = rng.randint(ids, size=n)
    noise = rng.randn(n, dim).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x = centres[owner] + rng.uniform(0.6, 1.3, size=(n, 1)).astype(np.float32) * noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sparse(x, k1, k2, eps, device, max_dist=None):
    import torch
    from sklearn.cluster import DBSCAN
    from common.neighbors import feature_distance, jaccard_distance, knn, kreciprocal_encoding, query_expansion
    t = {}
    s = time.time()
    block, pair = feature_distance(torch.from_numpy(x), "euclidean", device)
    rank, _ = knn(len(x), len(x), k1, block, device=device)
    t["knn"] = time.time() - s
    s = time.time()
    v = query_expansion(kreciprocal_encoding(rank, pair, k1), rank, k2)
    d = jaccard_distance(v, max_dist=max_dist)
    t["jaccard"] = time.time() - s
    s = time.time()
    labels = DBSCAN(eps=eps, min_samples=4, metric="precomputed", n_jobs=-1).fit_predict(d)
    t["dbscan"] = time.time() - s
    return t, labels, {"stored_pairs": int(d.nnz)}


def run_dense(x, k1, k2, eps, device):
    """SpCL-style dense reference (faiss replaced by a full argsort of the N x N distances)."""
    from sklearn.cluster import DBSCAN
    t = {}
    s = time.time()
    n = len(x)
    dist = 2.0 - 2.0 * (x @ x.T)                                         # N x N
    rank = np.argsort(dist, axis=1, kind="stable")[:, :k1]
    t["knn"] = time.time() - s
    s = time.time()
    half = int(np.around(k1 / 2))
    V = np.zeros((n, n), dtype=np.float32)

    def recip(i, w):
        fwd = rank[i, :w + 1]
        return fwd[np.nonzero((rank[fwd, :w + 1] == i).any(1))[0]]
    for i in range(n):
        r = recip(i, k1)
        exp = r
        for c in r:
            rc = recip(c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                exp = np.append(exp, rc)
        exp = np.unique(exp)
        w = np.exp(-dist[i, exp])
        V[i, exp] = w / w.sum()
    del dist
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)]).astype(np.float32)
    inv = [np.nonzero(V[:, j])[0] for j in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        tmin = np.zeros(n, dtype=np.float32)
        nz = np.nonzero(V[i])[0]
        for j in nz:
            tmin[inv[j]] += np.minimum(V[i, j], V[inv[j], j])
        jac[i] = 1 - tmin / (2 - tmin)
    jac[jac < 0] = 0
    del V
    t["jaccard"] = time.time() - s
    s = time.time()
    labels = DBSCAN(eps=eps, min_samples=4, metric="precomputed", n_jobs=-1).fit_predict(jac)
    t["dbscan"] = time.time() - s
    return t, labels, {}


def child(variant, n, ids, dim, k1, k2, eps, device, out_path, max_dist=None):
    import torch  # noqa: F401  (imports first, so the figure is the stage's own memory)
    import sklearn.cluster  # noqa: F401
    import common.neighbors  # noqa: F401
    x = make_features(n, ids, dim)
    base = rss_mib()
    if variant == "sparse":
        times, labels, extra = run_sparse(x, k1, k2, eps, device, max_dist)
    else:
        times, labels, extra = run_dense(x, k1, k2, eps, device)
    np.save(out_path + ".npy", labels)
    with open(out_path, "w") as f:
        json.dump({"times": times, "peak_mib": peak_mib() - base, "clusters": int(len(set(labels) - {-1})),
                   "outliers": int((labels == -1).sum()), **extra}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="market", help="market (12,936), msmt (32,621) or a number of images")
    ap.add_argument("--ids", type=int, default=0, help="identities (default: the benchmark's)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--k1", type=int, default=30)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--eps", type=float, default=0.4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prune", action="store_true",
                    help="sparse variant stores only pairs within eps (jaccard_distance(max_dist=eps), as mprd does)")
    ap.add_argument("--dense-max-gib", dest="dense_max_gib", type=float, default=8.0)
    ap.add_argument("--out", default="/tmp/bench_cluster")
    args = ap.parse_args()
    n, ids = SIZES.get(args.size, (int(args.size) if args.size.isdigit() else 0, 0))
    ids = args.ids or ids or max(n // 17, 2)
    import torch
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    print(f"clustering stage: N={n:,} x {args.dim}, {ids} ids, k1={args.k1} k2={args.k2} eps={args.eps}, "
          f"device {device}, torch threads {torch.get_num_threads()}")
    variants = ["sparse"] + (["dense"] if 5 * n * n * 4 / 2 ** 30 <= args.dense_max_gib else [])
    results = {}
    ctx = mp.get_context("spawn")
    for v in variants:
        path = f"{args.out}_{v}_{n}.json"
        p = ctx.Process(target=child, args=(v, n, ids, args.dim, args.k1, args.k2, args.eps, device, path,
                                                  args.eps if args.prune else None))
        p.start()
        p.join()
        with open(path) as f:
            results[v] = json.load(f)
        r = results[v]
        print(f"{v:>6}: total {sum(r['times'].values()):7.1f} s  (" +
              ", ".join(f"{k} {s:.1f}" for k, s in r["times"].items()) +
              f")  peak {r['peak_mib']:8.0f} MiB  clusters {r['clusters']}  outliers {r['outliers']}" +
              (f"  stored pairs {r['stored_pairs']:,}" if "stored_pairs" in r else ""))
    if "dense" not in results:
        print(f"dense reference skipped: about {5 * n * n * 4 / 2 ** 30:.1f} GiB > --dense-max-gib {args.dense_max_gib}")
    else:
        a, b = np.load(f"{args.out}_sparse_{n}.json.npy"), np.load(f"{args.out}_dense_{n}.json.npy")
        ts, td = sum(results["sparse"]["times"].values()), sum(results["dense"]["times"].values())
        print(f"same DBSCAN labels: {bool((a == b).all())}  ({int((a != b).sum())} differ); "
              f"speed-up {td / ts:.1f}x; memory ratio {results['dense']['peak_mib'] / max(results['sparse']['peak_mib'], 1):.1f}x")


if __name__ == "__main__":
    main()
