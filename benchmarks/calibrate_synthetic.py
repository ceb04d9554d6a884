"""Calibrate the synthetic dataset: colour-histogram baseline vs a small CNN trained from scratch on CPU.

Not a test. Generates (or reuses) the default synthetic dataset, evaluates the plain global HSV colour
histogram (``common.eval.histogram``) and a few histogram variants under the Market protocol, checks the
temporal signal (same-id transit times cluster per camera pair), then trains torchvision ResNet-18
(``weights=None``, BNNeck, cross-entropy with label smoothing + batch-hard triplet, Adam 3.5e-4) for a fixed
wall-clock budget and evaluates cosine distance on the pre-classifier (BNNeck) features.

    python benchmarks/calibrate_synthetic.py --data-dir data --minutes 7
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.datasets import synthetic_generate  # noqa: E402
from common.datasets.base import records_arrays  # noqa: E402
from common.datasets.synthetic import Synthetic  # noqa: E402
from common.eval.histogram import histogram_features_of_records  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def market_eval(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10):
    """Market protocol on a (Q, G) distance matrix: drop same-pid-same-cam gallery entries, skip queries
    without a valid match. Returns (cmc (max_rank,), mAP)."""
    order = np.argsort(dist, axis=1, kind="stable")
    cmcs, aps = [], []
    for i in range(dist.shape[0]):
        o = order[i]
        keep = ~((g_pids[o] == q_pids[i]) & (g_cams[o] == q_cams[i]))
        match = (g_pids[o][keep] == q_pids[i]).astype(np.float64)
        if not match.any():
            continue
        cmc = np.minimum(match.cumsum(), 1)[:max_rank]
        cmcs.append(np.pad(cmc, (0, max_rank - len(cmc)), constant_values=1))
        hits = match.cumsum()
        aps.append(float((hits / np.arange(1, len(match) + 1) * match).sum() / match.sum()))
    return np.mean(cmcs, axis=0), float(np.mean(aps))


def report(name, dist, ds):
    """Print and return (rank-1, mAP): ``common.eval.rank.evaluate_rank`` if present, else :func:`market_eval`."""
    qp, qc, _ = records_arrays(ds.query)
    gp, gc, _ = records_arrays(ds.gallery)
    try:
        from common.eval.rank import evaluate_rank
        r = evaluate_rank(dist.astype(np.float32), qp, gp, qc, gc, max_rank=10)
        cmc, mAP = r["cmc"], r["mAP"]
    except ImportError:
        cmc, mAP = market_eval(dist, qp, gp, qc, gc)
    print(f"{name:<38} rank-1 {100 * cmc[0]:5.1f}  rank-5 {100 * cmc[4]:5.1f}  mAP {100 * mAP:5.1f}", flush=True)
    return cmc[0], mAP


def temporal_check(ds):
    """Spread (std) of |frame difference| of same-id vs different-id cross-camera (query, gallery) pairs."""
    qp, qc, qf = records_arrays(ds.query)
    gp, gc, gf = records_arrays(ds.gallery)
    same, diff = [], []
    for a in range(ds.extra["meta"]["config"]["num_cams"]):
        for b in range(a + 1, ds.extra["meta"]["config"]["num_cams"]):
            qi, gi = np.where(qc == a)[0], np.where((gc == b) & (gp > 0))[0]
            d = np.abs(gf[gi][None, :] - qf[qi][:, None])
            m = qp[qi][:, None] == gp[gi][None, :]
            if m.sum() >= 5:
                same.append(np.std(d[m]) / ds.extra["fps"])
                diff.append(np.std(d[~m]) / ds.extra["fps"])
    print(f"temporal: std of |transit time| per camera pair: same id {np.median(same):.0f}s, "
          f"different ids {np.median(diff):.0f}s (median over {len(same)} pairs)")


def load_images(records):
    arr = np.stack([np.asarray(Image.open(r.img_path).convert("RGB")) for r in records])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, 3, 128, 64) uint8


class Net(nn.Module):
    """ResNet-18 trunk -> 512-D pooled feature -> BNNeck -> linear classifier."""

    def __init__(self, num_classes):
        super().__init__()
        r = torchvision.models.resnet18(weights=None)
        self.trunk = nn.Sequential(*list(r.children())[:-1])
        self.neck = nn.BatchNorm1d(512)
        self.neck.bias.requires_grad_(False)
        self.fc = nn.Linear(512, num_classes, bias=False)

    def forward(self, x):
        f = self.trunk(x).flatten(1)
        b = self.neck(f)
        return f, b, self.fc(b)


def batch_hard_triplet(f, y, margin=0.3):
    d = torch.cdist(f, f)
    same = y[:, None] == y[None, :]
    hardest_pos = (d * same).max(1).values
    hardest_neg = (d + 1e6 * same).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def augment(x):
    """uint8 (B, 3, H, W) -> normalised float with random flip and pad-8 random crop."""
    x = x.float() / 255
    flip = torch.rand(x.shape[0]) < 0.5
    x[flip] = x[flip].flip(3)
    h, w = x.shape[2:]
    xp = F.pad(x, (8, 8, 8, 8), mode="constant", value=0)
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        dy, dx = np.random.randint(0, 17, 2)
        out[i] = xp[i, :, dy:dy + h, dx:dx + w]
    return (out - MEAN) / STD


@torch.no_grad()
def extract(model, imgs, bs=128):
    model.eval()
    feats = []
    for i in range(0, len(imgs), bs):
        x = (imgs[i:i + bs].float() / 255 - MEAN) / STD
        feats.append(F.normalize(model(x)[1], dim=1))
    return torch.cat(feats).numpy()


def train_cnn(ds, minutes, p=16, k=4, seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    imgs = load_images(ds.train)
    labels = torch.tensor([r.pid for r in ds.train])
    by_id = {}
    for i, y in enumerate(labels.tolist()):
        by_id.setdefault(y, []).append(i)
    ids = np.array(sorted(by_id))
    model = Net(len(ids))
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    start, it, seen = time.time(), 0, 0
    budget = minutes * 60
    while time.time() - start < budget:
        model.train()
        if time.time() - start > 0.75 * budget:
            for g in opt.param_groups:
                g["lr"] = 3.5e-5
        chosen = np.random.choice(ids, p, replace=False)
        idx = np.concatenate([np.random.choice(by_id[c], k, replace=len(by_id[c]) < k) for c in chosen])
        x, y = augment(imgs[idx]), labels[idx]
        f, _, logits = model(x)
        loss = ce(logits, y) + batch_hard_triplet(f, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        it, seen = it + 1, seen + len(idx)
        if it % 25 == 0:
            acc = (logits.argmax(1) == y).float().mean().item()
            print(f"  iter {it:4d}  {time.time() - start:5.0f}s  loss {loss.item():.3f}  acc {acc:.2f}  "
                  f"epochs {seen / len(imgs):.1f}", flush=True)
    return model, time.time() - start, seen / len(imgs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("REID_DATA", "data"))
    ap.add_argument("--num-ids", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=7.0, help="CNN training budget (wall clock)")
    ap.add_argument("--skip-cnn", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    ds = Synthetic(args.data_dir, num_ids=args.num_ids, seed=args.seed)
    if synthetic_generate.GENERATION_COUNT:
        print(f"generated in {time.time() - t0:.1f}s")
    print(ds.summary())
    counts = ds.extra["meta"]["counts"]
    print("counts:", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    temporal_check(ds)
    t0 = time.time()
    qh = histogram_features_of_records(ds.query)
    gh = histogram_features_of_records(ds.gallery)
    print(f"histogram features: {len(qh) + len(gh)} images in {time.time() - t0:.1f}s")
    hist = report("colour histogram (HSV 8^3, global)", 2 - 2 * qh @ gh.T, ds)
    for name, kw in (("colour histogram (RGB 8^3, global)", dict(space="rgb")),
                     ("colour histogram (HSV 8^3, 6 stripes)", dict(stripes=6))):
        q, g = histogram_features_of_records(ds.query, **kw), histogram_features_of_records(ds.gallery, **kw)
        report(name, 2 - 2 * q @ g.T, ds)
    if args.skip_cnn:
        return
    print(f"training ResNet-18 from scratch for {args.minutes:g} min on {len(ds.train)} images, "
          f"{ds.num_train_pids} ids")
    model, secs, epochs = train_cnn(ds, args.minutes, seed=args.seed)
    t0 = time.time()
    qf, gf = extract(model, load_images(ds.query)), extract(model, load_images(ds.gallery))
    print(f"trained {secs:.0f}s ({epochs:.1f} epochs); features in {time.time() - t0:.0f}s")
    cnn = report("ResNet-18 scratch (cosine, BNNeck feat)", 1 - qf @ gf.T, ds)
    print(f"summary: histogram rank-1 {100 * hist[0]:.1f} mAP {100 * hist[1]:.1f} | CNN rank-1 {100 * cnn[0]:.1f} "
          f"mAP {100 * cnn[1]:.1f} | mAP ratio {cnn[1] / max(hist[1], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
