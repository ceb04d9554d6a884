"""MPRD losses (spec §8.2, §8.3): contrastive loss with mixed positive prototypes and hard negatives, and the
relative-entropy (positive-pair alignment) loss."""
from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def contrastive_loss(x: torch.Tensor, targets: torch.Tensor, memory: torch.Tensor, mixed: torch.Tensor,
                     hard_negs: Sequence[torch.Tensor], temp: float = 0.05, lamb: float = 0.05) -> torch.Tensor:
    """L_c = -(1/B) sum_i log[ exp(o_iy/t) / (sum_k exp(o_ik/t) + lamb sum_h exp(x_i.f_h/t)) ].

    o_ik = x_i . M_k for k != y_i and o_iy = x_i . p~[y_i]. Gradients reach x only (memory, p~ and the hard
    negatives' bank features are constants); each sample's gradient uses its own row replacement (the original's
    in-place backward lets earlier rows leak into later samples, spec §8.2: not reproduced).

    Args:
        x: (B, D) unit-norm features.
        targets: (B,) labels in [0, K).
        memory: (K, D) M.
        mixed: (K, D) p~ (see :func:`mprd.mixing.mix_prototypes`).
        hard_negs: B tensors (H_i, D) of hard-negative bank features (H_i may be 0).
        temp: tau.
        lamb: hard-negative weight lambda.
    Returns:
        scalar loss.
    """
    memory, mixed = memory.detach(), mixed.detach()
    logits = x @ memory.t()                                                      # (B, K)
    pos = (x * mixed[targets]).sum(1)                                            # (B,)
    logits = logits.scatter(1, targets.view(-1, 1), pos.view(-1, 1)) / temp
    losses = []
    for i in range(x.shape[0]):
        terms = logits[i]
        h = hard_negs[i]
        if h is not None and len(h):
            terms = torch.cat([terms, math.log(lamb) + (h.detach() @ x[i]) / temp])
        losses.append(torch.logsumexp(terms, 0) - logits[i, targets[i]])
    return torch.stack(losses).mean()


def relative_prototypes(memory: torch.Tensor, bank: torch.Tensor, feats: torch.Tensor, targets: Sequence[int],
                        positives: List[np.ndarray], hard_negs: Sequence[torch.Tensor],
                        neg_labels: Sequence[np.ndarray], mix: float = 0.1) -> torch.Tensor:
    """Prototype table R for the alignment loss (spec §8.3, step 2), sequential over the batch.

    From R = clone(M): R[y_i] <- normalise(mix * bank[j] + (1 - mix) * R[y_i]) with j = argmin_{j in P_i}
    feats_i . bank[j] (the least similar positive); then for each hard negative h of i whose label y_h is a cluster
    (< K) other than y_i: R[y_h] <- normalise(mix * f_h + (1 - mix) * R[y_h]).

    Args:
        memory: (K, D) M before this step's update.
        bank: (N, D) feature bank (already holding this batch's features).
        feats: (B, D) x (for R_q) or the partners' features f^ (for R_p).
        targets: (B,) labels.
        positives: B index arrays P_i.
        hard_negs: B tensors (H_i, D) of hard-negative features (copies taken before the bank update).
        neg_labels: B arrays (H_i,) of the hard negatives' labels.
        mix: the mixing weight (0.1).
    Returns:
        (K, D) table, no gradient.
    """
    with torch.no_grad():
        table = memory.detach().clone()
        k = table.shape[0]
        for i, y in enumerate(targets):
            y = int(y)
            pos = torch.as_tensor(np.asarray(positives[i]), dtype=torch.long)
            j = pos[int(torch.argmin(bank[pos] @ feats[i].detach()))]
            table[y] = F.normalize(mix * bank[j] + (1 - mix) * table[y], dim=0)
            for f_h, y_h in zip(hard_negs[i], neg_labels[i]):
                y_h = int(y_h)
                if y_h < k and y_h != y:
                    table[y_h] = F.normalize(mix * f_h + (1 - mix) * table[y_h], dim=0)
    return table


def relative_entropy(x: torch.Tensor, partner: torch.Tensor, table_q: torch.Tensor, table_p: torch.Tensor,
                     temp: float = 0.05) -> torch.Tensor:
    """L_KL = (1/B) sum_i sum_k P_ik (log P_ik - log Q_ik), P = softmax(x R_q^T / T) (not detached, as with
    current PyTorch in the original), Q = softmax(f^ R_p^T / T).

    Args:
        x: (B, D) features of the batch images; partner: (B, D) features of their partner images.
        table_q, table_p: (K, D) prototype tables (see :func:`relative_prototypes`).
    Returns:
        scalar loss.
    """
    log_p = F.log_softmax(x @ table_q.t() / temp, dim=1)
    log_q = F.log_softmax(partner @ table_p.t() / temp, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()
