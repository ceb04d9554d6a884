"""The GCN during CNN training (spec §7.3-7.4): pair-link prediction to filter hard pairs, and the per-epoch
Reptile update on the pairs collected during the epoch."""
from __future__ import annotations

import os
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from common.checkpoint import load_checkpoint
from common.errors import ReidError
from mprd.gcn.dgcnn import DGCNN
from mprd.gcn.graph import build_graphs
from mprd.gcn.reptile import reptile_step


def default_gcn_path(exp_dir: str, dataset: str) -> str:
    return os.path.join(exp_dir, "mprd_gcn", dataset, "gcn.pth")


def pretrain_command(dataset: str, exp_dir: str) -> str:
    return f"python mprd/gcn_pretrain.py -d {dataset} --exp-dir {exp_dir} (add the CNN flags of this run)"


def build_gcn(feat_dim: int, width: str = "full") -> DGCNN:
    """The spec's DGCNN (``full``) or a narrow one for CPU runs (``small``: 64, 64, 1 / 32, 64 / 64)."""
    if width == "small":
        return DGCNN(feat_dim, latent=(64, 64, 1), conv_channels=(32, 64), hidden=64)
    return DGCNN(feat_dim)


class PairRelation:
    """Holds the GCN. Args: gcn, path of its pre-trained weights, device, top-k, DRNL target mode, Reptile args."""

    def __init__(self, gcn: DGCNN, path: str, device, topk: int = 8, targets: str = "smallest", lr: float = 0.02,
                 rule: str = "original", max_batches: int = 0, pair_batch: int = 128):
        self.gcn, self.path, self.device = gcn.to(device), path, device
        self.topk, self.targets, self.rule = topk, targets, rule
        self.max_batches, self.pair_batch = max_batches, pair_batch
        self.outer = torch.optim.SGD(self.gcn.parameters(), lr=lr, weight_decay=5e-4)
        self.reload()

    @classmethod
    def from_args(cls, args, feat_dim: int, device) -> "PairRelation":
        path = args.gcn_checkpoint or default_gcn_path(args.exp_dir, args.dataset)
        if not os.path.isfile(path):
            raise ReidError(f"--use-gcn needs a pre-trained GCN; {path} does not exist",
                            fix=f"pre-train it first: {pretrain_command(args.dataset, args.exp_dir)}, or pass "
                                f"--gcn-checkpoint FILE (the original's weights cannot be downloaded)", where=path)
        meta = load_checkpoint(path)
        if int(meta["feat_dim"]) != feat_dim:
            raise ReidError(f"GCN {path} was pre-trained on {int(meta['feat_dim'])}-d features, this -a gives "
                            f"{feat_dim}-d", fix="pre-train the GCN with the same -a", where=path)
        return cls(build_gcn(feat_dim, meta.get("width", "full")), path, device, lr=args.gcn_lr,
                   rule=args.reptile_rule, max_batches=args.reptile_batches,
                   targets=meta.get("targets", "smallest"))

    def reload(self) -> None:
        """Back to the pre-trained weights (the original re-creates its GCN holder every epoch, spec P6)."""
        self.gcn.load_state_dict(load_checkpoint(self.path, map_location=self.device)["state_dict"])

    def state(self) -> Dict:
        return {"state_dict": self.gcn.state_dict(), "optimizer": self.outer.state_dict()}

    def load_state(self, state: Dict) -> None:
        self.gcn.load_state_dict(state["state_dict"])
        self.outer.load_state_dict(state["optimizer"])

    @torch.no_grad()
    def predict(self, pairs, bank: torch.Tensor) -> np.ndarray:
        """(P,) P(link) of index pairs over the bank (eval mode: no dropout)."""
        was = self.gcn.training
        self.gcn.eval()
        out = np.concatenate([self.gcn(build_graphs(pairs[s:s + 512], bank, bank, topk=self.topk,
                                                    targets=self.targets), bank)[:, 1].exp().cpu().numpy()
                              for s in range(0, len(pairs), 512)])
        self.gcn.train(was)
        return out

    def link_fn(self, bank: torch.Tensor) -> Callable:
        return lambda pairs: self.predict(pairs, bank)

    def reptile_epoch(self, pairs: List[tuple], bank: torch.Tensor, rng: np.random.RandomState) -> Dict:
        """Shuffled batches of ``pair_batch`` (drop_last); 3 inner steps each on subgraphs rebuilt from the bank."""
        self.gcn.train()
        order = rng.permutation(len(pairs))
        nb = len(pairs) // self.pair_batch
        if self.max_batches:
            nb = min(nb, self.max_batches)
        losses = []
        params = list(self.gcn.parameters())
        for b in range(nb):
            sel = [pairs[i] for i in order[b * self.pair_batch:(b + 1) * self.pair_batch]]
            target = torch.tensor([y for _, _, y in sel], device=self.device)

            def loss_fn():
                graphs = build_graphs([(u, v) for u, v, _ in sel], bank, bank, topk=self.topk, targets=self.targets)
                return F.nll_loss(self.gcn(graphs, bank), target)
            losses.append(reptile_step(params, loss_fn, self.outer, 3, self.outer.param_groups[0]["lr"], self.rule))
        return {"pairs": len(pairs), "batches": nb, "loss": float(np.mean(losses)) if losses else float("nan")}
