"""Cluster memory with cluster-contrast's "hard" momentum update (spec §8.2).

The memory M (K, D) holds one unit-norm prototype per pseudo-identity. After each training step, for every label y
in the batch the instance with the *lowest* similarity x . M_y (the hardest) updates it:
M_y <- normalise(m * M_y + (1 - m) * x_hard). The original does this inside the custom backward of its logits
function, whatever ``--use-hard`` says (spec P3); here it is an explicit call after the backward pass, with the
same inputs (the batch features of this step and the memory before the update).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterMemory(nn.Module):
    """Args: num_features D, num_samples K, temp tau (0.05), momentum m (0.2; README commands 0.1)."""

    def __init__(self, num_features: int, num_samples: int, temp: float = 0.05, momentum: float = 0.2):
        super().__init__()
        self.temp, self.momentum = float(temp), float(momentum)
        self.register_buffer("features", torch.zeros(num_samples, num_features))

    @torch.no_grad()
    def hard_update(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        """Hard-instance momentum update. x: (B, D) unit-norm batch features (detached); targets: (B,) labels."""
        x = x.detach()
        for y in torch.unique(targets).tolist():
            members = torch.nonzero(targets == y).flatten()
            sims = x[members] @ self.features[y]
            hard = members[int(torch.argmin(sims))]          # first of equal minima, as np.argmin
            self.features[y] = F.normalize(self.momentum * self.features[y] + (1 - self.momentum) * x[hard], dim=0)
