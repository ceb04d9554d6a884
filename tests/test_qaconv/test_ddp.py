"""QAConv under torchrun (2 gloo processes on the CPU) against one process, on tiny synthetic settings.

* qaconv/main_gs.py (2.1: graph sampler, K = 2, triplet loss on the gathered batch, backbone BN frozen) and
  qaconv/main.py (1.2: class memory updated from the gathered batch, pre-training trials re-initialised on rank 0
  and broadcast, ``--sync-bn``): after a few steps the 2-process checkpoint equals the 1-process one on the same
  global batch to 1e-5, and so do the test figures;
* a 2-process run killed after its first checkpoint resumes (2 processes) to the weights of the uninterrupted run;
* resuming a 2-process checkpoint with one process stops with exit status 2 and names both world sizes;
* rank 1 writes nothing: the run folder holds the same files as a 1-process run's, log lines are not doubled;
* in one process: rank 0's and rank 1's shares of the training loader (1.x shuffle, 2.x graph sampler) concatenate
  to the single-process batches, with whole identities per share;
* test-time matching by gallery blocks and sharded feature maps: the gathered (Q x G) score matrix and the maps
  are identical (torch.equal) to one process, uneven shards included; rank 1 receives rank 0's figures.

The module launches itself under torchrun for the last point (``python test_ddp.py OUT DATA``).
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.checkpoint import load_checkpoint  # noqa: E402
from common.datasets import build_dataset  # noqa: E402
from common.eval.features import Features  # noqa: E402
from qaconv.evaluate import (evaluate_qaconv, extract_feature_maps, pairwise_scores,  # noqa: E402
                             sharded_feature_maps, sharded_pairwise_scores)
from qaconv.model import QAConv, ResMap  # noqa: E402
from tests.e2e import clean_env, launch_command  # noqa: E402

IDS = 24  # 12 training identities (110 images), 32 queries, 76 gallery images
GS_ARGS = ["--epochs", "2", "--max-batches", "2", "-b", "8", "--num_instance", "2"]
CM_ARGS = ["--epochs", "2", "--max-batches", "2", "-b", "8", "--pre_epochs", "1", "--num_trials", "2",
           "--max_steps", "3", "--acc_thr", "2", "--sync-bn"]
TOL = 1e-5


def base_args(data, exp_dir):
    # --train-aug none: no random augmentation, so rank 1's images are those of the single process
    return ["--dataset", "synthetic", "--data-dir", data, "--synthetic-ids", str(IDS), "-a", "resnet18", "--ibn",
            "none", "--no-pretrained", "--height", "32", "--width", "16", "--device", "cpu", "-j", "0",
            "--no-progress", "--print-freq", "0", "--train-aug", "none", "--no-check-images", "--exp-dir", exp_dir,
            "--run-name", "t"]


env = clean_env


def command(script, args, nproc=1):
    return launch_command(os.path.join(ROOT, "qaconv", script), args, nproc)


def run(script, args, nproc=1, cwd=None):
    return subprocess.run(command(script, args, nproc), cwd=cwd or ROOT, env=env(), capture_output=True, text=True,
                          timeout=900)


def run_dir(exp_dir):
    return os.path.join(exp_dir, "qaconv", "synthetic", "t")


def checkpoint(exp_dir):
    return load_checkpoint(os.path.join(run_dir(exp_dir), "checkpoint.pth"))


def children(pid):
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out


class Case(unittest.TestCase):
    def assertStatesClose(self, a, b, atol=TOL):
        for part in ("model", "criterion"):
            self.assertEqual(sorted(a[part]), sorted(b[part]), part)
            for k, v in a[part].items():
                w = b[part][k]
                if v.is_floating_point():
                    self.assertTrue(torch.allclose(v, w, atol=atol, rtol=TOL),
                                    (part, k, (v - w).abs().max().item()))
                else:
                    self.assertTrue(torch.equal(v, w), (part, k))


class TestDDPTraining(Case):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="qaconv-ddp-")
        cls.data = os.path.join(cls._tmp.name, "data")
        build_dataset("synthetic", cls.data, num_ids=IDS, verbose=False)
        cls.exp = {name: os.path.join(cls._tmp.name, name) for name in ("gs1", "gs2", "cm1", "cm2", "kill")}
        cls.proc = {}
        for name, script, extra, nproc in (("gs1", "main_gs.py", GS_ARGS, 1), ("gs2", "main_gs.py", GS_ARGS, 2),
                                           ("cm1", "main.py", CM_ARGS, 1), ("cm2", "main.py", CM_ARGS, 2)):
            cls.proc[name] = run(script, base_args(cls.data, cls.exp[name]) + extra, nproc, cwd=cls._tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def ok(self, name):
        p = self.proc[name]
        self.assertEqual(p.returncode, 0, f"{name}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")

    def results(self, name):
        import json
        with open(os.path.join(run_dir(self.exp[name]), "results.json")) as f:
            return json.load(f)

    def test_graph_sampling_two_processes_equal_one(self):
        self.ok("gs1"), self.ok("gs2")
        a, b = checkpoint(self.exp["gs1"]), checkpoint(self.exp["gs2"])
        self.assertEqual((a["epoch"], a.get("world_size", 1), b["epoch"], b["world_size"]), (2, 1, 2, 2))
        self.assertEqual(len(b["rng_states"]), 2)
        self.assertStatesClose(a, b)
        self.assertEqual(a["sampler"]["pointers"].tolist(), b["sampler"]["pointers"].tolist())
        for k in ("rank1", "rank5", "mAP"):  # sharded evaluation: the same figures (weights differ by ~1e-6)
            self.assertAlmostEqual(self.results("gs1")["synthetic"][k], self.results("gs2")["synthetic"][k], 3)

    def test_class_memory_two_processes_with_sync_bn_equal_one(self):
        self.ok("cm1"), self.ok("cm2")
        a, b = checkpoint(self.exp["cm1"]), checkpoint(self.exp["cm2"])
        self.assertEqual((a["epoch"], b["epoch"], b["world_size"]), (2, 2, 2))
        self.assertGreater(float(a["criterion"]["valid_class"].sum()), 0)  # the memory was written
        self.assertStatesClose(a, b)
        self.assertEqual(self.results("cm1")["pretrain"]["trial"], self.results("cm2")["pretrain"]["trial"])

    def test_rank_one_writes_nothing(self):
        self.ok("gs1"), self.ok("gs2")
        one, two = run_dir(self.exp["gs1"]), run_dir(self.exp["gs2"])
        self.assertEqual(sorted(os.listdir(one)), sorted(os.listdir(two)))
        self.assertEqual(len(os.listdir(os.path.join(one, "tb"))), len(os.listdir(os.path.join(two, "tb"))))
        with open(os.path.join(two, "log.txt")) as f:
            lines = [line.split("] ", 1)[-1] for line in f.read().splitlines() if line.strip()]
        epochs = [line for line in lines if line.startswith("epoch ")]
        self.assertEqual(len(epochs), 2, epochs)  # once per epoch, not once per rank
        self.assertIn("torchrun: 2 processes", "\n".join(lines))
        with open(os.path.join(two, "metrics.jsonl")) as f, open(os.path.join(one, "metrics.jsonl")) as g:
            self.assertEqual(len(f.read().splitlines()), len(g.read().splitlines()))

    def test_resuming_a_two_process_checkpoint_alone_is_a_clear_error(self):
        self.ok("gs2")
        exp = os.path.join(self._tmp.name, "alone")
        shutil.copytree(self.exp["gs2"], exp)
        p = run("main_gs.py", base_args(self.data, exp) + GS_ARGS[:1] + ["4"] + GS_ARGS[2:], cwd=self._tmp.name)
        self.assertEqual(p.returncode, 2, p.stderr[-3000:])
        err = p.stderr + p.stdout
        self.assertIn("written by 2 process(es), this run has 1", err)
        self.assertIn("--nproc_per_node 2", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(checkpoint(exp)["epoch"], 2)  # untouched

    def test_killed_two_process_run_resumes_to_the_same_weights(self):
        self.ok("gs2")
        args = base_args(self.data, self.exp["kill"]) + GS_ARGS
        proc = subprocess.Popen(command("main_gs.py", args, 2), cwd=self._tmp.name, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ck = os.path.join(run_dir(self.exp["kill"]), "checkpoint.pth")
        deadline = time.time() + 600
        while not os.path.exists(ck) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        for pid in children(proc.pid) + [proc.pid]:  # the workers (own sessions) and torchrun, as a crash
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        self.assertLess(checkpoint(self.exp["kill"])["epoch"], 2, "the run finished before it could be killed")
        p = run("main_gs.py", args, 2, cwd=self._tmp.name)
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.assertIn("resumed from", p.stdout + p.stderr)
        a, b = checkpoint(self.exp["gs2"]), checkpoint(self.exp["kill"])
        self.assertEqual((a["epoch"], b["epoch"]), (2, 2))
        self.assertStatesClose(a, b, atol=1e-6)
        self.assertEqual(a["sampler"]["pointers"].tolist(), b["sampler"]["pointers"].tolist())


# ----------------------------------------------------------------------------------------------- batch shares
class TestShares(unittest.TestCase):
    """In one process: the ranks' shares of qaconv.ddp.sharded_loader, concatenated in rank order, are the
    batches of the single-process loader of qaconv.engine.build_loader, epoch after epoch (same seed)."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="qaconv-ddp-shares-")
        cls.train = build_dataset("synthetic", cls._tmp.name, num_ids=IDS, verbose=False).train

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def args(self, *extra):
        from qaconv.config import build_parser, parse_args
        return parse_args(build_parser("t", "", ("2.0", "2.1")) if "--num_instance" in extra else
                          build_parser("t", "", ("1.0", "1.1", "1.2")),
                          ["--dataset", "synthetic", "--seed", "5", "-j", "0", "-b", "8", *extra])

    @staticmethod
    def batches(loader, epoch):
        loader.set_epoch(epoch)
        return [b[3].tolist() for b in loader]

    def check(self, args, single, make_share, group):
        from common.data.samplers import extract_pids
        pids = np.asarray(extract_pids(self.train))
        shares = [make_share(r) for r in range(2)]
        for epoch in range(2):
            ref = self.batches(single, epoch)
            got = [self.batches(s, epoch) for s in shares]
            self.assertEqual(len(got[0]), len(ref))
            for b, (x, y) in enumerate(zip(*got)):
                self.assertEqual(x + y, ref[b], (epoch, b))
                self.assertEqual(len(x), len(y))
                for share in (x, y):  # whole identities: runs of `group` images of one pid
                    runs = pids[share].reshape(-1, group)
                    self.assertTrue((runs == runs[:, :1]).all())

    def test_shuffle_shares_make_the_one_process_batches(self):
        from qaconv import engine
        from qaconv import transforms as QT
        from qaconv.ddp import sharded_loader
        args = self.args()
        t = QT.build_test_transform(32, 16)
        self.check(args, engine.build_loader(args, self.train, "none"),
                   lambda r: sharded_loader(self.train, t, 8, 0, args.seed, rank=r, world_size=2), 1)

    def test_graph_sampler_shares_make_the_one_process_batches(self):
        from qaconv import engine
        from qaconv import transforms as QT
        from qaconv.ddp import sharded_loader
        from qaconv.graph_sampler import GraphSampler
        args = self.args("--num_instance", "2")
        t = QT.build_test_transform(32, 16)
        rng = np.random.default_rng(0)
        dist = rng.random((12, 12))  # a fixed class distance stands in for the model's

        def sampler():
            return GraphSampler(self.train, lambda idx: dist, 8, 2, seed=args.seed)
        self.check(args, engine.build_loader(args, self.train, "none", sampler()),
                   lambda r: sharded_loader(self.train, t, 8, 0, args.seed, sampler(), 2, rank=r, world_size=2), 2)


# ----------------------------------------------------------------------------------------------- sharded matching
Q, G, GAL_BATCH, FEA_BATCH = 13, 23, 4, 4  # 6 gallery chunks of 4 (+3): shards of 12 and 11; maps in 4s


def matcher_and_maps():
    torch.manual_seed(3)
    matcher = QAConv(8, 2, 3, version="1")
    with torch.no_grad():  # non-trivial BN statistics: eval-mode scores then depend on them
        for bn in (matcher.bn, matcher.logit_bn):
            bn.running_mean.fill_(0.2)
            bn.running_var.fill_(1.7)
    maps = torch.nn.functional.normalize(torch.randn(Q + G, 8, 2, 3), dim=1)
    ids = np.arange(Q + G) % 5
    cams = np.arange(Q + G) % 3
    return matcher, Features(maps[:Q], ids[:Q], cams[:Q], np.arange(Q)), \
        Features(maps[Q:], ids[Q:], cams[Q:], np.arange(G))


def feature_model():
    torch.manual_seed(4)
    return ResMap("resnet18", final_layer="layer2", neck=8, ibn=None, pretrained=False).eval()


def records(data):
    return build_dataset("synthetic", data, num_ids=IDS, verbose=False).gallery[:11]


def sharded_worker(out_dir, data):
    """Run under torchrun: what each rank computes, saved as rank<r>.pt."""
    from common.distributed import get_rank, init_distributed
    init_distributed("cpu")
    matcher, q, g = matcher_and_maps()
    score = sharded_pairwise_scores(matcher, q.feats, g.feats, prob_batch=5, gal_batch=GAL_BATCH)
    res = evaluate_qaconv(matcher, q, g, prob_batch=5, gal_batch=GAL_BATCH, do_rerank=True, k1=4, k2=2)
    maps = sharded_feature_maps(feature_model(), records(data), 32, 16, "cpu", FEA_BATCH, 0, progress=False)
    torch.save({"score": score, "res": res, "maps": maps.feats, "indices": maps.indices, "pids": maps.pids},
               os.path.join(out_dir, f"rank{get_rank()}.pt"))


class TestShardedMatching(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="qaconv-ddp-match-")
        cls.data = os.path.join(cls._tmp.name, "data")
        build_dataset("synthetic", cls.data, num_ids=IDS, verbose=False)
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            os.path.abspath(__file__), cls._tmp.name, cls.data], cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise AssertionError(f"torchrun failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        cls.out = [torch.load(os.path.join(cls._tmp.name, f"rank{r}.pt"), weights_only=False) for r in range(2)]

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_gallery_blocks_gather_to_the_one_process_matrix(self):
        matcher, q, g = matcher_and_maps()
        ref = pairwise_scores(matcher, q.feats, g.feats, prob_batch=5, gal_batch=GAL_BATCH)
        direct = torch.stack([torch.stack([matcher.eval()(q.feats[i:i + 1], g.feats[j:j + 1])[0, 0]
                                           for j in range(G)]) for i in range(Q)]).detach()
        self.assertTrue(torch.allclose(ref, direct, atol=1e-5))  # the reference itself, pair by pair
        for o in self.out:
            self.assertEqual(tuple(o["score"].shape), (Q, G))
            self.assertTrue(torch.equal(o["score"], ref))

    def test_figures_equal_one_process_on_every_rank(self):
        matcher, q, g = matcher_and_maps()
        ref = evaluate_qaconv(matcher, q, g, prob_batch=5, gal_batch=GAL_BATCH, do_rerank=True, k1=4, k2=2)
        self.assertIn("mAP_rerank", ref)
        for o in self.out:
            self.assertEqual(o["res"], ref)

    def test_sharded_feature_maps_equal_one_process(self):
        ref = extract_feature_maps(feature_model(), records(self.data), 32, 16, "cpu", FEA_BATCH, 0, progress=False)
        for o in self.out:
            self.assertTrue(torch.equal(o["maps"], ref.feats))
            self.assertEqual(o["indices"].tolist(), list(range(11)))
            self.assertEqual(o["pids"].tolist(), ref.pids.tolist())

    def test_alone_the_sharded_functions_are_the_plain_ones(self):
        matcher, q, g = matcher_and_maps()
        self.assertTrue(torch.equal(sharded_pairwise_scores(matcher, q.feats, g.feats, 5, GAL_BATCH),
                                    pairwise_scores(matcher, q.feats, g.feats, 5, GAL_BATCH)))


if __name__ == "__main__":
    sharded_worker(sys.argv[1], sys.argv[2])
