"""SA-Enc: the torchreid-style ResNet of the SAN release, returning the skip maps the decoder needs.

Architectures (``-a``):

* ``resnet50_fc512`` (the README command): last stride 1, GAP -> Linear(2048, 512) -> BN1d -> ReLU = v (512-d).
* ``resnet50`` (the paper's pooled f_e4, 2048-d): last stride 2 as in the original factory, no fc head; v is
  the pooled layer4 map. The original decoder crashes on it (layer4 at stride 32 cannot be added to layer3's
  skip); ours upsamples the reduced layer4 map to layer3's size (:mod:`san.decoder`).
* ``resnet18_fc512`` / ``resnet18`` / ``resnet34_fc512`` / ``resnet34``: the same with a smaller torchvision
  ResNet (CPU tests); every channel count downstream is derived from the backbone.

Reference:
    Jin et al., "Semantics-Aligned Representation Learning for Person Re-identification", AAAI 2020, Fig. 2.
    The SAN release's ``torchreid/models/resnet.py`` (semantics checked through the spec, not copied).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
import torchvision

from common.weights import find_weights, load_backbone_weights

ARCHS = ("resnet50_fc512", "resnet50", "resnet18_fc512", "resnet18", "resnet34_fc512", "resnet34")


def parse_arch(arch: str) -> Tuple[str, bool]:
    """``'resnet50_fc512'`` -> (``'resnet50'``, True); ``'resnet50'`` -> (``'resnet50'``, False)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown SAN arch '{arch}'; choose one of {', '.join(ARCHS)}")
    base = arch[:-len("_fc512")] if arch.endswith("_fc512") else arch
    return base, arch.endswith("_fc512")


class SAEncoder(nn.Module):
    """SA-Enc: ResNet -> (logits, v, f, x_down1, x_down2, x_down3).

    Args:
        num_classes: training identities (classifier outputs).
        arch: one of :data:`ARCHS`.
        pretrained: load ImageNet weights for the backbone (``common.weights``; never downloaded).
        pretrained_path: explicit weight file.
        fc_dim: width of the fc head for ``*_fc512`` archs (512).
    Attributes:
        skip_channels: (C1, C2, C3, C4) channels of layer1..layer4 (resnet50: 256, 512, 1024, 2048).
        feat_dim: dimension of v (512 with the fc head, else C4).
        last_stride: 1 for ``*_fc512``, 2 otherwise.
    Shapes (input B x 3 x H x W, H and W multiples of 16):
        train mode: (logits (B, num_classes), v (B, D), f (B, C4, H/16, W/16) [or H/32 x W/32 with last
        stride 2], x_down1 (B, C1, H/4, W/4), x_down2 (B, C2, H/8, W/8), x_down3 (B, C3, H/16, W/16)).
        eval mode: the same without logits (5 outputs); v, the test feature, comes first.
    """

    def __init__(self, num_classes: int, arch: str = "resnet50_fc512", pretrained: bool = True,
                 pretrained_path: str = "", fc_dim: int = 512):
        super().__init__()
        base, has_fc = parse_arch(arch)
        self.arch, self.last_stride = arch, 1 if has_fc else 2
        net = getattr(torchvision.models, base)(weights=None)  # Kaiming fan_out convs, BN 1 / 0 (as torchreid)
        if pretrained or pretrained_path:
            load_backbone_weights(net, find_weights(base, pretrained_path), base, strict=False, drop_fc=True)
        if self.last_stride == 1:
            for m in net.layer4[0].modules():
                if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
                    m.stride = (1, 1)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.skip_channels = tuple(_out_channels(getattr(net, f"layer{i}")) for i in range(1, 5))
        c4 = self.skip_channels[3]
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        if has_fc:
            self.fc = nn.Sequential(nn.Linear(c4, fc_dim), nn.BatchNorm1d(fc_dim), nn.ReLU(inplace=True))
            self.feat_dim = fc_dim
        else:
            self.fc = None
            self.feat_dim = c4
        self.classifier = nn.Linear(self.feat_dim, num_classes)
        for m in [self.classifier] + (list(self.fc.modules()) if self.fc is not None else []):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reid_head_parameters(self):
        """fc head and classifier: the parameters the decoder losses never reach."""
        mods = [self.classifier] + ([self.fc] if self.fc is not None else [])
        return [p for m in mods for p in m.parameters()]

    def forward(self, x: torch.Tensor):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        f = self.layer4(x3)
        v = self.global_avgpool(f).flatten(1)
        if self.fc is not None:
            v = self.fc(v)
        if not self.training:
            return v, f, x1, x2, x3
        return self.classifier(v), v, f, x1, x2, x3


def _out_channels(layer: nn.Sequential) -> int:
    block = layer[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


def count_params(module: nn.Module, exclude_classifier: bool = True) -> int:
    """Parameters of ``module`` (torchreid's ``count_num_param``: the classifier is left out)."""
    return sum(p.numel() for n, p in module.named_parameters()
               if not (exclude_classifier and n.startswith("classifier.")))
