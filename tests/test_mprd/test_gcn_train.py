"""--use-gcn end to end: the missing-checkpoint error names the pre-training command; pre-training writes a GCN
that --use-gcn loads, filters pairs with, and stores in the checkpoint (reloaded each epoch, as the original)."""
import json
import os
import unittest

import torch

from common.checkpoint import load_checkpoint
from tests.e2e import Workspace

WS = Workspace("mprd-gcn-test-", "synthetic", num_ids=40)
setUpModule, tearDownModule = WS.generate, WS.cleanup

COMMON = ["-d", "synthetic", "--synthetic-ids", "40", "--data-dir", "data", "-a", "resnet18", "--no-pretrained",
          "--height", "32", "--width", "16", "-b", "8", "--num-instances", "4", "-j", "0", "--no-progress",
          "--no-tensorboard", "--device", "cpu", "--k1", "10", "--test-batch-size", "64"]


class TestUseGcn(unittest.TestCase):
    def test_missing_gcn_checkpoint_is_a_clear_error(self):
        p = WS.run("mprd/main.py", COMMON + ["--exp-dir", "exp_missing", "--use-gcn", "--epochs", "1"])
        self.assertEqual(p.returncode, 2, p.stderr[-2000:])
        self.assertIn("mprd/gcn_pretrain.py -d synthetic", p.stderr)
        self.assertNotIn("Traceback", p.stderr)

    def test_pretrain_then_train_with_gcn(self):
        p = WS.run("mprd/gcn_pretrain.py", COMMON + ["--exp-dir", "exp", "--gcn-width", "small", "--max-batches", "1",
                                                      "--auc-pairs", "10"])
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        gcn_path = os.path.join(WS.path, "exp", "mprd_gcn", "synthetic", "gcn.pth")
        pre = load_checkpoint(gcn_path)
        self.assertEqual(int(pre["feat_dim"]), 512)
        with open(os.path.join(WS.path, "exp", "mprd_gcn", "synthetic", "resnet18-s1", "results.json")) as f:
            auc = json.load(f)["link_auc"]
        self.assertTrue(0.0 <= auc["gcn_after"] <= 1.0 and auc["pairs"] > 0)
        args = COMMON + ["--exp-dir", "exp", "--epochs", "1", "--iters", "2", "--eval-step", "0", "--eps", "0.6",
                         "--no-compare-histogram", "--print-freq", "0"]
        p = WS.run("mprd/main.py", args + ["--use-gcn", "--run-name", "gcn"])
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        with_gcn = load_checkpoint(os.path.join(WS.path, "exp", "mprd", "synthetic", "gcn", "checkpoint.pth"))
        for k, v in pre["state_dict"].items():     # reloaded after the epoch's Reptile update (spec P6)
            self.assertTrue(torch.equal(with_gcn["gcn"]["state_dict"][k], v), k)
        p = WS.run("mprd/main.py", args + ["--run-name", "plain"])
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        plain = load_checkpoint(os.path.join(WS.path, "exp", "mprd", "synthetic", "plain", "checkpoint.pth"))
        self.assertNotIn("gcn", plain)
        # same seed, same pseudo-labels; the GCN-filtered hard pairs change the training
        self.assertTrue(torch.equal(plain["idx2labels"], with_gcn["idx2labels"]))
        differ = [k for k in plain["state_dict"] if not torch.equal(plain["state_dict"][k], with_gcn["state_dict"][k])]
        self.assertGreater(len(differ), 0)


if __name__ == "__main__":
    unittest.main()
