"""common/distributed.py with 2 processes (torchrun, gloo on the CPU) against the same code run in one process.

The module launches itself under ``torchrun --standalone --nproc_per_node 2`` once (setUpClass); each rank runs
the cases below and saves what it saw; the tests compare that with a single-process run of the same functions:

* the batch splitter: shares of the ranks, concatenated in rank order, are each global P x K batch; whole identities;
* sharded feature extraction + ordered gather: identical (torch.equal) to one process, uneven shards (13 = 7 + 6);
  ``extract_features_sharded`` (13 images = 8 + 5; 3 images = one batch, rank 1 empty) equal to extract_features;
* all_reduce_mean / average_scalars / broadcast_module;
* DDP training with CPUSyncBatchNorm and a global batch-hard triplet loss (gather_with_grad) plus per-rank
  cross-entropy, 4 SGD steps with momentum: weights and BN running statistics equal one process on the global
  batch to 1e-5;
* helpers: ranks, is_main, broadcast_object, all_gather_objects, rank_seed.
"""
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import BatchSampler, DataLoader, Subset, TensorDataset  # noqa: E402

from common import distributed as D  # noqa: E402
from common.data.samplers import RandomIdentitySampler  # noqa: E402
from common.errors import ReidError  # noqa: E402
from common.eval.features import extract_features, extract_features_sharded  # noqa: E402

WORLD = 2
# training set: 10 identities with 3..6 images each; P x K = 4 x 2 global batches (2 identities per rank)
TRAIN_PIDS = [pid for pid in range(10) for _ in range(3 + pid % 4)]
P, K, STEPS = 4, 2, 4


class Tiny(nn.Module):
    """conv -> BN -> ReLU -> pool -> (N, 4) feature; BNNeck (BatchNorm1d) -> linear logits (N, classes)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.neck = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        f = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1)
        return f, self.fc(self.neck(f))


def batch_hard_triplet(emb, pids, margin=0.3):
    """Mean over anchors of relu(hardest positive distance - hardest negative distance + margin)."""
    d = torch.cdist(emb, emb).clamp(min=1e-12)
    same = pids[:, None] == pids[None, :]
    ap = (d * same).max(1).values
    an = d.masked_fill(same, float("inf")).min(1).values
    return F.relu(ap - an + margin).mean()


def train_images():
    g = torch.Generator().manual_seed(123)
    return torch.randn(len(TRAIN_PIDS), 3, 16, 8, generator=g), torch.tensor(TRAIN_PIDS)


def global_batches(epoch=0, batch=P * K, k=K):
    sampler = RandomIdentitySampler(TRAIN_PIDS, batch, k, seed=5)
    sampler.set_epoch(epoch)
    return BatchSampler(sampler, batch, drop_last=True)


def train(device="cpu", sync_bn=True):
    """STEPS steps on the rank's share (alone: the whole batch); returns the unwrapped model's state_dict.

    ``sync_bn=False``: both BatchNorms in eval mode (frozen statistics, as QAConv 2.x's backbone).
    """
    torch.manual_seed(0)
    model = Tiny().to(device)
    if not sync_bn:
        with torch.no_grad():
            model(torch.randn(16, 3, 16, 8) + 0.5)  # non-trivial frozen statistics
    model = D.wrap_ddp(model, device, sync_bn=sync_bn)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, pids = train_images()
    split = D.DistributedBatchSampler(global_batches(), K, pids=TRAIN_PIDS)
    model.train()
    if not sync_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    for step, idx in enumerate(split):
        if step == STEPS:
            break
        f, logits = model(images[idx])
        y = pids[idx]
        loss = F.cross_entropy(logits, y) + batch_hard_triplet(D.gather_with_grad(f), D.gather_rows(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in D.unwrap(model).state_dict().items()}


def make_test_images(n=13):
    g = torch.Generator().manual_seed(7)
    return TensorDataset(torch.randn(n, 3, 16, 8, generator=g), torch.arange(n) % 5, torch.arange(n) % 3,
                         torch.arange(n))


def extract_model():
    torch.manual_seed(1)
    model = Tiny()
    with torch.no_grad():  # non-trivial BN statistics, used in eval mode
        model(torch.randn(32, 3, 16, 8) * 2 + 1)
    return model


def extract(dataset, align=4, chunk_rows=4096):
    """Features of ``dataset`` (alone) or of this rank's shard (batches of 4), gathered in dataset order."""
    part = Subset(dataset, list(D.shard_range(len(dataset), align=align)))
    shard_indices = torch.arange(len(part))
    local = extract_features(extract_model(), DataLoader(
        [(*part[i][:3], shard_indices[i]) for i in range(len(part))], batch_size=4), "cpu", progress=False)
    return D.gather_features(local, chunk_rows=chunk_rows)


def list_loader(items, batch_size=4):
    """Loader over a list of (image, pid, camid) items with indices relative to the list, as build_test_loader."""
    return DataLoader([(*item, i) for i, item in enumerate(items)], batch_size=batch_size)


def sharded(n=13, batch_size=4, bn_shift=0.0, default_dtype=None):
    """extract_features_sharded over n test images, flip-averaged and normalised (alone: one loader; 13 on 2
    ranks: 8 + 5 images). ``bn_shift`` is added to the model's BN running means first; ``default_dtype`` is torch's
    default dtype during the extraction (the model and images stay float32)."""
    data = make_test_images(n)
    items = [data[i][:3] for i in range(n)]
    model = extract_model()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean += bn_shift
    before = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype or before)
    try:
        return extract_features_sharded(model, items, lambda sub: list_loader(sub, batch_size), "cpu",
                                        batch_size, flip=True, normalize=True, progress=False)
    finally:
        torch.set_default_dtype(before)


def worker(out_dir):
    ctx = D.init_distributed("cpu")
    rank = ctx.rank
    out = {"ctx": (ctx.rank, ctx.world_size, ctx.backend, str(ctx.device)), "is_main": D.is_main(),
           "broadcast": D.broadcast_object({"path": "ckpt.pth", "n": [1, 2]} if rank == 0 else None),
           "gathered": D.all_gather_objects(("rank", rank)), "rank_seed": D.rank_seed(7)}
    shares = {}
    for epoch in (0, 1):
        split = D.DistributedBatchSampler(global_batches(epoch, 16, 4), 4, pids=TRAIN_PIDS)
        split.set_epoch(epoch)
        shares[epoch] = D.all_gather_objects(list(split))
    out["shares"] = shares
    feats = extract(make_test_images())  # shards 8 + 5, batch-aligned
    out["features"] = (feats.feats, feats.pids, feats.camids, feats.indices)
    feats = extract(make_test_images(), align=1, chunk_rows=3)  # shards 7 + 6, gathered 3 rows at a time
    out["features_unaligned"] = (feats.feats, feats.pids, feats.camids, feats.indices)
    for name, (n, batch) in {"sharded": (13, 4), "sharded_one_batch": (3, 4)}.items():  # 3 images: rank 1 has none
        feats = sharded(n, batch)
        out[name] = (feats.feats, feats.pids, feats.camids, feats.indices)
    feats = sharded(13, 4, bn_shift=float(rank))  # rank 1's BN statistics differ: rank 0's must be used
    out["sharded_rank_bn"] = (feats.feats, feats.pids, feats.camids, feats.indices)
    feats = sharded(3, 4, default_dtype=torch.float64)  # rank 1's empty placeholder must match float32 features
    out["sharded_one_batch_f64_default"] = (feats.feats, feats.pids, feats.camids, feats.indices)
    out["reduced"] = (D.all_reduce_mean(torch.tensor([1.0 + rank, -2.0 * rank])),
                      D.average_scalars({"a": float(rank), "b": 3.0}))
    centers = nn.Linear(3, 2)
    torch.manual_seed(100 + rank)  # different on each rank before the broadcast
    nn.init.normal_(centers.weight)
    out["broadcast_module"] = D.broadcast_module(centers).weight.detach().clone()
    out["state"] = train()
    out["state_frozen_bn"] = train(sync_bn=False)
    q, g = torch.randn(5, 4, generator=torch.Generator().manual_seed(3)), torch.randn(
        11, 4, generator=torch.Generator().manual_seed(4))
    block = g[list(D.shard_range(len(g)))]  # this rank's gallery block (6 + 5)
    out["dist_by_gallery_blocks"] = D.gather_rows(((q[:, None] - block[None]) ** 2).sum(-1), chunk_rows=2, dim=1)
    D.seed_rank(11)
    states = D.gather_rng_states()
    first = (torch.rand(3), np.random.rand(2))
    D.restore_rng_states(states)
    out["rng"] = (first, (torch.rand(3), np.random.rand(2)), len(states))
    D.barrier()
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    D.destroy_distributed()


class TwoProcesses(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
        env.pop("WORLD_SIZE", None)
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={WORLD}", os.path.abspath(__file__), cls._tmp.name],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise AssertionError(f"torchrun failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        cls.out = [torch.load(os.path.join(cls._tmp.name, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_helpers(self):
        for r, o in enumerate(self.out):
            self.assertEqual(o["ctx"], (r, WORLD, "gloo", "cpu"))
            self.assertEqual(o["is_main"], r == 0)
            self.assertEqual(o["broadcast"], {"path": "ckpt.pth", "n": [1, 2]})
            self.assertEqual(o["gathered"], [("rank", 0), ("rank", 1)])
        self.assertEqual(self.out[0]["rank_seed"], 7)
        self.assertNotEqual(self.out[1]["rank_seed"], 7)

    def test_batch_split_union_is_the_global_batch(self):
        for epoch in (0, 1):
            expected = [list(b) for b in global_batches(epoch, 16, 4)]
            self.assertGreaterEqual(len(expected), 2)
            for o in self.out:  # every rank gathered the same shares
                self.assertEqual(o["shares"][epoch], self.out[0]["shares"][epoch])
            per_rank = self.out[0]["shares"][epoch]
            self.assertEqual([len(s) for s in per_rank], [len(expected)] * WORLD)
            for step, batch in enumerate(expected):
                self.assertEqual(per_rank[0][step] + per_rank[1][step], batch)
                for r in range(WORLD):  # whole identities: 2 of the 4, all 4 images each, none shared
                    pids = [TRAIN_PIDS[i] for i in per_rank[r][step]]
                    self.assertEqual(len(set(pids)), 2)
                    self.assertTrue(all(pids.count(p) == 4 for p in pids))
                self.assertFalse({TRAIN_PIDS[i] for i in per_rank[0][step]} &
                                 {TRAIN_PIDS[i] for i in per_rank[1][step]})

    def test_gathered_features_equal_one_process(self):
        ref = extract(make_test_images())  # no process group here: the whole list in one loader
        self.assertEqual(len(D.shard_range(13, 0, 2, align=4)), 8)
        self.assertEqual(len(D.shard_range(13, 0, 2)), 7)
        np.testing.assert_array_equal(ref.indices, np.arange(13))
        for o in self.out:
            feats, pids, camids, indices = o["features"]
            self.assertTrue(torch.equal(feats, ref.feats))  # batch-aligned shards: bit-identical
            np.testing.assert_array_equal(pids, ref.pids)
            np.testing.assert_array_equal(camids, ref.camids)
            np.testing.assert_array_equal(indices, np.arange(13))
            feats, pids, camids, indices = o["features_unaligned"]  # other batches: the kernels' rounding only
            self.assertLess((feats - ref.feats).abs().max().item(), 1e-6)
            self.assertGreater(ref.feats.abs().min().item(), 1e-3)
            np.testing.assert_array_equal(pids, ref.pids)
            np.testing.assert_array_equal(indices, np.arange(13))

    def test_sharded_extraction_equals_one_process(self):
        for name, n in (("sharded", 13), ("sharded_one_batch", 3), ("sharded_rank_bn", 13),
                        ("sharded_one_batch_f64_default", 3)):
            data = make_test_images(n)  # the reference: extract_features over one loader of the whole list
            ref = extract_features(extract_model(), list_loader([data[i][:3] for i in range(n)]), "cpu", flip=True,
                                   normalize=True, progress=False)
            self.assertEqual(ref.feats.shape, (n, 4))
            for o in self.out:
                feats, pids, camids, indices = o[name]
                self.assertTrue(torch.equal(feats, ref.feats), name)  # bit-identical (batch-aligned shards)
                np.testing.assert_array_equal(pids, np.arange(n) % 5)
                np.testing.assert_array_equal(camids, np.arange(n) % 3)
                np.testing.assert_array_equal(indices, np.arange(n))
        # alone it is extract_features itself
        alone = sharded(13, 4)
        self.assertTrue(torch.equal(alone.feats, self.out[0]["sharded"][0]))

    def test_reductions_and_module_broadcast(self):
        for o in self.out:
            mean, scalars = o["reduced"]
            self.assertTrue(torch.equal(mean, torch.tensor([1.5, -1.0])))
            self.assertEqual(scalars, {"a": 0.5, "b": 3.0})
        weight = nn.Linear(3, 2).weight.detach().clone()
        torch.manual_seed(100)  # rank 0's weights, everywhere
        ref = nn.init.normal_(weight)
        for o in self.out:
            self.assertTrue(torch.equal(o["broadcast_module"], ref))

    def test_ddp_sync_bn_equals_one_process_on_the_global_batch(self):
        ref = train()  # alone: plain BatchNorm on the whole global batch, triplet on it
        torch.manual_seed(0)
        init = Tiny().state_dict()
        for o in self.out:
            self.assertEqual(sorted(o["state"]), sorted(ref))
            for key, v in ref.items():
                if v.is_floating_point():
                    self.assertLess((o["state"][key] - v).abs().max().item(), 1e-5, key)
                else:
                    self.assertTrue(torch.equal(o["state"][key], v), key)
        moved = max((ref[k] - init[k]).abs().max().item() for k in ("conv.weight", "fc.weight", "bn.running_var"))
        self.assertGreater(moved, 1e-2)
        self.assertEqual(int(ref["bn.num_batches_tracked"]), STEPS)


    def test_ddp_frozen_bn_equals_one_process(self):
        ref = train(sync_bn=False)
        for o in self.out:
            for key, v in ref.items():
                self.assertLess((o["state_frozen_bn"][key].double() - v.double()).abs().max().item(), 1e-5, key)
        self.assertEqual(int(ref["bn.num_batches_tracked"]), 1)  # the one statistics pass before training

    def test_gallery_blocks_gather_to_the_full_matrix(self):
        q, g = torch.randn(5, 4, generator=torch.Generator().manual_seed(3)), torch.randn(
            11, 4, generator=torch.Generator().manual_seed(4))
        full = ((q[:, None] - g[None]) ** 2).sum(-1)
        for o in self.out:
            self.assertTrue(torch.equal(o["dist_by_gallery_blocks"], full))

    def test_per_rank_rng_states_restore(self):
        for o in self.out:
            (t1, n1), (t2, n2), count = o["rng"]
            self.assertEqual(count, WORLD)
            self.assertTrue(torch.equal(t1, t2))
            np.testing.assert_array_equal(n1, n2)
        self.assertFalse(torch.equal(self.out[0]["rng"][0][0], self.out[1]["rng"][0][0]))  # per-rank seeds
        torch.manual_seed(11)  # rank 0 uses the single-process seed
        self.assertTrue(torch.equal(self.out[0]["rng"][0][0], torch.rand(3)))


class SingleProcess(unittest.TestCase):
    """Without torchrun everything is the identity / no-op."""

    def test_noop(self):
        env = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK") if k in os.environ}
        try:
            ctx = D.init_distributed("cpu")
        finally:
            os.environ.update(env)
        self.assertEqual((ctx.rank, ctx.world_size, ctx.backend, ctx.distributed), (0, 1, None, False))
        self.assertTrue(D.is_main())
        self.assertEqual(D.broadcast_object(3), 3)
        self.assertEqual(D.all_gather_objects("a"), ["a"])
        model = Tiny()
        self.assertIs(D.wrap_ddp(model, "cpu", sync_bn=True), model)
        x = torch.randn(3, 2)
        self.assertIs(D.gather_with_grad(x), x)
        self.assertIs(D.gather_features(x), x)
        self.assertIs(D.all_reduce_mean(x), x)
        self.assertEqual(D.average_scalars({"a": 1.5}), {"a": 1.5})
        batches = [list(b) for b in global_batches()]
        self.assertEqual(list(D.DistributedBatchSampler(global_batches(), K)), batches)
        self.assertEqual(list(D.DistributedBatchSampler([[4, 1, 2]], 2, pids=[0, 1, 2, 3, 4])), [[4, 1, 2]])
        D.check_world_size(1)
        with self.assertRaises(ReidError):
            D.check_world_size(2)

    def test_shard_range(self):
        for n, w in ((13, 2), (10, 4), (3, 4), (0, 2), (8, 8)):
            shards = [D.shard_range(n, r, w) for r in range(w)]
            self.assertEqual([i for s in shards for i in s], list(range(n)))
            self.assertLessEqual(max(map(len, shards)) - min(map(len, shards)), 1)
        self.assertEqual(D.shard_range(10, 3, 4), range(8, 10))
        for n, w, a in ((13, 2, 4), (13, 3, 4), (5, 4, 4), (64, 3, 8)):
            shards = [D.shard_range(n, r, w, align=a) for r in range(w)]
            self.assertEqual([i for s in shards for i in s], list(range(n)))
            self.assertTrue(all(s.start % a == 0 for s in shards if len(s)))
        self.assertEqual([D.shard_range(13, r, 3, align=4) for r in range(3)], [range(0, 8), range(8, 12),
                                                                                 range(12, 13)])

    def test_split_by_hand(self):
        pids = [0, 0, 1, 1, 2, 2, 3, 3]
        batch = [[0, 1, 2, 3, 4, 5, 6, 7], [6, 7, 2, 3, 0, 1, 4, 5]]
        got = [list(D.DistributedBatchSampler(batch, 2, pids=pids, rank=r, world_size=2)) for r in range(2)]
        self.assertEqual(got, [[[0, 1, 2, 3], [6, 7, 2, 3]], [[4, 5, 6, 7], [0, 1, 4, 5]]])
        got = [list(D.DistributedBatchSampler(batch, 2, rank=r, world_size=4)) for r in range(4)]
        self.assertEqual([g[1] for g in got], [[6, 7], [2, 3], [0, 1], [4, 5]])
        with self.assertRaises(ReidError):  # 4 identities cannot go to 3 ranks whole
            list(D.DistributedBatchSampler(batch, 2, rank=0, world_size=3))
        with self.assertRaises(ReidError):  # runs of 2 that are not one identity
            list(D.DistributedBatchSampler([[1, 2, 3, 4]], 2, pids=pids, rank=0, world_size=2))

    def test_cpu_sync_bn_alone_is_batchnorm(self):
        torch.manual_seed(0)
        bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            bn.weight.uniform_()
        sync = D.convert_cpu_sync_batchnorm(nn.Sequential(bn))[0]
        self.assertIsInstance(sync, D.CPUSyncBatchNorm)
        self.assertEqual(sorted(sync.state_dict()), sorted(bn.state_dict()))
        x = torch.randn(4, 3, 5, 2)
        self.assertTrue(torch.equal(sync(x), bn(x)))


if __name__ == "__main__":
    worker(sys.argv[1])
