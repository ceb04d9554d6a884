"""End-to-end checks of crossmodal_bot/main.py on the infrared synthetic data (``--dataset synthetic_sysu``):
modality-balanced batches, the SYSU-MM01 test in its four settings, visualize, and learning. CPU, ResNet-18 at
64x32, random initialisation."""
import glob
import json
import os
import tempfile
import unittest
from argparse import Namespace

from common.datasets import build_dataset
from tests.e2e import Workspace
from crossmodal_bot.data import build_bot_train_loader
from crossmodal_bot.sampler import CrossModalityIdentitySampler

SYNTH_IDS = 120  # 60 train+val identities, 60 test identities
WS = Workspace("bot-sysu-test-", "synthetic_sysu", SYNTH_IDS)  # the dataset is generated once for the module
DATA = WS.data
setUpModule, tearDownModule = WS.generate, WS.cleanup


# 40 epochs x 15 batches of P x K = 4 x 4 = 600 iterations (identity-pass epochs, so the test keeps its length);
# lr 1e-3 (random init), soft-margin triplet, no erasing.
# Seen (seed 0): trained 21.3 mAP / 49.7 R10, untrained 8.0 / 18.2, colour histogram 6.2 / 20.1 (percent).
LEARNING_ARGS = ("--epochs", "40", "-b", "16", "--k", "4", "--lr", "1e-3", "--warmup-epochs", "2",
                 "--milestones", "30", "--random-erase", "0", "--margin", "0", "--sysu-epoch", "identities")
MAP_GAIN, R10_GAIN = 0.06, 0.15


def base_args(exp_dir, *extra):
    return ["--dataset", "synth_sysu", "--data-dir", DATA, "--synthetic-ids", str(SYNTH_IDS), "-a", "resnet18",
            "--no-pretrained", "--height", "64", "--width", "32", "--device", "cpu", "--workers", "0",
            "--exp-dir", exp_dir, "--no-progress", "--no-tensorboard", *extra]


def run_main(args):
    return WS.run("crossmodal_bot/main.py", args)


def run_dir(exp_dir):
    return os.path.join(exp_dir, "crossmodal_bot", "synthetic_sysu", "resnet18-s0")


def read_results(exp_dir):
    with open(os.path.join(run_dir(exp_dir), "results.json")) as f:
        return json.load(f)


class TestBatches(unittest.TestCase):
    def test_loader_balances_modalities(self):
        ds = build_dataset("synthetic_sysu", DATA, num_ids=SYNTH_IDS, verbose=False)
        self.assertEqual(ds.protocol, "sysu")
        args = Namespace(height=64, width=32, batch_size=16, num_instances=4, workers=0, seed=0, pad=10,
                         random_erase=0.5, sysu_epoch="identities")
        loader = build_bot_train_loader(ds, args)
        self.assertIsInstance(loader.sampler, CrossModalityIdentitySampler)
        order = list(loader.sampler)
        self.assertEqual(len(order), (60 // 4) * 16)
        ir = set(ds.extra["ir_cams"])
        for start in range(0, len(order), 4):  # each identity's K = 4 images: 2 RGB, then 2 IR
            group = [ds.train[i] for i in order[start:start + 4]]
            self.assertEqual(len({r.pid for r in group}), 1)
            self.assertEqual([r.camid in ir for r in group], [False, False, True, True])


class TestSysuModes(unittest.TestCase):
    def test_train_test_evaluate_visualize(self):
        with tempfile.TemporaryDirectory() as exp:
            p = run_main(base_args(exp, "--epochs", "1", "--max-batches", "2", "-b", "16", "--k", "4"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertIn("sysu-all-search-single-shot x10", p.stdout)
            res = read_results(exp)["synthetic_sysu"]
            self.assertEqual(res["protocol"], "sysu-all-search-single-shot x10")
            self.assertEqual([t["seed"] for t in res["trials"]], list(range(10)))
            for k in ("rank1", "rank10", "rank20", "mAP", "mINP"):
                self.assertTrue(0.0 <= res[k] <= 1.0, (k, res[k]))

            p = run_main(base_args(exp, "--mode", "test"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertAlmostEqual(read_results(exp)["test_epoch1/synthetic_sysu"]["mAP"], res["mAP"], places=6)

            seen = {}
            for mode, shots in (("all", "10"), ("indoor", "1"), ("indoor", "10")):
                p = run_main(base_args(exp, "--evaluate", "--sysu-mode", mode, "--sysu-shots", shots))
                self.assertEqual(p.returncode, 0, p.stderr[-3000:])
                self.assertNotIn("epoch 1/", p.stdout)  # --evaluate tests, it does not train
                tested = read_results(exp)["test_epoch1/synthetic_sysu"]
                tag = f"sysu-{mode}-search-{'single' if shots == '1' else 'multi'}-shot x10"
                self.assertEqual(tested["protocol"], tag)
                seen[tag] = tested
            gallery = build_dataset("synthetic_sysu", DATA, num_ids=SYNTH_IDS, verbose=False).gallery
            for tag, cams in (("sysu-all-search-single-shot x10", {0, 1, 3, 4}),
                              ("sysu-indoor-search-single-shot x10", {0, 1})):
                groups = {(r.pid, r.camid) for r in gallery if r.camid in cams}  # one image per (id, RGB camera)
                self.assertEqual({t["gallery_size"] for t in seen.get(tag, res)["trials"]}, {len(groups)}, tag)
            saved = glob.glob(os.path.join(run_dir(exp), "checkpoints", "ckpt_ep*.pth"))
            self.assertEqual([os.path.basename(f) for f in saved], ["ckpt_ep001.pth"])  # nothing trained since

            p = run_main(base_args(exp, "--mode", "visualize", "--visualize-queries", "3"))
            self.assertEqual(p.returncode, 0, p.stderr[-3000:])
            self.assertIn("SYSU all-search single-shot, trial 0 gallery, top-10", p.stdout)
            grids = glob.glob(os.path.join(run_dir(exp), "ranked_images", "synthetic_sysu", "*.png"))
            self.assertEqual(len(grids), 3)


class TestLearning(unittest.TestCase):
    def test_few_hundred_iterations_beat_untrained_and_histogram(self):
        from crossmodal_bot.main import main
        with tempfile.TemporaryDirectory() as exp:
            results = main(base_args(exp, *LEARNING_ARGS, "--eval-period", "0", "--compare-histogram"))
            allres = read_results(exp)
            trained = results["synthetic_sysu"]
            untrained, hist = allres["untrained/synthetic_sysu"], allres["histogram/synthetic_sysu"]
            self.assertEqual(trained["protocol"], "sysu-all-search-single-shot x10")
            iters = sum(1 for x in open(os.path.join(run_dir(exp), "metrics.jsonl")) if '"iter/loss"' in x)
            self.assertEqual(iters, 600)
            self.assertGreater(trained["mAP"], untrained["mAP"] + MAP_GAIN, (trained["mAP"], untrained["mAP"]))
            self.assertGreater(trained["mAP"], hist["mAP"] + MAP_GAIN, (trained["mAP"], hist["mAP"]))
            self.assertGreater(trained["rank10"], max(untrained["rank10"], hist["rank10"]) + R10_GAIN,
                               (trained["rank10"], untrained["rank10"], hist["rank10"]))


if __name__ == "__main__":
    unittest.main()
