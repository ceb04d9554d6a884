"""SA-Dec: the release's ``ConvResDecoder``, layer by layer, with additive U-Net skips from SA-Enc.

Blocks:

* ``deconv3x3(c_in, c_out, s)``: bilinear x s upsample (align_corners=False) -> ReflectionPad(1) -> 3x3 conv
  with bias; no norm, no activation.
* ``BasicResBlock(C)``: ``x + BN(conv3x3(ReLU(BN(conv3x3(x)))))`` (3x3 convs without bias; no activation after
  the sum).
* ``ConvResBlock(c_in, c_out)``: ``deconv3x3(ReLU(BasicResBlock(x)), s=2)``; its output is an ``x_sim``.

Graph (channels for resnet50, C = (C1, C2, C3, C4) = (256, 512, 1024, 2048); other backbones scale with C)::

    reduce_dim(f)      1x1 C4 -> C3/2 + BN + ReLU   ┐ sum -> up1 -> x_sim1 (C2/2,  H/8,  W/8)
    embed3(x_down3)    1x1 C3 -> C3/2 + BN + ReLU   ┘
    embed2(x_down2)    1x1 C2 -> C2/2 + BN + ReLU   + x_sim1 -> up2 -> x_sim2 (C1/4, H/4, W/4)
    embed1(x_down1)    1x1 C1 -> C1/4 + BN + ReLU   + x_sim2 -> up3 -> x_sim3 (C1/8, H/2, W/2)
                                                     x_sim3 -> up4 -> x_sim4 (C1/16, H, W)
    final: ReflectionPad(3) -> 7x7 conv C1/16 -> 3 (bias, no tanh) -> bilinear resize to (H, 2W),
           align_corners=True = the texture.

For a 256x128 input: x_sim1..4 = 256x32x16, 64x64x32, 32x128x64, 16x256x128 and a 3x256x256 texture; 9,071,075
parameters. Deviation for last stride 2 (``-a resnet50``): reduce_dim(f) is bilinearly resized to x_down3's
size before the sum (the original crashes there).

Reference:
    Jin et al., AAAI 2020, Fig. 2; the release's ``main.py`` (``ConvResDecoder``, ``init_decoder_weights``).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def deconv3x3(c_in: int, c_out: int, scale: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False),
                         nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3, padding=0, bias=True))


class BasicResBlock(nn.Module):
    """(B, C, h, w) -> (B, C, h, w): ``x + BN(conv(ReLU(BN(conv(x)))))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(channels, channels), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = conv3x3(channels, channels), nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class ConvResBlock(nn.Module):
    """(B, c_in, h, w) -> (B, c_out, 2h, 2w): residual block, ReLU, then the up-convolution."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.res = BasicResBlock(c_in)
        self.act = nn.ReLU(inplace=False)
        self.up = deconv3x3(c_in, c_out, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.res(x)))


def _embed(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=True), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def decoder_channels(skip_channels: Sequence[int]) -> Tuple[int, int, int, int, int]:
    """(d3, d2, d1, d0, dt): widths of the layer3/layer2/layer1 sums and of x_sim3 / x_sim4.

    resnet50 (256, 512, 1024, 2048) -> (512, 256, 64, 32, 16); resnet18 (64, 128, 256, 512) -> (128, 64, 16, 8, 4).
    """
    c1, c2, c3, _ = skip_channels
    return c3 // 2, c2 // 2, c1 // 4, max(c1 // 8, 1), max(c1 // 16, 1)


class SADecoder(nn.Module):
    """SA-Dec.

    Args:
        skip_channels: (C1, C2, C3, C4) of the encoder (``SAEncoder.skip_channels``).
    Shapes:
        forward(f (B, C4, H/16 or H/32, ...), x_down1 (B, C1, H/4, W/4), x_down2 (B, C2, H/8, W/8),
        x_down3 (B, C3, H/16, W/16)) -> (texture (B, 3, H, 2W), x_sim1 (B, d2, H/8, W/8),
        x_sim2 (B, d1, H/4, W/4), x_sim3 (B, d0, H/2, W/2), x_sim4 (B, dt, H, W)), with H, W the input image size.
    """

    def __init__(self, skip_channels: Sequence[int] = (256, 512, 1024, 2048)):
        super().__init__()
        c1, c2, c3, c4 = skip_channels
        d3, d2, d1, d0, dt = decoder_channels(skip_channels)
        self.reduce_dim = _embed(c4, d3)
        self.embed_layer3 = _embed(c3, d3)
        self.up1 = ConvResBlock(d3, d2)
        self.embed_layer2 = _embed(c2, d2)
        self.up2 = ConvResBlock(d2, d1)
        self.embed_layer1 = _embed(c1, d1)
        self.up3 = ConvResBlock(d1, d0)
        self.up4 = ConvResBlock(d0, dt)
        self.final_layer = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(dt, 3, 7, padding=0, bias=True))
        init_decoder_weights(self)

    def forward(self, f, x_down1, x_down2, x_down3):
        r = self.reduce_dim(f)
        if r.shape[-2:] != x_down3.shape[-2:]:  # last stride 2 (-a resnet50): our fix of the original's crash
            r = F.interpolate(r, size=x_down3.shape[-2:], mode="bilinear", align_corners=False)
        x_sim1 = self.up1(r + self.embed_layer3(x_down3))
        x_sim2 = self.up2(x_sim1 + self.embed_layer2(x_down2))
        x_sim3 = self.up3(x_sim2 + self.embed_layer1(x_down1))
        x_sim4 = self.up4(x_sim3)
        out = self.final_layer(x_sim4)
        h, w = out.shape[-2:]
        texture = F.interpolate(out, size=(h, 2 * w), mode="bilinear", align_corners=True)
        return texture, x_sim1, x_sim2, x_sim3, x_sim4


def init_decoder_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Xavier-normal(gain 0.02) conv / linear weights, zero biases, BatchNorm2d weight ~ N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
