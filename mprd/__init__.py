"""MPRD: unsupervised re-ID by cluster contrast with meta pairwise relationship distillation (Ji et al., ICCV 2021).

Re-implementation of jihaoxuanye/MetaPRD (the README's "improved version") on the shared core; spec in
``../shared/design/mprd.md``. Entry points: ``mprd/main.py`` (training / evaluation) and ``mprd/gcn_pretrain.py``
(GCN meta-data generation and pre-training).
"""
