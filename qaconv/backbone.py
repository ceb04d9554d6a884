"""QAConv's feature-map network ``ResMap``: a truncated (IBN-)ResNet, an optional 3x3 neck, per-location L2 norm.

The backbone is torchvision's ResNet; IBN-Net variants are built on torchvision's ``BasicBlock`` / ``Bottleneck``
with the module names of XingangPan/IBN-Net (``bn1.IN`` / ``bn1.BN`` for IBN-a, ``bn1`` = InstanceNorm and
``layerX.N.IN`` for IBN-b), so the released IBN-Net ImageNet files load without renaming. Images enter in [0, 1]
without ImageNet mean/std normalisation, as in the original.

Reference:
    Liao & Shao, "Interpretable and Generalizable Person Re-Identification with Query-Adaptive Convolution and
    Temporal Lifting", ECCV 2020, Sec. 3; ShengcaiLiao/QAConv reid/models/resmap.py.
    Pan et al., "Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net", ECCV 2018.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from common.weights import find_weights, load_backbone_weights

_LAYOUT = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
           101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3])}
STRIDES = {"layer2": 8, "layer3": 16, "layer4": 32}
_CHANNELS = {"layer2": 128, "layer3": 256, "layer4": 512}  # x4 for Bottleneck depths (>= 50)


class IBN(nn.Module):
    """IBN-a normalisation: InstanceNorm (affine) on the first ``int(planes * ratio)`` channels, BatchNorm on the rest.

    Shapes: (N, planes, H, W) -> (N, planes, H, W). Submodules ``IN`` and ``BN`` (IBN-Net's key names).
    """

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, :self.half].contiguous(), x[:, self.half:].contiguous()
        return torch.cat((self.IN(a), self.BN(b)), dim=1)


class IBNBasicBlock(BasicBlock):
    """torchvision ``BasicBlock`` with an optional affine InstanceNorm ``IN`` after the residual add (IBN-b)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.IN: Optional[nn.Module] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


class IBNBottleneck(Bottleneck):
    """torchvision ``Bottleneck`` with an optional affine InstanceNorm ``IN`` after the residual add (IBN-b)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.IN: Optional[nn.Module] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


def _block_out_channels(block: nn.Module) -> int:
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features


def build_resnet(depth: int, ibn: Optional[str] = None) -> ResNet:
    """Randomly initialised torchvision ResNet (``ibn=None``) or IBN-Net ResNet (``'a'`` / ``'b'``).

    IBN-a: ``bn1`` of every block of layer1-3 is :class:`IBN` (half IN, half BN). IBN-b: the stem ``bn1`` is an
    affine InstanceNorm(64) and the last block of layer1 and of layer2 gets an affine InstanceNorm ``IN`` after
    its residual add. Depths 18/34/50/101 (and 152 without IBN).
    """
    if depth not in _LAYOUT:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(_LAYOUT)}")
    if ibn is None:
        return getattr(torchvision.models, f"resnet{depth}")(weights=None)
    if ibn not in ("a", "b"):
        raise ValueError(f"ibn must be None, 'a' or 'b', got {ibn!r}")
    if depth == 152:
        raise ValueError("IBN-Net has no ResNet-152 variant (IBN-Net releases 18/34/50/101); use ibn=None "
                         "(--ibn none) with resnet152, or a smaller depth with IBN")
    block, layers = _LAYOUT[depth]
    net = ResNet(IBNBasicBlock if block is BasicBlock else IBNBottleneck, layers)
    if ibn == "a":
        for layer in (net.layer1, net.layer2, net.layer3):
            for blk in layer:
                blk.bn1 = IBN(blk.bn1.num_features)
    else:
        net.bn1 = nn.InstanceNorm2d(64, affine=True)  # same position among the children: forward order unchanged
        for layer in (net.layer1, net.layer2):
            layer[-1].IN = nn.InstanceNorm2d(_block_out_channels(layer[-1]), affine=True)
    return net


def _parse_depth(depth_or_arch: Union[int, str]) -> int:
    s = str(depth_or_arch).lower()
    s = s[len("resnet"):] if s.startswith("resnet") else s
    if not s.isdigit():
        raise ValueError(f"unknown architecture {depth_or_arch!r}; use resnet18/34/50/101/152 or the depth")
    return int(s)


class ResMap(nn.Module):
    """(IBN-)ResNet truncated after ``final_layer`` -> optional 3x3 neck -> L2 norm over channels at each location.

    Args:
        depth_or_arch: ``'resnet50'`` or ``50`` (18/34/50/101/152).
        final_layer: ``'layer2'`` / ``'layer3'`` / ``'layer4'`` (stride 8 / 16 / 32).
        neck: output channels of the 3x3 neck conv; <= 0 skips the neck.
        ibn: ``None`` / ``'none'`` (torchvision ResNet), ``'a'`` or ``'b'`` (IBN-Net; not with depth 152).
        neck_bias / neck_bn: ``True, False`` = v2.1/HEAD (conv with bias, no BN); ``False, True`` = v1.0-2.0
            (conv without bias + ``BatchNorm2d``).
        pretrained: load ImageNet (or IBN-Net ImageNet) weights from ``pretrained_path`` or torch's cache folder.
        pretrained_path: explicit weight file.
    Shapes:
        (B, 3, H, W) in [0, 1] -> (B, num_features, h, w), unit L2 norm over channels at every location;
        (h, w) = :meth:`feature_size` (H / stride, W / stride for multiples of the stride).
    Attributes:
        base: the backbone (state-dict keys ``base.*``), ``neck_conv`` / ``neck_bn`` (as in the original),
        num_features, stride, final_layer, depth, ibn.
    """

    def __init__(self, depth_or_arch: Union[int, str] = "resnet50", final_layer: str = "layer3", neck: int = 128,
                 ibn: Optional[str] = "b", neck_bias: bool = True, neck_bn: bool = False, pretrained: bool = True,
                 pretrained_path: str = ""):
        super().__init__()
        if final_layer not in STRIDES:
            raise ValueError(f"final_layer must be one of {sorted(STRIDES)}, got {final_layer!r}")
        self.depth = _parse_depth(depth_or_arch)
        self.ibn = None if ibn in (None, "", "none", "None") else ibn
        self.final_layer, self.neck, self.stride = final_layer, neck, STRIDES[final_layer]
        self.base = build_resnet(self.depth, self.ibn)
        if pretrained or pretrained_path:
            name = f"resnet{self.depth}" + (f"_ibn_{self.ibn}" if self.ibn else "")
            load_backbone_weights(self.base, find_weights(name, pretrained_path), name)
        out_planes = _CHANNELS[final_layer] * (4 if self.depth >= 50 else 1)
        self.neck_conv: Optional[nn.Conv2d] = None
        self.neck_bn: Optional[nn.BatchNorm2d] = None
        if neck > 0:
            self.neck_conv = nn.Conv2d(out_planes, neck, kernel_size=3, padding=1, bias=neck_bias)
            if neck_bn:
                self.neck_bn = nn.BatchNorm2d(neck)
            out_planes = neck
        self.num_features = out_planes

    def feature_size(self, height: int, width: int) -> Tuple[int, int]:
        """Output map size for an input of ``height x width`` (every stride-2 stage maps n to ceil(n / 2))."""
        for _ in range(self.stride.bit_length() - 1):
            height, width = (height + 1) // 2, (width + 1) // 2
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, 3, H, W) in [0, 1]. Returns: (B, num_features, h, w), unit norm per location."""
        for name, module in self.base.named_children():
            x = module(x)
            if name == self.final_layer:
                break
        if self.neck_conv is not None:
            x = self.neck_conv(x)
        if self.neck_bn is not None:
            x = self.neck_bn(x)
        return F.normalize(x, p=2, dim=1, eps=1e-12)
