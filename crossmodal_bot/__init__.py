"""Bag-of-Tricks strong baseline for person re-ID and its RGB-infrared (SYSU-MM01) extension.

Modules:
    model: ResNet backbone with last stride 1, global average pooling and the BNNeck (:class:`Baseline`).
    loss: label-smoothing cross-entropy, batch-hard triplet, center loss and their combination.
    solver: per-parameter Adam/SGD groups and the epoch-based warm-up multi-step schedule.
    sampler: P x K identity sampler drawing half of each identity's images from RGB and half from IR cameras.
    evaluate_sysu: the SYSU-MM01 cross-modality protocol (gallery sampling, camera-3/camera-2 rule, 10 trials).

Reference:
    Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification", CVPR-W 2019.
    Wu et al., "RGB-Infrared Cross-Modality Person Re-Identification", ICCV 2017 (SYSU-MM01).
"""
