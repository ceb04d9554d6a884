"""P x K identity sampler: batch structure, exhaustion rule, (seed, epoch) determinism, DataLoader workers."""
import os
import tempfile
import unittest
from collections import Counter, defaultdict

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from common.data.loaders import build_train_loader
from common.data.samplers import RandomIdentitySampler
from common.datasets.base import Record

COUNTS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 4, 4]  # images per identity; some fewer than K
P, K = 3, 4


def make_pids():
    return [pid for pid, n in enumerate(COUNTS) for _ in range(n)]


class IndexDataset(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class TestRandomIdentitySampler(unittest.TestCase):
    def setUp(self):
        self.pids = make_pids()
        self.sampler = RandomIdentitySampler(self.pids, P * K, K, seed=3)

    def check_epoch(self, order):
        pids = self.pids
        self.assertEqual(len(order) % (P * K), 0)
        self.assertTrue(all(0 <= i < len(pids) for i in order))
        emitted = Counter()
        per_pid = defaultdict(list)
        for b in range(0, len(order), P * K):
            batch = order[b:b + P * K]
            groups = [batch[g:g + K] for g in range(0, P * K, K)]
            group_pids = []
            for grp in groups:
                self.assertEqual(len({pids[i] for i in grp}), 1, "a group of K mixes identities")
                group_pids.append(pids[grp[0]])
                emitted[pids[grp[0]]] += 1
                per_pid[pids[grp[0]]].extend(grp)
            self.assertEqual(len(set(group_pids)), P, "a batch repeats an identity")
        total_groups = {pid: max(n, K) // K for pid, n in enumerate(COUNTS)}
        for pid, idxs in per_pid.items():
            self.assertLessEqual(emitted[pid], total_groups[pid])
            if COUNTS[pid] >= K:  # no padding: an index is used at most once per epoch
                self.assertEqual(len(idxs), len(set(idxs)))
        # the loop stops only when fewer than P identities still have groups
        left = [pid for pid in total_groups if emitted[pid] < total_groups[pid]]
        self.assertLess(len(left), P)

    def test_batches_are_p_identities_by_k_images(self):
        for epoch in range(5):
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            self.assertGreater(len(order), 0)
            self.check_epoch(order)
            self.assertEqual(len(self.sampler), len(order))

    def test_same_seed_and_epoch_same_order(self):
        other = RandomIdentitySampler(self.pids, P * K, K, seed=3)
        for epoch in (0, 4):
            self.sampler.set_epoch(epoch)
            other.set_epoch(epoch)
            self.assertEqual(list(self.sampler), list(other))
        # iterating again in the same epoch repeats it
        self.assertEqual(list(self.sampler), list(self.sampler))

    def test_other_epoch_or_seed_changes_order(self):
        self.sampler.set_epoch(0)
        e0 = list(self.sampler)
        self.sampler.set_epoch(1)
        self.assertNotEqual(e0, list(self.sampler))
        other = RandomIdentitySampler(self.pids, P * K, K, seed=4)
        self.assertNotEqual(e0, list(other))

    def test_records_and_pid_lists_agree(self):
        records = [Record(f"img{i}.jpg", pid, i % 3) for i, pid in enumerate(self.pids)]
        a = RandomIdentitySampler(records, P * K, K, seed=3)
        b = RandomIdentitySampler(np.asarray(self.pids), P * K, K, seed=3)
        self.assertEqual(list(a), list(self.sampler))
        self.assertEqual(list(b), list(self.sampler))

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            RandomIdentitySampler(self.pids, 10, 4)
        with self.assertRaises(ValueError):
            RandomIdentitySampler([0, 0, 1, 1], 12, 4)  # 2 identities < P = 3

    def test_dataloader_workers_do_not_change_order(self):
        self.sampler.set_epoch(2)
        expected = list(self.sampler)
        for workers in (0, 2):
            loader = DataLoader(IndexDataset(len(self.pids)), batch_size=P * K, sampler=self.sampler,
                                drop_last=True, num_workers=workers)
            got = torch.cat(list(loader)).tolist()
            self.assertEqual(got, expected, f"num_workers={workers}")
            self.assertEqual(len(loader), len(expected) // (P * K))


class TestTrainLoader(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.RandomState(0)
        cls.records = []
        for i, pid in enumerate(make_pids()):
            path = os.path.join(cls.tmp.name, f"{i:03d}.png")
            Image.fromarray(rng.randint(0, 256, (12, 6, 3), dtype=np.uint8)).save(path)
            cls.records.append(Record(path, pid, i % 2))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def batches(self, loader):
        return [(b[0].clone(), b[3].clone()) for b in loader]

    def assert_same(self, a, b):
        self.assertEqual(len(a), len(b))
        for (xa, ia), (xb, ib) in zip(a, b):
            self.assertTrue(torch.equal(ia, ib))
            self.assertTrue(torch.equal(xa, xb))

    def test_epoch_replay_with_workers(self):
        kw = dict(batch_size=P * K, num_instances=K, workers=2, seed=5, pad=2, random_erase_p=0.5)
        run = build_train_loader(self.records, 16, 8, **kw)
        epoch0, epoch1 = self.batches(run), self.batches(run)  # second pass auto-advances to epoch 1
        self.assertEqual(run.epoch, 1)
        self.assertNotEqual(torch.cat([i for _, i in epoch0]).tolist(), torch.cat([i for _, i in epoch1]).tolist())
        resumed = build_train_loader(self.records, 16, 8, **kw)
        resumed.set_epoch(1)
        self.assert_same(self.batches(resumed), epoch1)  # same order and same augmented pixels
        order = torch.cat([i for _, i in epoch1]).tolist()
        run.sampler.set_epoch(1)
        self.assertEqual(order, list(run.sampler))
        self.assertEqual(tuple(epoch0[0][0].shape), (P * K, 3, 16, 8))

    def test_plain_shuffle_depends_on_seed_and_epoch(self):
        kw = dict(batch_size=8, num_instances=0, workers=0, seed=1, random_erase_p=0.0)
        a = build_train_loader(self.records, 16, 8, **kw)
        b = build_train_loader(self.records, 16, 8, **kw)
        ia = [i.tolist() for _, i in self.batches(a)]
        self.assertEqual(ia, [i.tolist() for _, i in self.batches(b)])
        self.assertEqual(len(ia), len(self.records) // 8)  # drop_last
        self.assertTrue(all(len(i) == 8 for i in ia))
        a.set_epoch(3)
        b.set_epoch(3)
        ia3 = [i.tolist() for _, i in self.batches(a)]
        self.assertEqual(ia3, [i.tolist() for _, i in self.batches(b)])
        self.assertNotEqual(ia, ia3)


if __name__ == "__main__":
    unittest.main()
