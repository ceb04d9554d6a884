"""Graph sampler: batch = anchor + its k nearest classes x K, pointer/reshuffle rule, (seed, epoch) determinism,
state_dict resume, v2.0 pre-epoch P x K index and re-ranking hook, gs_save, errors."""
import io
import os
import sys
import tempfile
import types
import unittest
from collections import Counter
from unittest import mock

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.datasets.base import Record
from qaconv.graph_sampler import (ClassCursors, GraphSampler, build_index_dic, graph_batches, nearest_classes,
                                  random_pk_index, random_pk_length)

# Six classes on a line; class position c sits at POS[c]. Pids are deliberately unsorted (order of first appearance
# defines the class positions) and the class with one image has fewer images than K = 2.
PIDS = [50, 10, 40, 20, 60, 30]
COUNTS = [1, 2, 3, 4, 5, 6]
POS = np.array([0.0, 1.0, 3.0, 7.0, 15.0, 31.0])
# Nearest two other classes of each class, worked out by hand from POS (nearest first):
# 0 (at 0): 1 (d 1), 2 (d 3) | 1 (at 1): 0 (d 1), 2 (d 2) | 2 (at 3): 1 (d 2), 0 (d 3)
# 3 (at 7): 2 (d 4), 1 (d 6) | 4 (at 15): 3 (d 8), 2 (d 12) | 5 (at 31): 4 (d 16), 3 (d 24)
EXPECTED_TOP2 = [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2], [4, 3]]


def make_records(counts=COUNTS, pids=PIDS):
    """Records interleaved round-robin over the classes, so first appearance follows ``pids``."""
    records = []
    for r in range(max(counts)):
        for pid, n in zip(pids, counts):
            if r < n:
                records.append(Record(f"/data/{pid}_{r}.jpg", pid, 0))
    return records


class LineDistance:
    """distance_fn: |POS[a] - POS[b]| between the classes of the given images; records every call."""

    def __init__(self, records, pids=PIDS, pos=POS):
        self.cls = {pid: c for c, pid in enumerate(pids)}
        self.records, self.pos, self.calls = records, pos, []

    def __call__(self, indices):
        self.calls.append(list(indices))
        x = self.pos[[self.cls[self.records[i].pid] for i in indices]]
        return np.abs(x[:, None] - x[None, :])


class IndexDataset(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def class_of(records, index):
    return PIDS.index(records[index].pid)


def split_batches(order, records, batch_size, k_instance):
    """Each batch as its list of per-group class positions (one entry per group of K)."""
    batches = []
    for b in range(0, len(order), batch_size):
        classes = [class_of(records, i) for i in order[b:b + batch_size]]
        groups = [classes[g:g + k_instance] for g in range(0, batch_size, k_instance)]
        for grp in groups:
            assert len(set(grp)) == 1, grp  # every group of K comes from one class
        batches.append([grp[0] for grp in groups])
    return batches


class TestNearestClasses(unittest.TestCase):
    def test_hand_matrix(self):
        x = POS
        np.testing.assert_array_equal(nearest_classes(np.abs(x[:, None] - x[None]), 2), EXPECTED_TOP2)

    def test_self_excluded_even_when_smallest_and_ties_stable(self):
        # negative distances (HEAD: distance = -score); the diagonal is the minimum of every row
        d = -np.array([[9.0, 1.0, 2.0, 2.0],
                       [1.0, 9.0, 5.0, 3.0],
                       [2.0, 5.0, 9.0, 4.0],
                       [2.0, 3.0, 4.0, 9.0]])
        np.testing.assert_array_equal(nearest_classes(d, 2), [[2, 3], [2, 3], [1, 3], [2, 1]])
        np.testing.assert_array_equal(nearest_classes(d, 0).shape, (4, 0))
        with self.assertRaises(ValueError):
            nearest_classes(d, 4)


class TestClassCursors(unittest.TestCase):
    def test_fewer_images_than_k(self):
        cur = ClassCursors([[10, 11]], [0])
        got = cur.take(0, 3, np.random.default_rng(0))
        # reads 10, 11 (end of list -> reshuffle, pointer 0), then the first image of the new order
        self.assertEqual(got[:2], [10, 11])
        self.assertEqual(got[2], cur.lists[0][0])
        self.assertEqual(cur.pointers, [1])
        self.assertEqual(sorted(cur.lists[0]), [10, 11])

    def test_exact_end_resets_pointer(self):
        cur = ClassCursors([[1, 2, 3, 4, 5]], [3])
        self.assertEqual(cur.take(0, 2, np.random.default_rng(0)), [4, 5])
        self.assertEqual(cur.pointers, [0])
        self.assertEqual(sorted(cur.lists[0]), [1, 2, 3, 4, 5])
        cur = ClassCursors([[1, 2, 3, 4, 5]], [1])
        self.assertEqual(cur.take(0, 2, np.random.default_rng(0)), [2, 3])
        self.assertEqual((cur.lists[0], cur.pointers), ([1, 2, 3, 4, 5], [3]))  # no reshuffle before the end


class TestGraphBatches(unittest.TestCase):
    def test_structure_and_state(self):
        index_dic = build_index_dic([7, 7, 8, 9, 8, 9, 9])  # class 0: [0, 1], class 1: [2, 4], class 2: [3, 5, 6]
        self.assertEqual(list(index_dic), [7, 8, 9])
        state = ClassCursors([[1, 0], [2, 4], [6, 5, 3]], [0, 1, 0])
        topk = np.array([[2], [0], [1]])
        out = graph_batches(index_dic, topk, 2, np.random.default_rng(0), state)
        self.assertEqual(len(out), 12)
        batches = [out[b:b + 4] for b in range(0, 12, 4)]
        anchor = {index_dic_class(index_dic, b[-1]): b for b in batches}
        self.assertEqual(sorted(anchor), [0, 1, 2])
        # anchor 0 = [class 2, class 0]: class 2 reads 6, 5 (pointer 2); class 0 reads 1, 0 and hits the end
        self.assertEqual(anchor[0], [6, 5, 1, 0])
        # anchor 1 = [class 0, class 1]: class 0 reads its reshuffled list (end again); class 1 reads 4 at
        # pointer 1, reshuffles, then reads the first image of its new order (pointer 1)
        b1 = anchor[1]
        self.assertEqual(sorted(b1[:2]), [0, 1])
        self.assertEqual(b1[2], 4)
        # anchor 2 = [class 1, class 2]: class 1 reads the second image of that order, reshuffles, reads one
        # more; class 2 reads 3 at pointer 2, reshuffles, reads the first of its new order
        b2 = anchor[2]
        self.assertEqual(sorted([b1[3], b2[0]]), [2, 4])
        self.assertEqual(b2[2], 3)
        self.assertEqual(state.pointers, [0, 1, 1])
        self.assertEqual(state.lists[1][0], b2[1])
        self.assertEqual(state.lists[2][0], b2[3])

    def test_bad_topk_shape(self):
        index_dic = build_index_dic([0, 1, 2])
        state = ClassCursors([[0], [1], [2]], [0, 0, 0])
        with self.assertRaises(ValueError):
            graph_batches(index_dic, np.zeros((2, 1), dtype=int), 2, np.random.default_rng(0), state)
        with self.assertRaises(ValueError):
            graph_batches(index_dic, np.full((3, 1), 3), 2, np.random.default_rng(0), state)


def index_dic_class(index_dic, i):
    for c, images in enumerate(index_dic.values()):
        if i in images:
            return c
    raise KeyError(i)


class TestGraphSampler(unittest.TestCase):
    def setUp(self):
        self.records = make_records()
        self.dist = LineDistance(self.records)

    def sampler(self, batch_size=6, num_instance=2, seed=3, **kw):
        return GraphSampler(self.records, self.dist, batch_size=batch_size, num_instance=num_instance, seed=seed,
                            **kw)

    def test_every_batch_is_anchor_plus_nearest(self):
        s = self.sampler()
        anchor_orders = []
        for epoch in range(3):
            s.set_epoch(epoch)
            order = list(s)
            self.assertEqual(len(order), len(s))
            self.assertEqual(len(order), 6 * 6)
            batches = split_batches(order, self.records, 6, 2)
            self.assertEqual(len(batches), 6)
            anchors = [b[-1] for b in batches]
            self.assertEqual(sorted(anchors), list(range(6)))  # each class the anchor exactly once
            anchor_orders.append(anchors)
            for b in batches:
                self.assertEqual(b[:-1], EXPECTED_TOP2[b[-1]])
            np.testing.assert_array_equal(s.topk_index, EXPECTED_TOP2)
            self.assertEqual(s.dist.shape, (6, 6))
        # the batch order is shuffled (built in anchor order 0..5), differently every epoch
        self.assertNotIn(list(range(6)), anchor_orders)
        self.assertEqual(len({tuple(a) for a in anchor_orders}), 3)
        # one distance call per epoch, one image per class in pid order
        self.assertEqual(len(self.dist.calls), 3)
        for call in self.dist.calls:
            self.assertEqual([class_of(self.records, i) for i in call], list(range(6)))

    def test_dataloader_runs_n_cls_iterations(self):
        s = self.sampler()
        loader = DataLoader(IndexDataset(len(self.records)), batch_size=6, sampler=s)
        self.assertEqual(len(loader), 6)
        batches = [b.tolist() for b in loader]
        self.assertEqual(len(batches), 6)
        self.assertTrue(all(len(b) == 6 for b in batches))

    def test_sequential_pointers_persist_and_reshuffle(self):
        # K = 3: classes with 1 and 2 images have fewer images than K; per-epoch demand is no multiple of sizes
        s = self.sampler(batch_size=6, num_instance=3)
        streams = {c: [] for c in range(6)}
        epochs = 6
        for epoch in range(epochs):
            s.set_epoch(epoch)
            order = list(s)
            batches = [order[b:b + 6] for b in range(0, len(order), 6)]
            # construction order = anchor order; the anchor is the last group
            for batch in sorted(batches, key=lambda b: class_of(self.records, b[-1])):
                for g in range(0, 6, 3):
                    grp = batch[g:g + 3]
                    streams[class_of(self.records, grp[0])].extend(grp)
        index_dic = build_index_dic([r.pid for r in self.records])
        for c, images in enumerate(index_dic.values()):
            n, stream = len(images), streams[c]
            full = len(stream) // n
            passes = [stream[p * n:(p + 1) * n] for p in range(full)]
            for chunk in passes:  # every pass through the shuffled list yields each image once
                self.assertEqual(sorted(chunk), sorted(images))
            self.assertEqual(s.cursors.pointers[c], len(stream) % n)
            self.assertEqual(stream[full * n:], s.cursors.lists[c][:len(stream) % n])
            if n >= 4:  # the list is reshuffled between passes
                self.assertGreater(len({tuple(p) for p in passes}), 1)

    def test_determinism_and_cache(self):
        a, b, c = self.sampler(seed=3), self.sampler(seed=3), self.sampler(seed=4)
        orders_a, orders_b, orders_c = [], [], []
        for epoch in range(3):
            for smp, out in ((a, orders_a), (b, orders_b), (c, orders_c)):
                smp.set_epoch(epoch)
                out.append(list(smp))
        self.assertEqual(orders_a, orders_b)
        self.assertNotEqual(orders_a, orders_c)
        self.assertNotEqual(orders_a[0], orders_a[1])
        # from the same cursor state, epochs 0 and 1 still differ: the epoch enters the seed
        d, e = self.sampler(seed=3), self.sampler(seed=3)
        d.set_epoch(0)
        e.set_epoch(1)
        self.assertNotEqual(list(d), list(e))
        self.assertNotEqual(self.dist.calls[-2], self.dist.calls[-1])  # other images picked for the graph
        calls = len(self.dist.calls)
        a.set_epoch(2)
        self.assertEqual(list(a), orders_a[2])  # same epoch again: cached, no new distance call
        self.assertEqual(len(self.dist.calls), calls)

    def test_state_dict_resume(self):
        full = self.sampler()
        reference = []
        for epoch in range(4):
            full.set_epoch(epoch)
            reference.append(list(full))
        first = self.sampler()
        for epoch in range(2):
            first.set_epoch(epoch)
            list(first)
        buf = io.BytesIO()
        torch.save(first.state_dict(), buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)

        resumed = self.sampler()
        resumed.load_state_dict(state)
        calls = len(self.dist.calls)
        resumed.set_epoch(1)  # interrupted inside epoch 1: replayed from the state, no model call
        self.assertEqual(list(resumed), reference[1])
        self.assertEqual(len(self.dist.calls), calls)
        for epoch in (2, 3):
            resumed.set_epoch(epoch)
            self.assertEqual(list(resumed), reference[epoch])

        fresh = self.sampler()  # without the state, epoch 2 differs: the cursors matter
        fresh.set_epoch(2)
        self.assertNotEqual(list(fresh), reference[2])

        other = GraphSampler(make_records(counts=[1, 2, 3, 4, 5, 7]), lambda idx: np.zeros((6, 6)), 6, 2)
        with self.assertRaises(ValueError):
            other.load_state_dict(state)

    def test_pre_epochs_random_pk_index(self):
        s = self.sampler(pre_epochs=2)
        index_dic = build_index_dic([r.pid for r in self.records])
        init_lists = [list(v) for v in s.cursors.lists]
        for epoch in range(2):
            s.set_epoch(epoch)
            # groups per class (K = 2): max(n // 2, 1) = 1, 1, 1, 2, 2, 3 -> 10 groups of 2
            self.assertEqual(len(s), 20)
            order = list(s)
            self.assertEqual(len(order), 20)
            groups = [order[g:g + 2] for g in range(0, 20, 2)]
            per_class = Counter()
            for grp in groups:
                c = class_of(self.records, grp[0])
                self.assertEqual(class_of(self.records, grp[1]), c)
                per_class[c] += 1
            self.assertEqual(per_class, Counter({0: 1, 1: 1, 2: 1, 3: 2, 4: 2, 5: 3}))
            one = list(index_dic.values())[0][0]  # the single image of class 0, padded by repetition
            self.assertIn([one, one], groups)
            for c in range(1, 6):  # classes with >= K images: no image twice
                taken = [i for i in order if class_of(self.records, i) == c]
                self.assertEqual(len(taken), len(set(taken)))
        self.assertEqual(self.dist.calls, [])
        self.assertEqual(s.cursors.lists, init_lists)
        self.assertEqual(s.cursors.pointers, [0] * 6)
        s.set_epoch(2)
        self.assertEqual(len(s), 36)
        self.assertEqual(len(list(s)), 36)
        self.assertEqual(len(self.dist.calls), 1)

    def test_random_pk_cap(self):
        index_dic = build_index_dic([0] * 30 + [1] * 3)
        # class 0: 15 groups capped at batch_size = 4 groups; class 1: 1 group
        self.assertEqual(random_pk_length(index_dic, 2, 4), 10)
        order = random_pk_index(index_dic, 2, 4, np.random.default_rng(1))
        self.assertEqual(len(order), 10)
        self.assertEqual(sum(i < 30 for i in order), 8)

    def test_rerank_uses_tiled_matrix(self):
        seen = {}

        def fake_rerank(dist, query_num, k1=20, k2=6, lambda_value=0.3):
            seen["dist"], seen["q"] = np.array(dist), query_num
            return -dist[:query_num, query_num:]  # reversed order: farthest classes become nearest

        fake = types.ModuleType("qaconv.rerank")
        fake.k_reciprocal_rerank = fake_rerank
        with mock.patch.dict(sys.modules, {"qaconv.rerank": fake}):
            s = self.sampler(rerank=True)
            s.set_epoch(0)
            order = list(s)
        d = np.abs(POS[:, None] - POS[None])
        np.testing.assert_array_equal(seen["dist"], np.block([[d, d], [d, d]]))
        self.assertEqual(seen["q"], 6)
        np.testing.assert_array_equal(s.dist, -d)
        # farthest first: class 0 -> 5 (d 31), 4 (d 15); class 5 -> 0 (d 31), 1 (d 30)
        self.assertEqual(s.topk_index[0].tolist(), [5, 4])
        self.assertEqual(s.topk_index[5].tolist(), [0, 1])
        for b in split_batches(order, self.records, 6, 2):
            self.assertEqual(b[:-1], s.topk_index[b[-1]].tolist())

    def test_save_graph_and_verbose(self):
        logs = []
        s = self.sampler(verbose=True, log=logs.append)
        with self.assertRaises(RuntimeError):
            s.save_graph("unused.npz")
        s.set_epoch(0)
        order = list(s)
        self.assertEqual(len(logs), 1)
        self.assertIn("GS time", logs[0])
        with tempfile.TemporaryDirectory() as tmp:
            path = s.save_graph(os.path.join(tmp, "out", "gs0.npz"))
            self.assertEqual(sorted(os.listdir(os.path.join(tmp, "out"))), ["gs0.npz"])
            with np.load(path) as z:
                np.testing.assert_array_equal(z["topk_index"], EXPECTED_TOP2)
                np.testing.assert_array_equal(z["dist"], np.abs(POS[:, None] - POS[None]))
                np.testing.assert_array_equal(z["graph_indices"], self.dist.calls[0])
                self.assertEqual(z["filenames"].tolist(), [self.records[i].img_path for i in self.dist.calls[0]])
                self.assertEqual(z["indices"].tolist(), order)
                self.assertEqual(z["pids"].tolist(), PIDS)
                self.assertEqual(int(z["epoch"]), 0)

    def test_errors(self):
        with self.assertRaises(ValueError):
            self.sampler(batch_size=7, num_instance=2)
        with self.assertRaisesRegex(ValueError, "Fix"):
            self.sampler(batch_size=16, num_instance=2)  # 8 classes per batch, only 6 classes
        s = GraphSampler(self.records, lambda idx: np.zeros((5, 5)), batch_size=6, num_instance=2)
        with self.assertRaises(ValueError):
            list(s)


if __name__ == "__main__":
    unittest.main()
