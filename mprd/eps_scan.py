"""Choose DBSCAN's eps for a dataset from the distribution of Jaccard distances (not part of the original).

    python mprd/eps_scan.py -d synthetic -a resnet18 --init-weights WARM.pth --height 64 --width 32

Extracts the features of the (unlabelled, sorted) training images with the start model, computes the full sparse
k-reciprocal Jaccard distance (``--k1``, ``--k2``), and logs

* percentiles of the pairwise Jaccard distances of each image's ``--k1`` nearest neighbours and of the DBSCAN core
  distances (each image's ``--min-samples``-th smallest distance, itself included: the smallest eps that makes it a
  core point);
* the suggestion ``eps = 75th percentile of the core distances, rounded to 0.05`` (three quarters of the images
  are core points; the rule uses no identities);
* for each eps of ``--eps-grid``: clusters, outliers and, as a diagnostic only, NMI / ARI against the hidden
  identities (never used for the suggestion).

The paper's per-dataset eps (Market 0.4, Duke 0.6, MSMT17 0.7) stay the defaults of ``mprd/main.py``; this tool is
how the synthetic-only eps of the CPU verification was picked.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common.errors import run_main  # noqa: E402
from common.run import setup_run  # noqa: E402


def get_parser():
    from mprd.main import get_parser as mprd_parser
    p = argparse.ArgumentParser("mprd-eps-scan", parents=[mprd_parser()], add_help=False, conflict_handler="resolve",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps-grid", dest="eps_grid", default="0.3,0.4,0.5,0.55,0.6,0.65,0.7",
                   help="comma list of eps values to cluster with")
    return p


def scan(feats, hidden, eps_grid, k1=30, k2=6, min_samples=4, log=print):
    """Returns ``{'suggested_eps', 'core': percentiles, 'knn': percentiles, 'grid': [{eps, clusters, ...}]}``."""
    from mprd.cluster import cluster_quality, core_distances, dbscan, distance_summary, idx_to_labels, jaccard
    dist = jaccard(feats, k1, k2)
    core = core_distances(dist, min_samples)
    dense_rows = [np.sort(dist.data[dist.indptr[i]:dist.indptr[i + 1]])[1:k1 + 1] for i in range(dist.shape[0])]
    knn = np.concatenate(dense_rows) if dense_rows else np.zeros(0)
    qs = (5, 10, 25, 50, 75, 90, 95)
    core_q, knn_q = distance_summary(core, qs), distance_summary(knn, qs)
    out = {"core": {q: core_q[f"core_p{q}"] for q in qs}, "knn": {q: knn_q[f"core_p{q}"] for q in qs}, "grid": []}
    log("Jaccard distance percentiles " + " ".join(f"p{q}" for q in qs))
    log("  to the k1 nearest: " + " ".join(f"{out['knn'][q]:.3f}" for q in qs))
    log(f"  core (min samples {min_samples}): " + " ".join(f"{out['core'][q]:.3f}" for q in qs))
    out["suggested_eps"] = round(out["core"][75] * 20) / 20
    log(f"suggested eps (75th percentile of the core distances, to 0.05): {out['suggested_eps']:.2f}")
    for eps in eps_grid:
        labels, k = idx_to_labels(dbscan(dist, eps, min_samples))
        q = cluster_quality(labels, k, hidden)
        q["eps"] = eps
        out["grid"].append(q)
        log(f"eps {eps:.2f}: {q['clusters']} clusters, {q['outliers']} outliers, NMI {q['nmi']:.3f} "
            f"ARI {q['ari']:.3f} (diagnostic)")
    return out


def main(argv=None):
    from mprd.main import resolve
    from mprd import engine
    from mprd.evaluate import extract
    from mprd.ddp import one_process_only
    one_process_only("mprd/eps_scan.py")
    args = resolve(get_parser().parse_args(argv))
    grid = [float(x) for x in args.eps_grid.split(",") if x.strip()]
    run = setup_run(args, "mprd_eps")
    dataset = engine.load_dataset(args)
    train, hidden = engine.unlabelled_train(dataset)
    model = engine.build_model(args).to(run.device).eval()
    feats = extract(model, train, args, run.device, "train features")
    out = scan(feats, hidden, grid, args.k1, args.k2, args.min_samples, log=run.log)
    run.write_results("eps_scan", {"suggested_eps": out["suggested_eps"],
                                   "core": {str(k): v for k, v in out["core"].items()},
                                   "knn": {str(k): v for k, v in out["knn"].items()}, "grid": out["grid"]})
    run.close()
    return out


if __name__ == "__main__":
    run_main(main)
