"""GCN pieces: DRNL labels and the pair subgraph worked out by hand, DGCNN shapes and SortPooling, Reptile's
update rules on a two-parameter toy."""
import unittest

import numpy as np
import torch

from mprd.gcn.dgcnn import DGCNN, sort_pool, sortpool_k
from mprd.gcn.graph import build_graphs, drnl_labels, label_subgraph, pair_edges
from mprd.gcn.reptile import reptile_step


def adjacency(n, edges):
    a = np.zeros((n, n))
    for i, j in edges:
        a[i, j] = a[j, i] = 1
    return a


class TestDRNL(unittest.TestCase):
    def test_hand_worked_graph(self):
        # targets 0, 1; path 0-2-3-1; 4 hangs on 0; 5 isolated; 6 joins 2 and 3; 7 joins 0 and 1
        a = adjacency(8, [(0, 2), (2, 3), (3, 1), (0, 4), (6, 2), (6, 3), (7, 0), (7, 1), (0, 1)])
        # node: (d to 1 without 0, d to 0 without 1) -> 1 + min + (d//2)(d//2 + d%2 - 1)
        # 2: (2, 1) -> 3; 3: (1, 2) -> 3; 4: (inf, 1) -> 0; 5: unreachable -> 0; 6: (2, 2) -> 5; 7: (1, 1) -> 2
        np.testing.assert_array_equal(drnl_labels(a, 0, 1), [1, 1, 3, 3, 0, 0, 5, 2])

    def test_far_nodes_are_clipped(self):
        # chain 0-2-3-4-5-1: node 2 (4, 1) -> 1 + 1 + 2*(2+1-1) = 6; 3 (3, 2) -> 7; 4 (2, 3) -> 7; 5 (1, 4) -> 6
        a = adjacency(6, [(0, 2), (2, 3), (3, 4), (4, 5), (5, 1)])
        np.testing.assert_array_equal(drnl_labels(a, 0, 1), [1, 1, 1 + 1 + 2 * (2 + 1 - 1), 7, 7, 6])
        # a long chain: labels beyond 15 are clipped
        n = 14
        a = adjacency(n, [(0, 2)] + [(i, i + 1) for i in range(2, n - 1)] + [(n - 1, 1)])
        self.assertEqual(drnl_labels(a, 0, 1).max(), 15)


class TestSubgraph(unittest.TestCase):
    bank = torch.tensor([[1., 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 2], [0, 1, 1]])

    def test_edges_by_hand(self):
        # u = 4: dots with [0,0,2] = 0,0,0,2,4,2 -> top-3 [4, 3, 5] -> (4,3), (4,5)
        # v = 1: dots with [1,1,0] = 1,2,1,0,0,1 -> top-3 [1, 0, 2] (tie 0/2/5 by index) -> (0,1), (2,1)
        e = pair_edges(4, 1, self.bank[4], self.bank[1], self.bank, topk=3)
        np.testing.assert_array_equal(e, [[0, 1], [2, 1], [4, 3], [4, 5]])

    def test_labels_both_target_modes(self):
        g = build_graphs([(4, 1)], self.bank, self.bank, topk=3)[0]
        np.testing.assert_array_equal(g.nodes, [0, 1, 2, 3, 4, 5])
        # original: DRNL targets are the two smallest ids (0, 1); 0 only touches 1 -> everything else 0
        np.testing.assert_array_equal(g.labels, [1, 1, 0, 0, 0, 0])
        self.assertEqual(float(g.adj[0, 1]), 0.0)           # edge between local 0 and 1 removed
        self.assertEqual(float(g.adj[4, 1]), 1.0)           # the real target edge stays
        g = build_graphs([(4, 1)], self.bank, self.bank, topk=3, targets="pair")[0]
        np.testing.assert_array_equal(g.labels, [0, 1, 0, 0, 1, 0])
        self.assertEqual(float(g.adj[4, 1]), 0.0)
        self.assertEqual(float(g.adj[0, 1]), 1.0)
        self.assertTrue(torch.equal(g.adj, g.adj.t()))

    def test_relabel_is_ascending(self):
        g = label_subgraph(9, 3, np.array([[9, 7], [3, 5]]))
        np.testing.assert_array_equal(g.nodes, [3, 5, 7, 9])
        self.assertEqual(float(g.adj[3, 0]), 1.0)           # target (9, 3) is local (3, 0): it stays
        self.assertEqual(float(g.adj[0, 1]), 0.0)           # (3, 5) is local (0, 1): removed (original quirk)


class TestDGCNN(unittest.TestCase):
    def test_sortpool(self):
        h = torch.tensor([[[1., 0.3], [2., 0.9], [3., -0.5], [0., 0.]]])
        mask = torch.tensor([[True, True, True, False]])
        out = sort_pool(h, mask, 5)
        torch.testing.assert_close(out[0], torch.tensor([[2., 0.9], [1., 0.3], [3., -0.5], [0., 0.], [0., 0.]]))
        torch.testing.assert_close(sort_pool(h, mask, 2)[0], torch.tensor([[2., 0.9], [1., 0.3]]))
        self.assertEqual(sortpool_k([5, 12, 16]), 12)       # ceil(0.6 * 3) = 2nd smallest
        self.assertEqual(sortpool_k([3, 4, 5, 6]), 10)      # at least 10

    def test_forward_shapes_and_permutation_invariance(self):
        torch.manual_seed(0)
        bank = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
        net = DGCNN(8, latent=(6, 6, 1), conv_channels=(4, 5), hidden=7).eval()
        self.assertEqual(net.conv1.kernel_size, (13,))
        graphs = build_graphs([(0, 1), (2, 30), (5, 5 + 1)], bank, bank, topk=8)
        out = net(graphs, bank)
        self.assertEqual(tuple(out.shape), (3, 2))
        torch.testing.assert_close(out.exp().sum(1), torch.ones(3))
        g = graphs[1]
        perm = torch.randperm(len(g.nodes))
        from mprd.gcn.graph import PairGraph
        gp = PairGraph(g.adj[perm][:, perm], g.labels[perm], g.nodes[perm])
        torch.testing.assert_close(net([gp], bank), net([g], bank))
        self.assertEqual(sum(p.numel() for p in DGCNN(2048).parameters()) > 10_000_000, True)  # spec widths
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                self.assertTrue(torch.equal(m.bias, torch.zeros_like(m.bias)))


class TestReptile(unittest.TestCase):
    def toy(self, rule, wd=0.0):
        a, b = torch.nn.Parameter(torch.tensor(1.0)), torch.nn.Parameter(torch.tensor(1.0))
        outer = torch.optim.SGD([a, b], lr=0.5, weight_decay=wd)
        reptile_step([a, b], lambda: a ** 2 + b, outer, inner_steps=2, inner_lr=0.1, rule=rule)
        return a, b, outer

    def test_original_rule(self):
        # inner: grads (2,1) -> (.8,.9); accumulated (3.6,2) -> (.44,.7); outer grad -(theta2-theta0) = (.56,.3)
        # theta = theta2 - .5 * (grad + wd * theta2)
        a, b, outer = self.toy("original")
        self.assertAlmostEqual(float(a.detach()), 0.16, places=6)
        self.assertAlmostEqual(float(b), 0.55, places=6)
        a, b, outer = self.toy("original", wd=0.1)
        self.assertAlmostEqual(float(a), 0.16 - 0.022, places=6)
        self.assertAlmostEqual(float(b), 0.55 - 0.035, places=6)
        self.assertAlmostEqual(float(a.grad), 0.56, places=6)          # left for the next meta-batch

    def test_proper_rule(self):
        # inner with zeroed grads: (.8,.9) -> (.64,.8); theta0 + .5 (theta2 - theta0) = (.82, .9)
        a, b, _ = self.toy("proper")
        self.assertAlmostEqual(float(a), 0.82, places=6)
        self.assertAlmostEqual(float(b), 0.9, places=6)


if __name__ == "__main__":
    unittest.main()
