"""One MPRD training epoch (spec §8): ``iters`` steps of L = L_c + L_KL, then the memory's hard update.

Per step, for the batch (B images, global indices n_i, labels y_i):
1. hard pairs (P_i, N_i) per image (GCN-filtered with ``--use-gcn``); p~ = prototype mixing (random draws);
   partners (a random same-label image each, loaded with the training augmentation);
2. x = model(images), f^ = model(partners) (B, D) unit-norm, in one forward (:class:`mprd.ddp.TwoViews`);
3. L_c with p~ and the hard negatives' bank features; bank[n_i] <- x_i; R_q / R_p prototype tables; L_KL;
4. Adam step on L_c + L_KL; memory hard update with x; with ``--use-gcn`` two GCN training pairs per image.

The random draws keep the order of the original loop (mixing, then partners, then GCN pairs), and nothing drawn in
step 1 depends on x, so computing them before the forward changes no value. Under torchrun (mprd/ddp.py) steps 1,
3 (the bank and tables) and 4 (memory, pairs) run on the gathered global batch on every rank; the two forwards and
the loss means over the rank's share.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from common.distributed import average_scalars
from common.meters import AverageMeter
from mprd.ddp import gather_batch, share_slice
from mprd.loss import contrastive_loss, relative_entropy, relative_prototypes
from mprd.memory import ClusterMemory
from mprd.mixing import HardPairs, mix_prototypes


class EpochState:
    """What one epoch trains against.

    Args:
        idx2labels: (N,) pseudo-labels of all sorted training images (outliers unique, >= K).
        prior: (N,) previous epoch's labels.
        bank: (N, D) per-image feature bank (updated in place).
        memory: the :class:`ClusterMemory`.
        nidx: (M,) global index of each image of the epoch's training list (clustered images only).
        partner_loader: ``fn(global indices) -> (B, 3, H, W)`` images with the training augmentation.
        rng: NumPy random state of this epoch's draws (mixing, partners, GCN pairs).
    """

    def __init__(self, idx2labels, prior, bank, memory: ClusterMemory, nidx, partner_loader: Callable,
                 rng: np.random.RandomState):
        self.idx2labels, self.prior, self.bank, self.memory = idx2labels, prior, bank, memory
        self.nidx, self.partner_loader, self.rng = np.asarray(nidx), partner_loader, rng
        self.members = {}
        for n in self.nidx.tolist():
            self.members.setdefault(int(idx2labels[n]), []).append(n)


def collect_pairs(n: int, pos: np.ndarray, neg: np.ndarray, batch_n: np.ndarray, batch_y: np.ndarray,
                  bank: torch.Tensor, rng: np.random.RandomState) -> List[tuple]:
    """Two GCN training pairs for image n (spec §7.3): a positive from {n} u P (label 1) and a hard negative
    (label 0): the member of N most similar to a random anchor of {n} u P, else the most similar in-batch image of
    another label. Returns ``[(u, v, 1), (a, m, 0)]``."""
    group = np.unique(np.concatenate([[n], pos]))
    y = batch_y[batch_n == n][0]
    if len(group) >= 2:
        u, v = rng.choice(group, size=2, replace=False)
    else:
        same = batch_n[batch_y == y]
        u, v = rng.choice(same, size=2, replace=True)
    a = int(rng.choice(group))
    cand = neg if len(neg) else batch_n[batch_y != y]
    if len(cand) == 0:
        return [(int(u), int(v), 1)]
    m = cand[int(torch.argmax(bank[torch.as_tensor(cand)] @ bank[a]))]
    return [(int(u), int(v), 1), (a, int(m), 0)]


def train_epoch(model, optimizer, loader, state: EpochState, device, temp: float = 0.05, lamb: float = 0.05,
                alpha: float = 0.2, kl_mix: float = 0.1, kl_temp: float = 0.05, link_fn: Optional[Callable] = None,
                collect_gcn_pairs: bool = False, fix_fallback: bool = False, print_freq: int = 10,
                log: Callable = print, on_step: Optional[Callable] = None, max_batches: int = 0) -> Dict:
    """Train one epoch; returns mean ``loss``, ``loss_c``, ``loss_kl`` and, if asked, ``pairs`` (GCN pairs).

    ``model``: ``model(images, partners) -> (x, f^)``, i.e. :class:`mprd.ddp.TwoViews` (DDP-wrapped under torchrun);
    ``loader`` yields this rank's share of each global batch (the whole batch alone)."""
    model.train()
    pairs_fn = HardPairs(state.idx2labels, state.prior, link_fn, fix_fallback)
    meters = {k: AverageMeter() for k in ("loss", "loss_c", "loss_kl")}
    gcn_pairs: List[tuple] = []
    memory, bank, rng = state.memory, state.bank, state.rng
    t0 = time.time()
    for it, (images, labels, _, pos_in_list) in enumerate(loader):
        if max_batches and it >= max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        # torchrun: this rank holds a share of the global batch; every draw and every shared update below uses the
        # global batch (n, y), in the single-process order (mprd/ddp.py); alone the share is the batch
        n = state.nidx[gather_batch(pos_in_list.to(device)).cpu().numpy()]
        y_all = gather_batch(labels)
        mine = share_slice(len(n))
        hp = pairs_fn.batch(n)
        positives, negatives = [p for p, _, _ in hp], [q for _, q, _ in hp]
        mixed, _ = mix_prototypes(memory.features, bank, y_all.tolist(), positives, rng, alpha)
        hard_negs = [bank[torch.as_tensor(q, dtype=torch.long)].clone() for q in negatives]
        partners = [int(rng.choice(state.members[int(state.idx2labels[i])])) for i in n]
        x, fhat = model(images, state.partner_loader(partners[mine]).to(device))
        loss_c = contrastive_loss(x, labels, memory.features, mixed, hard_negs[mine], temp, lamb)
        x_all, fhat_all = gather_batch(x), gather_batch(fhat)
        bank[torch.as_tensor(n)] = x_all.detach()
        neg_labels = [state.idx2labels[q] for q in negatives]
        y_list = y_all.tolist()
        table_q = relative_prototypes(memory.features, bank, x_all, y_list, positives, hard_negs, neg_labels, kl_mix)
        table_p = relative_prototypes(memory.features, bank, fhat_all, y_list, positives, hard_negs, neg_labels,
                                      kl_mix)
        loss_kl = relative_entropy(x, fhat, table_q, table_p, kl_temp)
        loss = loss_c + loss_kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        memory.hard_update(x_all.detach(), y_all)
        if collect_gcn_pairs:
            y = y_all.cpu().numpy()
            for i, (p, q) in zip(n, zip(positives, negatives)):
                gcn_pairs += collect_pairs(int(i), p, q, n, y, bank, rng)
        shown = average_scalars({"loss": float(loss.detach()), "loss_c": float(loss_c.detach()),
                                 "loss_kl": float(loss_kl.detach())})  # torchrun: the global batch's means
        for k in ("loss", "loss_c", "loss_kl"):
            meters[k].update(shown[k], len(n))
        if on_step is not None:
            on_step(it, {k: m.val for k, m in meters.items()})
        if print_freq and (it + 1) % print_freq == 0:
            log(f"  iter {it + 1}/{len(loader)}  loss {meters['loss'].avg:.3f} (c {meters['loss_c'].avg:.3f}, "
                f"kl {meters['loss_kl'].avg:.3f})  {time.time() - t0:.0f}s")
    out = {k: m.avg for k, m in meters.items()}
    if collect_gcn_pairs:
        out["pairs"] = gcn_pairs
    return out
