"""Enclosing subgraph of an image pair and its DRNL node labels (spec §7.1; SEAL's double-radius labelling).

For a pair (u, v) over a feature table: the left side is the ``topk`` most cosine-similar entries to u's feature
(first entry overwritten with u) joined to u; the right side the ``topk`` most similar to v's feature joined to the
first of them (r0, normally v). The target edge (u, v) is prepended; nodes are relabelled in ascending global id.

``targets='smallest'`` (default, the original's behaviour, spec P8): DRNL treats local nodes 0 and 1 (the two
smallest global ids, u and v only by coincidence) as the targets, and the edge between them is removed from the
graph while the real (u, v) edge stays. ``targets='pair'``: u and v are the targets and (u, v) is removed (SEAL).
"""
from __future__ import annotations

from collections import deque
from typing import List, NamedTuple, Optional

import numpy as np
import torch

MAX_LABEL = 15


class PairGraph(NamedTuple):
    """adj (n, n) symmetric 0/1 float; labels (n,) int64 DRNL in [0, 15]; nodes (n,) global ids ascending."""
    adj: torch.Tensor
    labels: torch.Tensor
    nodes: torch.Tensor


def bfs(adj: np.ndarray, src: int, removed: int) -> np.ndarray:
    """Unweighted shortest-path lengths from ``src`` with node ``removed`` deleted (inf where unreachable)."""
    n = adj.shape[0]
    dist = np.full(n, np.inf)
    dist[src] = 0
    queue = deque([src])
    while queue:
        a = queue.popleft()
        for b in np.nonzero(adj[a])[0]:
            if b != removed and dist[b] == np.inf:
                dist[b] = dist[a] + 1
                queue.append(b)
    return dist


def drnl_labels(adj: np.ndarray, t0: int, t1: int) -> np.ndarray:
    """DRNL: targets get 1; node i gets 1 + min(d0, d1) + (d//2)(d//2 + d%2 - 1), d = d0 + d1, where d0 is its
    distance to t1 with t0 removed and d1 its distance to t0 with t1 removed; unreachable -> 0; clipped at 15."""
    d0, d1 = bfs(adj, t1, t0), bfs(adj, t0, t1)
    labels = np.zeros(adj.shape[0], dtype=np.int64)
    for i in range(adj.shape[0]):
        if i in (t0, t1):
            labels[i] = 1
        elif np.isfinite(d0[i]) and np.isfinite(d1[i]):
            d = int(d0[i] + d1[i])
            h, m = divmod(d, 2)
            labels[i] = 1 + int(min(d0[i], d1[i])) + h * (h + m - 1)
    return np.clip(labels, 0, MAX_LABEL)


def neighbourhood(search: torch.Tensor, query: torch.Tensor, topk: int) -> torch.Tensor:
    """Positions of the ``topk`` rows of ``search`` (M, D) most similar to ``query`` (D,), descending (stable)."""
    return torch.sort(search @ query, descending=True, stable=True).indices[:topk]


def pair_edges(u: int, v: int, u_feat: torch.Tensor, v_feat: torch.Tensor, search: torch.Tensor,
               search_ids: Optional[torch.Tensor] = None, topk: int = 8) -> np.ndarray:
    """(E, 2) global-id edges of the pair's neighbourhoods (unique rows, self-loops dropped), without (u, v)."""
    ids = search_ids if search_ids is not None else torch.arange(len(search))
    left = ids[neighbourhood(search, u_feat, topk)].tolist()
    right = ids[neighbourhood(search, v_feat, topk)].tolist()
    left[0] = u
    edges = [(u, j) for j in left[1:]] + [(j, right[0]) for j in right[1:]]
    edges = np.unique(np.array([e for e in edges if e[0] != e[1]] or np.zeros((0, 2)), dtype=np.int64), axis=0)
    return edges[~(((edges[:, 0] == u) & (edges[:, 1] == v)) | ((edges[:, 0] == v) & (edges[:, 1] == u)))] \
        if len(edges) else edges.reshape(0, 2)


def label_subgraph(u: int, v: int, edges: np.ndarray, targets: str = "smallest") -> PairGraph:
    """Prepend (u, v), relabel nodes ascending, build the undirected adjacency and the DRNL labels."""
    edges = np.concatenate([np.array([[u, v]], dtype=np.int64), edges.reshape(-1, 2)])
    nodes = np.unique(edges)
    local = np.searchsorted(nodes, edges)
    n = len(nodes)
    adj = np.zeros((n, n), dtype=np.float32)
    adj[local[:, 0], local[:, 1]] = adj[local[:, 1], local[:, 0]] = 1
    np.fill_diagonal(adj, 0)
    if targets == "smallest":
        t0, t1 = 0, 1
    elif targets == "pair":
        t0, t1 = int(np.searchsorted(nodes, u)), int(np.searchsorted(nodes, v))
    else:
        raise ValueError("targets must be 'smallest' or 'pair'")
    labels = drnl_labels(adj, t0, t1)
    if n > 1:
        adj[t0, t1] = adj[t1, t0] = 0       # the target edge leaves the graph the GCN sees
    return PairGraph(torch.from_numpy(adj), torch.from_numpy(labels), torch.from_numpy(nodes))


def build_graphs(pairs, feats: torch.Tensor, search: torch.Tensor, search_ids=None, topk: int = 8,
                 targets: str = "smallest", u_feats=None, v_feats=None) -> List[PairGraph]:
    """Subgraphs of ``pairs`` [(u, v), ...]; neighbourhoods from ``u_feats`` / ``v_feats`` (default feats[u], feats[v])."""
    out = []
    for p, (u, v) in enumerate(pairs):
        uf = feats[u] if u_feats is None else u_feats[p]
        vf = feats[v] if v_feats is None else v_feats[p]
        out.append(label_subgraph(int(u), int(v), pair_edges(int(u), int(v), uf, vf, search, search_ids, topk),
                                  targets))
    return out
