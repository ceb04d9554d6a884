"""MPRD backbone: (IBN-)ResNet with last stride 1, global pooling, BatchNorm neck (bias frozen), L2-normalised output.

Shapes: images (B, 3, H, W) -> features (B, C) with C = 2048 for ResNet-50/101/152 and IBN-a 50/101, 512 for
ResNet-18/34; unit L2 norm in train and eval mode (spec §3). No classifier (the method is unsupervised).
IBN-a blocks follow XingangPan/IBN-Net's module names (``bn1.IN`` / ``bn1.BN`` in layers 1-3), so the released
``resnet50_ibn_a-d9d0bb7b.pth`` loads through :mod:`common.weights`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from common.weights import find_weights, load_backbone_weights

ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2], False), "resnet34": (BasicBlock, [3, 4, 6, 3], False),
         "resnet50": (Bottleneck, [3, 4, 6, 3], False), "resnet101": (Bottleneck, [3, 4, 23, 3], False),
         "resnet152": (Bottleneck, [3, 8, 36, 3], False),
         "resnet_ibn50a": (Bottleneck, [3, 4, 6, 3], True), "resnet_ibn101a": (Bottleneck, [3, 4, 23, 3], True)}
WEIGHT_NAMES = {"resnet_ibn50a": "resnet50_ibn_a", "resnet_ibn101a": "resnet101_ibn_a"}
SMALL = ("cnn3",)   # CPU verification only (not in the paper): three conv blocks, 128-d, no ImageNet weights


def _make_cnn3() -> nn.Sequential:
    """(B, 3, H, W) -> (B, 128, H/4, W/4): [conv 3x3 - BN - ReLU] x 3 with 2x2 max pooling after the first two."""
    def block(a: int, b: int):
        return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128))


class IBN(nn.Module):
    """IBN-a: affine InstanceNorm on the first half of the channels, BatchNorm on the rest. (N, C, H, W) -> same."""

    def __init__(self, planes: int):
        super().__init__()
        self.half = planes // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.IN(x[:, :self.half].contiguous()), self.BN(x[:, self.half:].contiguous())], 1)


def _make_resnet(arch: str) -> ResNet:
    block, layers, ibn = ARCHS[arch]
    net = ResNet(block, layers)
    if ibn:  # IBN-a: bn1 of every bottleneck of layers 1-3 becomes IBN
        for layer in (net.layer1, net.layer2, net.layer3):
            for blk in layer:
                blk.bn1 = IBN(blk.bn1.num_features)
    return net


class MPRDNet(nn.Module):
    """Backbone + pooling + BN neck; ``forward`` returns unit-norm features (B, C).

    Args:
        arch: a key of :data:`ARCHS`.
        pretrained: load ImageNet weights (never downloaded; see :mod:`common.weights`).
        pretrained_path: explicit weight file.
        pooling: ``avg`` (original default), ``max`` or ``gem`` (p = 3).
    """

    def __init__(self, arch: str = "resnet50", pretrained: bool = True, pretrained_path: str = "",
                 pooling: str = "avg"):
        super().__init__()
        if arch not in ARCHS and arch not in SMALL:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS) + list(SMALL)}")
        self.pooling = pooling
        if arch in SMALL:
            if pretrained:
                raise ValueError(f"-a {arch} has no ImageNet weights; pass --no-pretrained or --init-weights")
            self.base, self.feat_dim = _make_cnn3(), 128
            self._neck()
            return
        net = _make_resnet(arch)
        if pretrained:
            name = WEIGHT_NAMES.get(arch, arch)
            load_backbone_weights(net, find_weights(name, pretrained_path), name, drop_fc=True)
        # last stride 1 (layer4's first block: conv2 for Bottleneck, conv1 for BasicBlock, and the downsample)
        first = net.layer4[0]
        (first.conv2 if isinstance(first, Bottleneck) else first.conv1).stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        self.base = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                  net.layer4)
        self.feat_dim = net.fc.in_features
        self._neck()

    def _neck(self) -> None:
        self.feat_bn = nn.BatchNorm1d(self.feat_dim)
        self.feat_bn.bias.requires_grad_(False)
        nn.init.constant_(self.feat_bn.weight, 1)
        nn.init.constant_(self.feat_bn.bias, 0)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C)."""
        if self.pooling == "max":
            return F.adaptive_max_pool2d(x, 1).flatten(1)
        if self.pooling == "gem":
            return F.avg_pool2d(x.clamp(min=1e-6).pow(3), x.shape[-2:]).pow(1.0 / 3).flatten(1)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, C) L2-normalised BN features."""
        return F.normalize(self.feat_bn(self.pool(self.base(x))), dim=1)
