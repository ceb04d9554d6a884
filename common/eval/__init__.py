"""Shared evaluation: torchreid-style ranking metrics (``rank``) and open-reid style CMC / mAP (``cmc``).

Only light modules are re-exported here (NumPy; scikit-learn is imported lazily by ``cmc.mean_ap``); import
the other submodules (features, distances, visualisation, histograms, report) directly.
"""
from common.eval.cmc import CMC_CONFIGS, cmc, mean_ap  # noqa: F401
from common.eval.rank import (  # noqa: F401
    IS_CYTHON_AVAILABLE,
    cuhk03_draws,
    eval_cuhk03_numpy,
    eval_market1501_numpy,
    evaluate_rank,
    format_results,
    similarity_to_distance,
    single_query_metrics,
)
