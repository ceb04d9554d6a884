"""The QAConv matcher: query-adaptive convolution, global max pooling both ways, BN, FC and a logit BN.

For a probe map P and a gallery map G (C x L, unit columns, L = h * w) the similarity of every location pair is
``S[r, s] = <G[:, r], P[:, s]>`` (a 1x1 convolution of the gallery map with the L probe columns as kernels).
``a[s] = max_r S[r, s]`` (probe side) and ``b[r] = max_s S[r, s]`` (gallery side) are normalised by one scalar
BatchNorm, weighted by a linear layer and normalised again by a scalar BatchNorm into a raw logit.

* ``version='2.1'`` (v2.1 / HEAD): ``fc = Linear(L, 1)`` shared by both halves (weight 1/L at init), halves
  summed, so ``score(p, g) == score(g, p)`` exactly.
* ``version='1'`` (v1.0 / v1.2 / v2.0): ``fc = Linear(2L, 1)`` (default init) on ``[b, a]`` (gallery side first);
  not symmetric.

The similarities are computed in the input dtype (fp16 / bf16 on CUDA); the normalisation layers run in the dtype of
the parameters (float32 unless the module was converted). Gallery (and if needed probe) blocks bound the memory of
the [P, G, L, L] similarity tensor; they do not change the result, in train or eval mode, because the BNs act on
the max-pooled values of all pairs of the call.

Reference:
    Liao & Shao, ECCV 2020, Sec. 3.1-3.2 (QAConv); Liao & Shao, CVPR 2022 (QAConv 2.1);
    ShengcaiLiao/QAConv reid/models/qaconv.py (V1.3.1) and its v1.x/v2.0 predecessors.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

VERSIONS = ("2.1", "1")


class QAConv(nn.Module):
    """Pairwise matcher of feature maps.

    Args:
        num_features: channels C of the maps.
        height, width: map size h, w (L = h * w).
        version: ``'2.1'`` (shared, summed fc; symmetric) or ``'1'`` (``Linear(2L, 1)``; gallery half first).
    Attributes:
        bn, fc, logit_bn (state-dict keys as the original), version, num_features, height, width, length (= L),
        block_elems: max number of similarity values materialised at once (memory bound only).
    Shapes:
        forward(prob_fea (P, C, h, w), gal_fea (G, C, h, w)) -> score (P, G), raw logits, larger = more similar.
    """

    def __init__(self, num_features: int, height: int, width: int, version: str = "2.1"):
        super().__init__()
        version = str(version)
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        self.version, self.num_features, self.height, self.width = version, num_features, height, width
        self.length = height * width
        self.block_elems = 1 << 24
        self.bn = nn.BatchNorm1d(1)
        self.fc = nn.Linear(self.length if version == "2.1" else 2 * self.length, 1)
        self.logit_bn = nn.BatchNorm1d(1)
        self._init_fc_weight()

    def _init_fc_weight(self) -> None:
        if self.version == "2.1":
            with torch.no_grad():
                self.fc.weight.fill_(1.0 / self.length)

    def reset_running_stats(self) -> None:
        """Zero the running mean / unit running variance of ``bn`` and ``logit_bn``."""
        self.bn.reset_running_stats()
        self.logit_bn.reset_running_stats()

    def reset_parameters(self) -> None:
        """Re-initialise as at construction: BNs (stats and affine), fc default init, v2.1 fc weight 1/L."""
        self.bn.reset_parameters()
        self.logit_bn.reset_parameters()
        self.fc.reset_parameters()
        self._init_fc_weight()

    def _check(self, fea: torch.Tensor, name: str) -> torch.Tensor:
        expected = (self.num_features, self.height, self.width)
        if fea.dim() != 4 or tuple(fea.shape[1:]) != expected:
            raise ValueError(f"{name} must have shape (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(fea.shape)}")
        return fea.reshape(fea.size(0), self.num_features, self.length)

    def pair_maxima(self, prob_fea: torch.Tensor, gal_fea: torch.Tensor, with_index: bool = False):
        """Global max pooling of the location similarities in both directions.

        Args:
            prob_fea (P, C, h, w), gal_fea (G, C, h, w).
            with_index: also return the argmax locations.
        Returns:
            x (P, G, 2L) in the input dtype: ``x[..., :L]`` = a, for each probe location s the max over gallery
            locations r of S[r, s]; ``x[..., L:]`` = b, for each gallery location r the max over probe locations s;
            with ``with_index``: also ia (P, G, L) = argmax r and ib (P, G, L) = argmax s (long).
        """
        prob = self._check(prob_fea, "prob_fea")
        gal = self._check(gal_fea, "gal_fea")
        n_p, n_g, L, C = prob.size(0), gal.size(0), self.length, self.num_features
        kernels = prob.transpose(1, 2).reshape(n_p * L, C)  # row p*L + s = probe p, location s
        pb = max(1, min(n_p, self.block_elems // (L * L)))
        gb = max(1, self.block_elems // (pb * L * L))
        grad = torch.is_grad_enabled() and (prob.requires_grad or gal.requires_grad)
        x = prob.new_empty((n_p, n_g, 2 * L))
        if with_index:
            ia = torch.empty((n_p, n_g, L), dtype=torch.long, device=prob.device)
            ib = torch.empty_like(ia)
        for p0 in range(0, n_p, pb):
            p1 = min(p0 + pb, n_p)
            for g0 in range(0, n_g, gb):
                g1 = min(g0 + gb, n_g)
                cols = gal[g0:g1].transpose(0, 1).reshape(C, (g1 - g0) * L)  # column g*L + r
                sim = (kernels[p0 * L:p1 * L] @ cols).view(p1 - p0, L, g1 - g0, L)  # [p, s, g, r]
                if with_index or grad:  # max: the gradient goes to one location, as the original's
                    ma, mb = sim.max(dim=3), sim.max(dim=1)  # over r -> [p, s, g]; over s -> [p, g, r]
                    ma_v, mb_v = ma.values, mb.values
                    if with_index:
                        ia[p0:p1, g0:g1] = ma.indices.transpose(1, 2)
                        ib[p0:p1, g0:g1] = mb.indices
                else:  # same values, faster on the CPU
                    ma_v, mb_v = sim.amax(dim=3), sim.amax(dim=1)
                x[p0:p1, g0:g1, :L] = ma_v.transpose(1, 2)
                x[p0:p1, g0:g1, L:] = mb_v
        return (x, ia, ib) if with_index else x

    def _head(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """BN -> fc -> logit BN on the maxima x (P, G, 2L), probe half first.

        Returns (score (P, G), BN(x) (P, G, 2L), probe half first). The v1 fc, which sees the gallery half first,
        is applied with its two weight halves swapped (same result).
        """
        n_p, n_g, L2 = x.shape
        L = L2 // 2
        x = x.to(self.fc.weight.dtype)
        if self.version == "2.1":
            x = self.bn(x.reshape(n_p * n_g * 2, 1, L)).reshape(n_p * n_g * 2, L)
            z = self.fc(x).reshape(n_p * n_g, 2).sum(dim=1, keepdim=True)
        else:
            x = self.bn(x.reshape(n_p * n_g, 1, 2 * L)).reshape(n_p * n_g, 2 * L)
            w = self.fc.weight
            z = F.linear(x, torch.cat((w[:, L:], w[:, :L]), dim=1), self.fc.bias)
        score = self.logit_bn(z).reshape(n_p, n_g)
        return score, x.reshape(n_p, n_g, 2 * L)

    def forward(self, prob_fea: torch.Tensor, gal_fea: torch.Tensor) -> torch.Tensor:
        """Args: prob_fea (P, C, h, w), gal_fea (G, C, h, w). Returns: score (P, G) raw logits (float32)."""
        if prob_fea.size(0) == 0 or gal_fea.size(0) == 0:
            return prob_fea.new_zeros((prob_fea.size(0), gal_fea.size(0)), dtype=self.fc.weight.dtype)
        return self._head(self.pair_maxima(prob_fea, gal_fea))[0]

    def fc_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The fc weights applied to the probe half and to the gallery half, each (L,)."""
        w = self.fc.weight.reshape(-1)
        if self.version == "2.1":
            return w, w
        return w[self.length:], w[:self.length]

    def local_matches(self, prob_fea: torch.Tensor, gal_fea: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-location evidence of every pair for correspondence pictures (call in eval mode, under no_grad).

        Args:
            prob_fea (P, C, h, w), gal_fea (G, C, h, w).
        Returns:
            dict with ``prob_score`` (P, G, h, w): BN-normalised best similarity of each probe location times its
            fc weight; ``prob_index`` (P, G, h, w) long: flattened index (into h * w) of the best gallery location;
            ``gal_score`` / ``gal_index``: the same from the gallery side; ``score`` (P, G): the raw pair logit
            (``forward``'s output; the original pictures show ``sigmoid(score / 10)``).
        """
        x, ia, ib = self.pair_maxima(prob_fea, gal_fea, with_index=True)
        score, nx = self._head(x)
        w_p, w_g = self.fc_weights()
        L, shape = self.length, (x.size(0), x.size(1), self.height, self.width)
        return {"prob_score": (nx[..., :L] * w_p).reshape(shape), "prob_index": ia.reshape(shape),
                "gal_score": (nx[..., L:] * w_g).reshape(shape), "gal_index": ib.reshape(shape), "score": score}

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, height={self.height}, width={self.width}, "
                f"version='{self.version}'")


def flops_per_pair(num_features: int, length: int) -> int:
    """Multiply-add FLOPs of the similarity tensor of one pair: 2 * C * L * L."""
    return 2 * num_features * length * length
