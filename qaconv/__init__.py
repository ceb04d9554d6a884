"""QAConv: query-adaptive convolution and temporal lifting (Liao & Shao, ECCV 2020), and graph-sampling based
metric learning, QAConv 2.0 / 2.1 (Liao & Shao, CVPR 2022).

Entry points:
    main: QAConv 1.0 / 1.1 / 1.2, class-memory training (``python qaconv/main.py``).
    main_gs: QAConv 2.0 / 2.1, graph sampler with pairwise-matching or batch-hard triplet loss
        (``python qaconv/main_gs.py``).

Modules:
    backbone, model: ResNet / IBN-Net feature maps (``ResMap``), optimizer groups, original-checkpoint reader.
    qaconv: the matcher (``QAConv``). loss: class memory, pairwise matching and triplet losses.
    graph_sampler: the GS sampler. trainer: epoch loop, schedules, pre-training trials. transforms: augmentation.
    evaluate: chunked test-time matching and metrics. rerank: k-reciprocal re-ranking. tlift: temporal lifting.
    visualize: local correspondence pictures. config: flags and per-release presets. engine: the flows.
"""
