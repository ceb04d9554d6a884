"""DGCNN link classifier in plain PyTorch (spec §7.2; Zhang et al. 2018 as used by SEAL / MetaPRD).

Input: a batch of :class:`~mprd.gcn.graph.PairGraph` with node features [one-hot DRNL label (16) | bank feature
(D)]. Graph convolutions H_{l+1} = tanh(Lin_l((A + I) H_l) / (deg + 1)) with widths 512, 512, 1, concatenated
(n, 1025); SortPooling by the last channel (descending), top k rows (zero rows when n < k); Conv1d(1 -> 1024,
kernel = stride = 1025) -> ReLU -> MaxPool1d(2) -> Conv1d(1024 -> 2048, 5) -> ReLU -> global max -> ReLU;
MLP 2048 -> 1024 -> ReLU -> Dropout 0.5 -> 2, log-softmax (class 1 = linked). Graphs are padded to a common size
and processed together (the original loops over graphs and builds adjacency with a prebuilt C library).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mprd.gcn.graph import MAX_LABEL, PairGraph

NUM_LABELS = MAX_LABEL + 1


def sortpool_k(node_counts: Sequence[int], ratio: float = 0.6, minimum: int = 10) -> int:
    """max(the ceil(ratio * B)-th smallest node count, minimum)."""
    counts = sorted(int(c) for c in node_counts)
    return max(counts[int(math.ceil(ratio * len(counts))) - 1], minimum)


def sort_pool(h: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """SortPooling. h: (B, n, C) node features (padded rows zero), mask: (B, n) real nodes -> (B, k, C): real nodes
    ordered by the last channel, descending (stable), cut or zero-padded to k rows."""
    key = h[..., -1].masked_fill(~mask, float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    out = h.gather(1, order.unsqueeze(-1).expand_as(h)) * mask.gather(1, order).unsqueeze(-1)
    if out.shape[1] >= k:
        return out[:, :k]
    return torch.cat([out, out.new_zeros(out.shape[0], k - out.shape[1], out.shape[2])], 1)


class DGCNN(nn.Module):
    """Args: feat_dim D (node feature = 16 + D), latent graph-conv widths, conv1d channels, MLP hidden size."""

    def __init__(self, feat_dim: int = 2048, latent=(512, 512, 1), conv_channels=(1024, 2048), hidden: int = 1024,
                 dropout: float = 0.5):
        super().__init__()
        self.feat_dim, self.total_latent = feat_dim, sum(latent)
        dims = [NUM_LABELS + feat_dim, *latent]
        self.convs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.conv1 = nn.Conv1d(1, conv_channels[0], self.total_latent, stride=self.total_latent)
        self.conv2 = nn.Conv1d(conv_channels[0], conv_channels[1], 5)
        self.mlp = nn.Sequential(nn.Linear(conv_channels[1], hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 2))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def batch(self, graphs: List[PairGraph], table: torch.Tensor):
        """Pad graphs: adjacency (B, n, n), node features (B, n, 16 + D), mask (B, n)."""
        n = max(len(g.nodes) for g in graphs)
        dev = table.device
        adj = torch.zeros(len(graphs), n, n, device=dev)
        x = torch.zeros(len(graphs), n, NUM_LABELS + self.feat_dim, device=dev)
        mask = torch.zeros(len(graphs), n, dtype=torch.bool, device=dev)
        for b, g in enumerate(graphs):
            m = len(g.nodes)
            adj[b, :m, :m] = g.adj.to(dev)
            x[b, :m] = torch.cat([F.one_hot(g.labels.to(dev), NUM_LABELS).float(), table[g.nodes.to(dev)]], 1)
            mask[b, :m] = True
        return adj, x, mask

    def forward(self, graphs: List[PairGraph], table: torch.Tensor) -> torch.Tensor:
        """graphs: B pair subgraphs; table: (N, D) node features by global id -> (B, 2) log-probabilities."""
        adj, h, mask = self.batch(graphs, table)
        deg = adj.sum(-1, keepdim=True)
        eye = torch.eye(adj.shape[1], device=adj.device)
        keep = mask.unsqueeze(-1).float()
        outs = []
        for lin in self.convs:
            h = torch.tanh(lin((adj + eye) @ h) / (deg + 1)) * keep
            outs.append(h)
        h = sort_pool(torch.cat(outs, -1), mask, sortpool_k([len(g.nodes) for g in graphs]))   # (B, k, 1025)
        h = F.relu(self.conv1(h.reshape(h.shape[0], 1, -1)))                                   # (B, C1, k)
        h = F.max_pool1d(h, 2, 2)
        h = F.relu(self.conv2(h))                                                               # (B, C2, k/2-4)
        h = F.relu(F.adaptive_max_pool1d(h, 1).flatten(1))
        return F.log_softmax(self.mlp(h), dim=1)
