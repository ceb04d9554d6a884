"""The BoT network: ImageNet ResNet with last stride 1, global average pooling and the BNNeck.

Train mode returns ``(logits, f_t)``: the classifier scores computed on the BNNeck output ``f_i`` and the pooled
feature ``f_t`` before the neck (for the triplet loss). Eval mode returns the test feature, ``f_i``
(``neck_feat='after'``) or ``f_t`` (``'before'``), *not* normalised: the L2 normalisation of the original's
``TEST.FEAT_NORM = 'yes'`` is done by the evaluation code.

Reference:
    Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification", CVPR-W 2019, Sec. 3-4.
    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
"""
from __future__ import annotations

import torch
from torch import nn
import torchvision

from common.weights import PretrainedWeightsNotFound, find_weights, load_backbone_weights  # noqa: F401 (raised)

# Architectures build_backbone accepts; their weight file names are in common.weights.IMAGENET_FILES.
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier: image -> layer4 feature map.

    Parameter names are torchvision's (``conv1.weight``, ``layer4.0.downsample.0.weight``, ...).

    Args:
        net: the torchvision ResNet whose modules are taken.
        stem_relu: apply the ReLU after the stem BN. False (default) is the released BoT code of both originals
            (michuanhaohao/reid-strong-baseline and the re-implementation): conv1 -> bn1 -> maxpool, no ReLU, the
            way every published number was produced; True is the standard ResNet stem.
    Attributes:
        out_channels: channels C of the output map (512 for resnet18/34, 2048 for resnet50/101).
        pretrained_info: ``{'path', 'missing', 'unexpected'}`` of the loaded weights, or None.
    """

    def __init__(self, net: torchvision.models.ResNet, stem_relu: bool = False):
        super().__init__()
        self.stem_relu = bool(stem_relu)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.out_channels = net.fc.in_features
        self.pretrained_info = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, 3, H, W). Returns: (N, C, H/32, W/32), or (N, C, H/16, W/16) with last stride 1."""
        x = self.bn1(self.conv1(x))
        if self.stem_relu:
            x = self.relu(x)
        x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def set_last_stride(net: nn.Module, stride: int) -> None:
    """Set the stride of layer4's first block (its strided 3x3 conv and the 1x1 downsample conv) to ``stride``."""
    block = net.layer4[0]
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (stride, stride)


def build_backbone(arch: str = "resnet50", last_stride: int = 1, pretrained: bool = True,
                   pretrained_path: str = "", stem_relu: bool = False) -> ResNetBackbone:
    """Build a torchvision ResNet (``weights=None``) and optionally load ImageNet weights from disk.

    Args:
        arch: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        last_stride: stride of layer4 (1 in BoT: a 256x128 input gives a 16x8 map; 2 is the ImageNet default).
        pretrained: load ImageNet weights (from ``pretrained_path``, else torchvision's cache); the ``fc.*`` keys
            are dropped; missing/unexpected keys are printed and kept in ``backbone.pretrained_info``.
        pretrained_path: explicit weight file (a state dict, possibly under ``'state_dict'``).
        stem_relu: ReLU after the stem BN (False: the released BoT code; see :class:`ResNetBackbone`).
    Returns:
        :class:`ResNetBackbone` mapping (N, 3, H, W) to (N, C, H/16, W/16) for last stride 1.
    Raises:
        PretrainedWeightsNotFound: ``pretrained`` and no file found (names the file, the folder and the fixes).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch '{arch}'; choose one of {sorted(ARCHS)}")
    net = getattr(torchvision.models, arch)(weights=None)
    info = None
    if pretrained or pretrained_path:
        info = load_backbone_weights(net, find_weights(arch, pretrained_path), arch, drop_fc=True)
    set_last_stride(net, last_stride)
    backbone = ResNetBackbone(net, stem_relu=stem_relu)
    backbone.pretrained_info = info
    return backbone


def weights_init_kaiming(m: nn.Module) -> None:
    """The original's neck init: Linear kaiming fan_out, Conv kaiming fan_in, BatchNorm weight 1 and bias 0."""
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def weights_init_classifier(m: nn.Module) -> None:
    """Classifier init: weight normal(0, 0.001), bias (if any) 0."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.001)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class Baseline(nn.Module):
    """ResNet -> GAP -> f_t -> [BNNeck] -> f_i -> Linear classifier.

    Args:
        num_classes: number of training identities.
        arch: ResNet depth (see :func:`build_backbone`).
        last_stride: 1 (BoT) or 2.
        neck: ``'bnneck'`` (BatchNorm1d with frozen zero bias; classifier without bias, normal(0.001) init) or
            ``'no'`` (classifier with bias and PyTorch's default init on f_t, as the original offers).
        neck_feat: test feature, ``'after'`` (f_i) or ``'before'`` (f_t) the neck.
        pretrained / pretrained_path: ImageNet initialisation, see :func:`build_backbone`.
        stem_relu: ReLU after the stem BN; False (default) as both originals' released code, True for the
            standard ResNet stem (see :class:`ResNetBackbone`).
    Shapes:
        train mode: (N, 3, H, W) -> (logits (N, num_classes), f_t (N, C)).
        eval mode: (N, 3, H, W) -> test feature (N, C), unnormalised.

    Reference:
        Luo et al., CVPR-W 2019, Fig. 5 (BNNeck); michuanhaohao/reid-strong-baseline modeling/baseline.py.
    """

    def __init__(self, num_classes: int, arch: str = "resnet50", last_stride: int = 1, neck: str = "bnneck",
                 neck_feat: str = "after", pretrained: bool = True, pretrained_path: str = "",
                 stem_relu: bool = False):
        super().__init__()
        if neck not in ("bnneck", "no"):
            raise ValueError(f"neck must be 'bnneck' or 'no', got {neck!r}")
        if neck_feat not in ("after", "before"):
            raise ValueError(f"neck_feat must be 'after' or 'before', got {neck_feat!r}")
        self.base = build_backbone(arch, last_stride, pretrained, pretrained_path, stem_relu=stem_relu)
        self.feat_dim = self.in_planes = self.base.out_channels
        self.num_classes, self.neck, self.neck_feat = num_classes, neck, neck_feat
        self.gap = nn.AdaptiveAvgPool2d(1)
        if neck == "bnneck":
            self.bottleneck = nn.BatchNorm1d(self.feat_dim)
            self.bottleneck.apply(weights_init_kaiming)
            self.bottleneck.bias.requires_grad_(False)  # no shift
            self.classifier = nn.Linear(self.feat_dim, num_classes, bias=False)
            self.classifier.apply(weights_init_classifier)
        else:
            self.bottleneck = None
            self.classifier = nn.Linear(self.feat_dim, num_classes)

    def forward(self, x: torch.Tensor):
        """Args: x (N, 3, H, W). Returns: train: (logits (N, K), f_t (N, C)); eval: test feature (N, C)."""
        global_feat = self.gap(self.base(x)).flatten(1)  # f_t
        feat = self.bottleneck(global_feat) if self.bottleneck is not None else global_feat  # f_i
        if self.training:
            return self.classifier(feat), global_feat
        return feat if self.neck_feat == "after" else global_feat
