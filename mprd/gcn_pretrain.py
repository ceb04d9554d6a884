"""Offline GCN meta-data generation and pre-training (spec §7.5; the original's gen_meta_gcn_data.py +
gcn_pre_train.py, whose weights cannot be downloaded here), plus a link-prediction AUC on held-out pairs.

    python mprd/gcn_pretrain.py -d market1501 --pretrained-path resnet50-0676ba61.pth
    python mprd/gcn_pretrain.py -d synthetic -a resnet18 --init-weights WARM.pth --height 128 --width 64 --gcn-width small

1. Meta data: ``--num-meta`` (5) random training images (seed 1), each augmented ``--meta-aug`` (8) times and
   embedded by the CNN (train-mode BN over the batch, no gradient) -> (5, 8, D). No identities are used:
   positives are augmentations of the same image.
2. Phase A: one Reptile meta-step of 3 inner steps, each on 10 positive + 10 negative meta graphs (anchor: a random
   augmentation; positive: another augmentation of the same image; negative: the most similar augmentation of
   another image), neighbourhoods searched among the meta features (ids offset by N).
3. Phase B: one pass over the training images in shuffled batches of ``-b`` (64) with the training augmentation:
   pairs (n, n) (left neighbourhood from the augmented view, right from the bank feature; label 1) and (n, m) with
   m the most similar other image of the batch (label 0); the 3-inner-step Reptile update (``--reptile-rule``).
4. Saves ``{state_dict, feat_dim, width, targets}`` to ``--gcn-out`` (default
   ``<exp-dir>/mprd_gcn/<dataset>/gcn.pth``, where ``mprd/main.py --use-gcn`` looks).
5. ``--auc-pairs P``: AUC of P(link) on pairs of the *test gallery* (identities never trained on): per anchor one
   same-identity pair and one hardest (and, second figure, one random) different-identity pair, before and after
   pre-training, beside the cosine similarity's AUC (the hidden identities are read only here, for the figure).
"""
from __future__ import annotations

import argparse
import os
import random
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.checkpoint import save_checkpoint  # noqa: E402
from common.datasets.base import records_arrays  # noqa: E402
from common.errors import run_main  # noqa: E402
from common.run import setup_run  # noqa: E402


def get_parser():
    from mprd.main import get_parser as mprd_parser
    p = argparse.ArgumentParser("mprd-gcn-pretrain", parents=[mprd_parser()], add_help=False, conflict_handler="resolve",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("GCN pre-training")
    g.add_argument("--num-meta", dest="num_meta", type=int, default=5)
    g.add_argument("--meta-aug", dest="meta_aug", type=int, default=8)
    g.add_argument("--gcn-width", dest="gcn_width", choices=["full", "small"], default="full")
    g.add_argument("--targets", choices=["smallest", "pair"], default="smallest", help="DRNL target nodes (spec P8)")
    g.add_argument("--gcn-out", dest="gcn_out", default="")
    g.add_argument("--auc-pairs", dest="auc_pairs", type=int, default=0, help="held-out pairs for the AUC (0: skip)")
    return p


def gcn_loss(gcn, pairs, labels, table, search, search_ids, targets, u_feats=None, v_feats=None):
    from mprd.gcn.graph import build_graphs
    graphs = build_graphs(pairs, table, search, search_ids, 8, targets, u_feats, v_feats)
    return F.nll_loss(gcn(graphs, table), torch.tensor(labels, device=table.device))


def meta_features(model, train, args, device, rng: random.Random) -> torch.Tensor:
    from common.data.dataset import ImageDataset
    from common.data.transforms import build_transforms
    ds = ImageDataset(train, build_transforms(args.height, args.width, is_train=True))
    chosen = rng.sample(range(len(train)), args.num_meta)
    model.train()
    views = []
    with torch.no_grad():
        for _ in range(args.meta_aug):
            views.append(model(torch.stack([ds[i][0] for i in chosen]).to(device)))
    model.eval()
    return torch.stack(views, 1)                                  # (num_meta, meta_aug, D)


def link_auc(relation_gcn, feats, pids, args, targets, n_pairs, device, seed=0, negative="hardest"):
    """AUC of the GCN's P(link) and of the cosine similarity on held-out pairs: per anchor a random same-identity
    image (label 1) and a different-identity one (label 0): the most similar (``negative='hardest'``; then even the
    cosine's AUC is below 0.5 when the hardest impostor beats a random match, as with the synthetic features here)
    or a random one (``'random'``)."""
    from sklearn.metrics import roc_auc_score
    from mprd.gcn.graph import build_graphs
    rng = np.random.RandomState(seed)
    valid = np.nonzero(pids > 0)[0]
    sims = feats @ feats.t()
    pairs, labels = [], []
    for a in rng.choice(valid, size=min(n_pairs, len(valid)), replace=False):
        same = valid[(pids[valid] == pids[a]) & (valid != a)]
        if not len(same):
            continue
        pairs.append((int(a), int(rng.choice(same))))
        diff = np.nonzero(pids != pids[a])[0]
        if negative == "random":
            pairs.append((int(a), int(rng.choice(diff))))
        else:
            pairs.append((int(a), int(diff[int(torch.argmax(sims[a, torch.as_tensor(diff)]))])))
        labels += [1, 0]
    relation_gcn.eval()
    with torch.no_grad():
        prob = torch.cat([relation_gcn(build_graphs(pairs[s:s + 256], feats, feats, targets=targets), feats)[:, 1]
                          for s in range(0, len(pairs), 256)]).exp().cpu().numpy()
    cos = np.array([float(sims[u, v]) for u, v in pairs])
    return float(roc_auc_score(labels, prob)), float(roc_auc_score(labels, cos)), len(pairs)


def main(argv=None):
    from mprd.main import resolve
    from mprd import engine
    from mprd.evaluate import extract
    from mprd.gcn.relation import build_gcn, default_gcn_path
    from mprd.gcn.reptile import reptile_step
    from common.data.dataset import ImageDataset
    from common.data.transforms import build_transforms
    from mprd.ddp import one_process_only
    one_process_only("mprd/gcn_pretrain.py")
    args = resolve(get_parser().parse_args(argv))
    run = setup_run(args, "mprd_gcn")
    dataset = engine.load_dataset(args)
    train, _ = engine.unlabelled_train(dataset)
    model = engine.build_model(args).to(run.device).eval()
    bank = extract(model, train, args, run.device, "bank")
    n, d = bank.shape
    bank = bank.to(run.device)
    gcn = build_gcn(d, args.gcn_width).to(run.device)
    torch.manual_seed(args.seed)
    outer = torch.optim.SGD(gcn.parameters(), lr=args.gcn_lr, weight_decay=args.weight_decay)
    params = list(gcn.parameters())
    q_pids, _, _ = records_arrays(dataset.gallery)
    if args.auc_pairs:
        gal = extract(model, dataset.gallery, args, run.device, "gallery").to(run.device)
        auc0, cos_auc, npairs = link_auc(gcn, gal, q_pids, args, args.targets, args.auc_pairs, run.device)
        run.log(f"held-out link AUC before pre-training: GCN {auc0:.3f}, cosine {cos_auc:.3f} ({npairs} pairs)")
        rnd0, rcos, _ = link_auc(gcn, gal, q_pids, args, args.targets, args.auc_pairs, run.device, negative="random")
        run.log(f"  with random negatives: GCN {rnd0:.3f}, cosine {rcos:.3f}")
    rng = random.Random(1)
    meta = F.normalize(meta_features(model, train, args, run.device, rng), dim=-1)
    m, a = meta.shape[:2]
    table = torch.cat([bank, meta.reshape(m * a, d)])
    meta_ids = torch.arange(n, n + m * a, device=run.device)

    def phase_a_loss():
        pairs, labels = [], []
        for _ in range(10):
            i, k = rng.randrange(m), rng.randrange(a)
            anchor = n + i * a + k
            pairs.append((anchor, n + i * a + rng.randrange(a)))
            others = [j for j in range(m * a) if j // a != i]
            sim = table[torch.as_tensor(others, device=run.device) + n] @ table[anchor]
            pairs.append((anchor, n + others[int(torch.argmax(sim))]))
            labels += [1, 0]
        return gcn_loss(gcn, pairs, labels, table, table[n:], meta_ids, args.targets)
    gcn.train()
    la = reptile_step(params, phase_a_loss, outer, 3, args.gcn_lr, rule="proper")
    run.log(f"phase A (meta data, {m}x{a} views): loss {la:.3f}")
    tf = build_transforms(args.height, args.width, is_train=True)
    ds = ImageDataset(train, tf)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed)).tolist()
    bs = args.batch_size
    nb = n // bs if not args.max_batches else min(n // bs, args.max_batches)
    for b in range(nb):
        idx = order[b * bs:(b + 1) * bs]
        with torch.no_grad():
            aug = model(torch.stack([ds[i][0] for i in idx]).to(run.device))
        sim = bank[idx] @ bank[idx].t()
        sim.fill_diagonal_(-2)
        neg = [idx[int(j)] for j in sim.argmax(1)]
        pairs = [(i, i) for i in idx] + list(zip(idx, neg))
        labels = [1] * len(idx) + [0] * len(idx)
        u_feats = torch.cat([aug, aug])
        v_feats = torch.cat([bank[idx], bank[neg]])

        def loss_fn():
            return gcn_loss(gcn, pairs, labels, bank, bank, None, args.targets, u_feats, v_feats)
        lb = reptile_step(params, loss_fn, outer, 3, args.gcn_lr, rule=args.reptile_rule)
        run.log(f"phase B batch {b + 1}/{nb}: loss {lb:.3f}")
        run.log_metrics(b, prefix="gcn_pretrain", loss=lb)
    out = args.gcn_out or default_gcn_path(args.exp_dir, args.dataset)
    save_checkpoint(out, {"state_dict": gcn.state_dict(), "feat_dim": d, "width": args.gcn_width,
                          "targets": args.targets}, args=vars(args))
    run.log(f"saved the pre-trained GCN to {out}")
    if args.auc_pairs:
        auc1, cos_auc, npairs = link_auc(gcn, gal, q_pids, args, args.targets, args.auc_pairs, run.device)
        run.log(f"held-out link AUC after pre-training: GCN {auc1:.3f}, cosine {cos_auc:.3f} ({npairs} pairs)")
        rnd1, rcos, _ = link_auc(gcn, gal, q_pids, args, args.targets, args.auc_pairs, run.device, negative="random")
        run.log(f"  with random negatives: GCN {rnd1:.3f}, cosine {rcos:.3f}")
        run.write_results("link_auc", {"gcn_before": auc0, "gcn_after": auc1, "cosine": cos_auc, "pairs": npairs,
                                       "random_neg": {"gcn_before": rnd0, "gcn_after": rnd1, "cosine": rcos}})
    run.close()
    return out


if __name__ == "__main__":
    run_main(main)
