"""qaconv.evaluate: chunked scores against one matcher call, modes and dtypes, distance transforms, time stamps,
the evaluation on an identity-structured problem against a direct computation, the re-ranking / TLift path and
feature-map extraction from image files."""
import math
import os
import tempfile
import unittest
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from common.datasets.base import Record, ReidDataset
from common.eval.features import Features
from qaconv.evaluate import (evaluate_qaconv, extract_feature_maps, pairwise_scores, rank_metrics, record_times,
                             score_to_distance)
from qaconv.rerank import k_reciprocal_rerank
from qaconv.tlift import tlift


class PooledCosine(nn.Module):
    """Stand-in matcher: cosine of the spatially averaged maps times a scale; +100 in train mode, so a result
    computed in train mode is visible. Records the (probes, gallery) size of every call."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.0))
        self.inner = nn.Dropout(0.5)
        self.calls = []

    def forward(self, prob, gal):
        self.calls.append((prob.shape[0], gal.shape[0]))
        a = F.normalize(prob.mean(dim=(2, 3)), dim=1)
        b = F.normalize(gal.mean(dim=(2, 3)), dim=1)
        s = self.scale * (a @ b.t())
        return s + 100 if self.training else s


class WrongShape(nn.Module):
    def forward(self, prob, gal):
        return torch.zeros(1, 1)


def cosine_scores(prob, gal, scale=3.0):
    """Independent float64 computation of the stand-in's eval-mode scores."""
    a = prob.double().mean(dim=(2, 3))
    b = gal.double().mean(dim=(2, 3))
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    return scale * (a @ b.t())


def random_maps(n, seed, c=3, h=2, w=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g)


class TestPairwiseScores(unittest.TestCase):
    def setUp(self):
        self.prob, self.gal = random_maps(7, 0), random_maps(5, 1)
        self.matcher = PooledCosine().eval()
        with torch.no_grad():
            self.full = self.matcher(self.prob, self.gal)

    def test_chunked_equals_one_call(self):
        for pb, gb in [(1, 1), (3, 2), (4, 5), (2, 3), (7, 5), (100, 100)]:
            self.matcher.calls = []
            out = pairwise_scores(self.matcher, self.prob, self.gal, prob_batch=pb, gal_batch=gb)
            self.assertEqual(out.shape, (7, 5))
            self.assertEqual(out.dtype, torch.float32)
            self.assertEqual(out.device.type, "cpu")
            torch.testing.assert_close(out, self.full, rtol=0, atol=1e-6)
            torch.testing.assert_close(out.double(), cosine_scores(self.prob, self.gal), rtol=0, atol=1e-5)
            # memory bound: every call sees at most one chunk of each side, and every pair is scored once
            self.assertTrue(all(p <= pb and g <= gb for p, g in self.matcher.calls))
            self.assertEqual(len(self.matcher.calls), math.ceil(7 / pb) * math.ceil(5 / gb))
            self.assertEqual(sum(p * g for p, g in self.matcher.calls), 35)

    def test_eval_mode_and_modes_restored(self):
        self.matcher.train()
        self.matcher.inner.eval()  # a child deliberately in another mode keeps it
        out = pairwise_scores(self.matcher, self.prob, self.gal, prob_batch=3, gal_batch=2)
        torch.testing.assert_close(out, self.full, rtol=0, atol=1e-6)  # no +100: eval mode was used
        self.assertTrue(self.matcher.training)
        self.assertFalse(self.matcher.inner.training)

    def test_other_dtype_uses_a_copy(self):
        out = pairwise_scores(self.matcher, self.prob, self.gal, prob_batch=4, gal_batch=4, dtype=torch.float64)
        self.assertEqual(out.dtype, torch.float32)
        torch.testing.assert_close(out, cosine_scores(self.prob, self.gal).float(), rtol=0, atol=1e-6)
        self.assertEqual(self.matcher.scale.dtype, torch.float32)  # the caller's matcher is not converted

    def test_half_on_cpu_falls_back_to_float32(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = pairwise_scores(self.matcher, self.prob, self.gal, dtype=torch.float16)
        self.assertTrue(any(issubclass(w.category, RuntimeWarning) for w in caught))
        torch.testing.assert_close(out, self.full, rtol=0, atol=1e-6)

    def test_bad_shapes(self):
        with self.assertRaises(ValueError):
            pairwise_scores(self.matcher, self.prob, random_maps(5, 1, c=4))
        with self.assertRaises(ValueError):
            pairwise_scores(self.matcher, self.prob, self.gal, prob_batch=0)
        with self.assertRaises(ValueError):
            pairwise_scores(WrongShape(), self.prob, self.gal)


class TestDistance(unittest.TestCase):
    def test_modes(self):
        s = torch.tensor([[0.0, 10.0], [-20.0, 5.0]])
        torch.testing.assert_close(score_to_distance(s), -s)
        expected = torch.tensor([[0.5, 1 - 1 / (1 + math.exp(-1))], [1 - 1 / (1 + math.exp(2)),
                                                                    1 - 1 / (1 + math.exp(-0.5))]])
        torch.testing.assert_close(score_to_distance(s, "sigmoid"), expected)
        np.testing.assert_allclose(score_to_distance(s.numpy(), "sigmoid"), expected.numpy(), rtol=1e-6)
        with self.assertRaises(ValueError):
            score_to_distance(s, "cosine")


class TestRecordTimes(unittest.TestCase):
    def test_duke_sync_offsets(self):
        offsets = (5542, 3606, 27243, 31181, 0, 22401, 18967, 46765)
        ds = ReidDataset([], [], [], "duke", fps=59.94, sync_offsets=offsets)
        recs = [Record("a", 1, 0, 100), Record("b", 1, 1, 0), Record("c", 2, 4, 7), Record("d", 3, 7, 59940)]
        t = record_times(ds, recs)
        np.testing.assert_allclose(t, [5642 / 59.94, 3606 / 59.94, 7 / 59.94, (59940 + 46765) / 59.94])
        self.assertEqual(t.dtype, np.float64)

    def test_fps_only_and_plain_dict(self):
        recs = [Record("a", 1, 0, 250), Record("b", 2, 5, 0)]
        np.testing.assert_allclose(record_times(ReidDataset([], [], [], "market", fps=25), recs), [10.0, 0.0])
        np.testing.assert_allclose(record_times({"fps": 24}, recs), [250 / 24, 0.0])

    def test_missing_time_information(self):
        recs = [Record("a", 1, 0, 250), Record("b", 2, 1)]  # second record has no frame (-1)
        self.assertIsNone(record_times({"fps": 25}, recs))
        self.assertIsNone(record_times({}, [Record("a", 1, 0, 250)]))  # no fps

    def test_camera_outside_offsets(self):
        with self.assertRaises(ValueError):
            record_times({"fps": 1, "sync_offsets": (0, 1)}, [Record("a", 1, 2, 5)])


def direct_metrics(dist, q_pids, g_pids, q_cams, g_cams):
    """Rank-1/5, AP, INP per query straight from the definitions (Market protocol)."""
    r1, r5, aps, inps = [], [], [], []
    for i in range(dist.shape[0]):
        order = sorted(range(dist.shape[1]), key=lambda j: dist[i, j])
        order = [j for j in order if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        hits = [k for k, j in enumerate(order) if g_pids[j] == q_pids[i]]
        if not hits:
            continue
        r1.append(float(hits[0] < 1))
        r5.append(float(hits[0] < 5))
        aps.append(np.mean([(n + 1) / (k + 1) for n, k in enumerate(hits)]))
        inps.append(len(hits) / (hits[-1] + 1))
    return np.mean(r1), np.mean(r5), np.mean(aps), np.mean(inps)


def identity_problem(seed=0):
    """4 query identities; the gallery holds, per identity, an exact copy of the query map (so rank-1 is 1) and a
    noisy version (so the AP is not trivially 1), plus 4 distractors (pid 0). Query camera 0, gallery camera 1."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(4, 6, 2, 3, generator=g)
    copies = query.clone()
    noisy = query + 1.5 * torch.randn(4, 6, 2, 3, generator=g)
    distractors = torch.randn(4, 6, 2, 3, generator=g)
    gallery = torch.cat([copies, noisy, distractors])
    q_pids = np.array([1, 2, 3, 4])
    g_pids = np.array([1, 2, 3, 4, 1, 2, 3, 4, 0, 0, 0, 0])
    q_recs = [Record(f"q{i}", int(p), 0, 10 * i) for i, p in enumerate(q_pids)]
    g_recs = [Record(f"g{i}", int(p), 1, 7 * i) for i, p in enumerate(g_pids)]
    return query, gallery, q_recs, g_recs


class TestEvaluateQAConv(unittest.TestCase):
    def setUp(self):
        self.query, self.gallery, self.q_recs, self.g_recs = identity_problem()
        self.q_pids = np.array([r.pid for r in self.q_recs])
        self.g_pids = np.array([r.pid for r in self.g_recs])
        self.q_cams, self.g_cams = np.zeros(4, dtype=int), np.ones(12, dtype=int)
        self.dist = -cosine_scores(self.query, self.gallery).numpy()

    def test_plain_metrics_against_direct_computation(self):
        res, dists = evaluate_qaconv(PooledCosine(), self.query, self.gallery, self.q_recs, self.g_recs,
                                     prob_batch=3, gal_batch=5, use_cython=False, return_dists=True)
        np.testing.assert_allclose(dists["dist"], self.dist, atol=1e-6)
        r1, r5, m_ap, m_inp = direct_metrics(self.dist, self.q_pids, self.g_pids, self.q_cams, self.g_cams)
        self.assertEqual(res["rank1"], 1.0)
        self.assertEqual(res["openreid_rank1"], 1.0)
        self.assertLess(m_ap, 1.0)  # the noisy copies do not all rank second: AP is a real check
        self.assertAlmostEqual(res["rank5"], r5, places=12)
        self.assertAlmostEqual(res["mAP"], m_ap, places=12)
        self.assertAlmostEqual(res["openreid_mAP"], m_ap, places=12)  # no ties: sklearn AP = rank-order AP
        self.assertAlmostEqual(res["mINP"], m_inp, places=12)
        self.assertEqual(res["rank20"], 1.0)
        self.assertTrue(all(isinstance(v, float) for v in res.values()))
        self.assertFalse(any(k.endswith(("_rerank", "_tlift")) for k in res))

    def test_features_input_and_sigmoid_distance(self):
        qf = Features(self.query, self.q_pids, self.q_cams, np.arange(4))
        gf = Features(self.gallery, self.g_pids, self.g_cams, np.arange(12))
        res, dists = evaluate_qaconv(PooledCosine(), qf, gf, distance="sigmoid", use_cython=False,
                                     return_dists=True)
        expected = 1 - 1 / (1 + np.exp(self.dist / 10))  # 1 - sigmoid(score / 10), score = -dist
        np.testing.assert_allclose(dists["dist"], expected, atol=1e-6)
        self.assertEqual(res["rank1"], 1.0)
        with self.assertRaises(ValueError):
            evaluate_qaconv(PooledCosine(), self.query, self.gallery)  # no identities

    def test_rerank_and_tlift_path(self):
        q_times = np.array([0.0, 30.0, 500.0, 520.0])
        g_times = np.arange(12) * 60.0
        res, dists = evaluate_qaconv(PooledCosine(), self.query, self.gallery, self.q_recs, self.g_recs,
                                     query_times=q_times, gallery_times=g_times, prob_batch=2, gal_batch=3,
                                     do_tlift=True, k1=4, k2=2, tau=100, sigma=200, K=3, alpha=0.2,
                                     use_cython=False, return_dists=True)
        # independent assembly of the (q+g)^2 matrix from direct scores
        allmaps = torch.cat([self.query, self.gallery])
        full = -cosine_scores(allmaps, allmaps).numpy()
        rerank = k_reciprocal_rerank(full, 4, k1=4, k2=2, lambda_value=0.3)
        np.testing.assert_allclose(dists["dist_rerank"], rerank, atol=2e-3)
        lifted = tlift(1 - dists["dist_rerank"], self.g_cams, g_times, self.q_cams, q_times, num_cams=2, tau=100,
                       sigma=200, K=3, alpha=0.2)
        np.testing.assert_allclose(dists["dist_tlift"], 1 - lifted, atol=1e-6)
        for suffix in ("", "_rerank", "_tlift"):
            for key in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "openreid_rank1", "openreid_mAP"):
                self.assertIn(key + suffix, res)
        expect = rank_metrics(dists["dist_tlift"], self.q_pids, self.g_pids, self.q_cams, self.g_cams, "_tlift",
                              use_cython=False)
        for k, v in expect.items():
            self.assertAlmostEqual(res[k], v, places=12)
        r1, _, m_ap, _ = direct_metrics(dists["dist_rerank"], self.q_pids, self.g_pids, self.q_cams, self.g_cams)
        self.assertAlmostEqual(res["rank1_rerank"], r1, places=12)
        self.assertAlmostEqual(res["mAP_rerank"], m_ap, places=5)

    def test_rerank_alone_and_tlift_without_times(self):
        res = evaluate_qaconv(PooledCosine(), self.query, self.gallery, self.q_recs, self.g_recs, do_rerank=True,
                              k1=4, k2=2, use_cython=False)
        self.assertIn("mAP_rerank", res)
        self.assertNotIn("mAP_tlift", res)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = evaluate_qaconv(PooledCosine(), self.query, self.gallery, self.q_recs, self.g_recs,
                                  do_tlift=True, use_cython=False)
        self.assertTrue(any("TLift skipped" in str(w.message) for w in caught))
        self.assertNotIn("mAP_rerank", res)
        self.assertNotIn("mAP_tlift", res)


class TestExtractFeatureMaps(unittest.TestCase):
    def test_matches_manual_transform_without_normalize(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU())
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as tmp:
            records = []
            for i in range(3):
                path = os.path.join(tmp, f"{i}.png")
                Image.fromarray(rng.integers(0, 256, (13, 7, 3), dtype=np.uint8)).save(path)
                records.append(Record(path, i + 1, i % 2, -1))
            feats = extract_feature_maps(model, records, 8, 4, "cpu", batch_size=2, workers=0, progress=False)
            manual = T.Compose([T.Resize((8, 4), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()])
            images = torch.stack([manual(Image.open(r.img_path).convert("RGB")) for r in records])
        with torch.no_grad():
            expected = model(images)
        self.assertEqual(tuple(feats.feats.shape), (3, 2, 8, 4))
        torch.testing.assert_close(feats.feats, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(feats.pids, [1, 2, 3])
        np.testing.assert_array_equal(feats.camids, [0, 1, 0])


class TestWithQAConvMatcher(unittest.TestCase):
    def test_chunk_invariance_of_the_real_matcher(self):
        try:
            from qaconv.model import QAConv
        except ImportError as exc:  # pragma: no cover - only while the model is missing
            self.skipTest(f"qaconv.model.QAConv not importable: {exc}")
        torch.manual_seed(0)
        matcher = QAConv(8, 3, 2)
        matcher.train()
        prob = F.normalize(torch.randn(5, 8, 3, 2), dim=1)
        gal = F.normalize(torch.randn(6, 8, 3, 2), dim=1)
        matcher.eval()
        with torch.no_grad():
            full = matcher(prob, gal).float()
        matcher.train()
        out = pairwise_scores(matcher, prob, gal, prob_batch=2, gal_batch=4)
        torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)
        self.assertTrue(matcher.training)


    def test_sparse_rerank_path_equals_the_dense_one(self):
        # above SPARSE_RERANK_MIN_ITEMS the re-ranking asks the real (non-symmetric) matcher for score blocks only;
        # it must give the dense (q+g)^2 path's distances, in both release orientations
        from unittest import mock
        import qaconv.evaluate as QE
        from qaconv.model import QAConv
        torch.manual_seed(1)
        prob = F.normalize(torch.randn(6, 8, 3, 2), dim=1)
        gal = F.normalize(torch.randn(20, 8, 3, 2), dim=1)
        q_recs = [Record(f"q{i}.jpg", i % 3 + 1, 0, -1) for i in range(6)]
        g_recs = [Record(f"g{i}.jpg", i % 5 + 1, 1, -1) for i in range(20)]
        for version, layout in ((None, "2.1"), ("1.0", "1")):
            matcher = QAConv(8, 3, 2, version=layout)
            with torch.no_grad():
                matcher.fc.weight.normal_()  # a matcher whose s(a, b) != s(b, a) in the 1.x layout
            out = {}
            for name, threshold in (("dense", 10 ** 9), ("sparse", 0)):
                with mock.patch.object(QE, "rerank_sparse", wraps=QE.rerank_sparse) as sparse:
                    out[name] = evaluate_qaconv(matcher, prob, gal, q_recs, g_recs, prob_batch=4, gal_batch=7,
                                                distance="sigmoid", do_rerank=True, k1=4, k2=2, use_cython=False,
                                                return_dists=True, version=version, sparse_rerank_min=threshold)
                self.assertEqual(sparse.call_count, int(name == "sparse"))
            np.testing.assert_allclose(out["sparse"][1]["dist_rerank"], out["dense"][1]["dist_rerank"], atol=1e-6)
            self.assertFalse(np.allclose(out["dense"][1]["dist_rerank"], out["dense"][1]["dist"], atol=1e-3))
            self.assertAlmostEqual(out["sparse"][0]["mAP_rerank"], out["dense"][0]["mAP_rerank"], places=6)


if __name__ == "__main__":
    unittest.main()
