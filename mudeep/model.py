"""MuDeep v2 (Qian et al., TPAMI 2019, naiq/MuDeep_v2 ``network.py``): ResNet up to layer3, three streams that
are independent copies of the first 1, 2 and 3 blocks of layer4 (last stride 1), a leader (concat -> 1x1 conv ->
BN -> ReLU), one leader-based channel attention layer per scale with a zero-initialised residual gate, and per
scale one global + three stripe embedding units (1x1 conv -> BN -> ReLU) each with dropout + classifier.

Module and parameter names, and their registration order, are the original's, so its checkpoints load (with or
without DataParallel's ``module.`` prefix, see :func:`load_original_state_dict`) and its optimizer's 16 parameter
groups line up. Channel counts are read from the backbone: ResNet-50 gives 2048-channel streams and the 6144-d
test descriptor; ResNet-18/34 give 512-channel streams (ResNet-18's layer4 has 2 blocks, so its 3-block stream
repeats the last block, as the original's commented-out 4th scale did with blocks 0, 1, 2, 2).

Shapes for a (B, 3, 384, 128) input and ResNet-50: layer3 (B, 1024, 24, 8); each stream (B, 2048, 24, 8); leader
(B, 512, 24, 8); attention maps (B, 2048, 2048); train outputs 12 logits (B, N) + 3 global embeddings (B, 512);
test outputs 12 embeddings (B, 512).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
import torchvision
from torch import nn

from common.weights import find_weights, load_backbone_weights

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "tiny")
TINY_WIDTHS = (16, 32, 64, 128)


def tiny_resnet() -> torchvision.models.ResNet:
    """A small ResNet for CPU tests (no ImageNet weights): torchvision's BasicBlock, stem 3->16 (stride 2) +
    max-pool, stages 16 / 32 / 64 / 128 with 1, 1, 1 and 3 blocks (so the three streams are real block copies)."""
    from torchvision.models.resnet import BasicBlock
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, TINY_WIDTHS[0], 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(TINY_WIDTHS[0])
    cin = TINY_WIDTHS[0]
    for i, (w, n) in enumerate(zip(TINY_WIDTHS, (1, 1, 1, 3))):
        stride = 1 if i == 0 else 2
        down = None if stride == 1 and cin == w else nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False),
                                                                  nn.BatchNorm2d(w))
        blocks = [BasicBlock(cin, w, stride, down)] + [BasicBlock(w, w) for _ in range(n - 1)]
        setattr(net, f"layer{i + 1}", nn.Sequential(*blocks))
        cin = w
    net.fc = nn.Linear(cin, 1000)
    return net
PARTS = ("", "_1", "_2", "_3")  # unit name suffixes: global, stripe 1 (top), stripe 2, stripe 3 (bottom)


def init_embedding(m: nn.Module) -> None:
    """The original's head init: conv Kaiming-normal (fan_in); BatchNorm2d keeps PyTorch's default."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")


def init_classifier(m: nn.Module) -> None:
    """Classifier init: weight N(0, 0.001), bias 0."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.001)
        nn.init.zeros_(m.bias)


def embedding_unit(in_channels: int, dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """``feature`` (1x1 conv -> BN2d -> ReLU) and ``classifier`` (dropout -> linear), the original's names."""
    feature = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(in_channels, dim, 1, bias=False)),
                                         ("bn", nn.BatchNorm2d(dim)), ("relu", nn.ReLU(inplace=True))]))
    classifier = nn.Sequential(OrderedDict([("dropout", nn.Dropout(p=dropout)), ("fc", nn.Linear(dim, num_classes))]))
    feature.apply(init_embedding)
    classifier.apply(init_classifier)
    return nn.Sequential(OrderedDict([("feature", feature), ("classifier", classifier)]))


def attention_projections(guidance: int, channels: int) -> nn.Sequential:
    """``feature1`` / ``feature2``: the two bias-free 1x1 convs from the leader (names as the original)."""
    return nn.Sequential(OrderedDict([
        ("feature1", nn.Sequential(OrderedDict([("conv1", nn.Conv2d(guidance, channels, 1, bias=False))]))),
        ("feature2", nn.Sequential(OrderedDict([("conv1", nn.Conv2d(guidance, channels, 1, bias=False))]))),
        ("softmax", nn.Softmax(dim=2))]))


def leader_attention(atten: nn.Sequential, leader: torch.Tensor, stream: torch.Tensor,
                     gamma: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Leader-based channel attention of one scale.

    Args:
        atten: the scale's :func:`attention_projections`.
        leader: H_g, (B, C_g, H, W).
        stream: F_i, (B, C, H, W).
        gamma: the residual gate, 1 element.
    Returns:
        (gamma * A F + F of shape (B, C, H, W), A of shape (B, C, C)) where
        A = softmax_rows(Q K^T), Q = feature1(H_g), K = feature2(H_g), both (B, C, H*W).
    """
    b, c, h, w = stream.shape
    q = atten.feature1(leader).reshape(b, c, h * w)
    k = atten.feature2(leader).reshape(b, c, h * w)
    a = atten.softmax(torch.bmm(q, k.transpose(1, 2)))  # (B, C, C), rows sum to 1
    out = torch.bmm(a, stream.reshape(b, c, h * w)).reshape(b, c, h, w)
    return gamma * out + stream, a


def stream_blocks(layer4: nn.Sequential, depth: int) -> List[nn.Module]:
    """Deep copies of the first ``depth`` blocks of ``layer4`` (the last one repeated when it has fewer)."""
    idx = [min(j, len(layer4) - 1) for j in range(depth)]
    return [copy.deepcopy(layer4[j]) for j in idx]


class MuDeepV2(nn.Module):
    """The MuDeep v2 network (the original's class ``MuDeep_v2``; see the module docstring).

    Args:
        num_classes: training identities N (751 on Market-1501).
        arch: torchvision ResNet providing stem, layer1-3 and the layer4 blocks of the streams.
        pretrained: load ImageNet weights (from ``pretrained_path`` or torchvision's cache; never downloaded).
        pretrained_path: explicit ImageNet weight file.
        num_scales: streams (3; stream i has i blocks).
        guidance: leader channels C_g (512).
        embed_dim: embedding size of each of the 12 units (512).
        num_stripes: horizontal stripes per scale (3).
        dropout: dropout before each classifier (0.5).
    """

    def __init__(self, num_classes: int = 751, arch: str = "resnet50", pretrained: bool = True,
                 pretrained_path: str = "", num_scales: int = 3, guidance: int = 512, embed_dim: int = 512,
                 num_stripes: int = 3, dropout: float = 0.5):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch '{arch}'; choose one of {list(ARCHS)}")
        if num_scales != 3 or num_stripes != 3:
            raise ValueError("the original (and its state-dict names) has 3 scales of 1 global + 3 stripe units")
        net = tiny_resnet() if arch == "tiny" else getattr(torchvision.models, arch)(weights=None)
        if arch != "tiny" and (pretrained or pretrained_path):
            load_backbone_weights(net, find_weights(arch, pretrained_path), arch, strict=False, drop_fc=True)
        for m in net.layer4[0].modules():  # last stride 1: the strided 3x3 (or first 3x3) conv and the shortcut
            if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
                m.stride = (1, 1)
        self.num_classes, self.num_scales, self.num_stripes = num_classes, num_scales, num_stripes
        self.channels = net.fc.in_features  # stream channels C (2048 for ResNet-50)
        self.embed_dim = embed_dim
        self.conv = nn.Sequential(OrderedDict([("conv", net.conv1), ("bn", net.bn1), ("relu", net.relu),
                                               ("pool", net.maxpool)]))
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.layer4_1 = stream_blocks(net.layer4, 1)[0]  # a bare block, as the original (no Sequential)
        self.layer4_2 = nn.Sequential(*stream_blocks(net.layer4, 2))
        self.layer4_3 = nn.Sequential(*stream_blocks(net.layer4, 3))
        self.gap1 = nn.AdaptiveAvgPool2d((1, 1))
        self.gap2 = nn.AdaptiveAvgPool2d((num_stripes, 1))
        self.conv_all = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(self.channels * num_scales, guidance, 1, bias=False)),
            ("bn1", nn.BatchNorm2d(guidance)), ("relu1", nn.ReLU(inplace=True))]))
        for i in range(1, num_scales + 1):  # registration order = the original's (optimizer groups line up)
            setattr(self, f"atten{i}", attention_projections(guidance, self.channels))
            for part in PARTS:
                setattr(self, f"scale{i}{part}", embedding_unit(self.channels, embed_dim, num_classes, dropout))
        for i in range(1, num_scales + 1):
            setattr(self, f"gamma{i}", nn.Parameter(torch.zeros(1)))

    @property
    def descriptor_dim(self) -> int:
        """scales x (1 + stripes) x embedding dim (6144 for the original)."""
        return self.num_scales * (1 + self.num_stripes) * self.embed_dim

    def unit_names(self) -> List[str]:
        """The 12 unit names in output order: scale1, scale1_1, scale1_2, scale1_3, scale2, ..."""
        return [f"scale{i}{p}" for i in range(1, self.num_scales + 1) for p in PARTS]

    def streams(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, 3, H, W) -> the three stream maps F_1..F_3, each (B, C, H/16, W/16)."""
        x = self.layer3(self.layer2(self.layer1(self.conv(x))))
        return [self.layer4_1(x), self.layer4_2(x), self.layer4_3(x)]

    def attended(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor, List[torch.Tensor]]:
        """(B, 3, H, W) -> ([F'_i (B, C, h, w)] x 3, leader (B, C_g, h, w), [A_i (B, C, C)] x 3)."""
        streams = self.streams(x)
        leader = self.conv_all(torch.cat(streams, dim=1))
        outs, maps = [], []
        for i, f in enumerate(streams, 1):
            o, a = leader_attention(getattr(self, f"atten{i}"), leader, f, getattr(self, f"gamma{i}"))
            outs.append(o)
            maps.append(a)
        return outs, leader, maps

    def embeddings(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, 3, H, W) -> the 12 embeddings (B, D) (post-ReLU), order of :meth:`unit_names`.

        Flattened from dim 1 instead of the original's ``squeeze()``, so a batch of 1 keeps its batch axis.
        """
        feats = []
        for i, f in enumerate(self.attended(x)[0], 1):
            pooled = [self.gap1(f)] + list(self.gap2(f).split(1, dim=2))  # (B, C, 1, 1) each
            for part, p in zip(PARTS, pooled):
                feats.append(getattr(self, f"scale{i}{part}").feature(p).flatten(1))
        return feats

    def forward(self, x: torch.Tensor, test: bool = False):
        """Args: x (B, 3, H, W); test: return the embeddings (the original's ``test=True``).

        Returns:
            test: tuple of 12 embeddings (B, D). Otherwise 15 tensors: 12 logits (B, N) in unit order, then the
            global embeddings of scales 1, 2, 3 (B, D) for the triplet loss.
        """
        feats = self.embeddings(x)
        if test:
            return tuple(feats)
        logits = [getattr(self, n).classifier(f) for n, f in zip(self.unit_names(), feats)]
        return tuple(logits) + tuple(feats[0::1 + self.num_stripes])

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> concatenation of the 12 embeddings, (B, 12 D), not normalised."""
        return torch.cat(self.embeddings(x), dim=1)


def count_parameters(model: nn.Module, test_time: bool = False) -> int:
    """Number of parameters; ``test_time`` leaves out the classifiers (unused by the test descriptor)."""
    return sum(p.numel() for n, p in model.named_parameters() if not (test_time and ".classifier." in n))


def strip_module_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove DataParallel's ``module.`` prefix when every key carries it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_original_state_dict(model: MuDeepV2, state: Dict[str, torch.Tensor]) -> None:
    """Load a state dict of the original (``module.``-prefixed or not), or one of ours; strict.

    Args:
        model: the network.
        state: the checkpoint's ``state_dict``, or a whole checkpoint dict holding one.
    Raises:
        RuntimeError: keys or shapes differ (e.g. another number of classes or another backbone).
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = strip_module_prefix(state)
    for i in range(1, model.num_scales + 1):  # a scalar gamma (0-d) from another version fits our (1,) tensor
        key = f"gamma{i}"
        if key in state and state[key].dim() == 0:
            state[key] = state[key].reshape(1)
    model.load_state_dict(state, strict=True)


def parameter_groups(model: MuDeepV2, lr: float, base_factor: float = 0.1) -> List[Dict]:
    """The original's 16 SGD groups: everything else at ``base_factor * lr`` (stem, layer1-3, the three streams,
    the leader ``conv_all`` and ``gamma1..3``), then the 12 units and the 3 attention projections at ``lr``, in the
    original's order (scale1, scale1_1, ..., scale3_3, atten1, atten2, atten3)."""
    new = model.unit_names() + [f"atten{i}" for i in range(1, model.num_scales + 1)]
    new_ids = {id(p) for n in new for p in getattr(model, n).parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in new_ids], "lr": lr * base_factor}]
    groups += [{"params": list(getattr(model, n).parameters()), "lr": lr} for n in new]
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups
