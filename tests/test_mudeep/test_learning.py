"""MuDeep v2 learns on tiny synthetic data on the CPU: a few hundred training images of a small backbone lift mAP
clearly above the untrained network and the colour histogram on the same split."""
import json
import os
import tempfile
import unittest

from tests.e2e import Workspace

WS = Workspace("mudeep-learn-", "synthetic", num_ids=30)  # 15 train ids (135 images), 46 queries, 113 gallery
setUpModule, tearDownModule = WS.generate, WS.cleanup


class TestLearning(unittest.TestCase):
    def test_beats_untrained_and_histogram(self):
        from mudeep.main import main
        with tempfile.TemporaryDirectory() as exp:
            results = main(["--dataset", "synthetic", "--data-dir", WS.data, "--synthetic-ids", "30", "-a", "tiny",
                            "--no-pretrained", "--height", "48", "--width", "32", "--P", "4", "--K", "4",
                            "--epochs", "6", "--snapshot", "6", "--checkpoint", "0", "--guidance", "64",
                            "--embed-dim", "64", "--device", "cpu", "--workers", "0", "--exp-dir", exp,
                            "--no-progress", "--no-tensorboard", "--compare-histogram", "--test-batch-size", "64"])
            allres = json.load(open(os.path.join(exp, "mudeep", "synthetic", "synthetic", "results.json")))
            iters = sum(1 for x in open(os.path.join(exp, "mudeep", "synthetic", "synthetic", "metrics.jsonl"))
                        if '"iter/loss"' in x)
        trained, untrained = results["synthetic"]["mAP"], allres["untrained/synthetic"]["mAP"]
        hist = allres["histogram/synthetic"]["mAP"]
        self.assertEqual(iters, 6 * (3 * 15 * 4 // 16))
        self.assertGreater(trained, untrained + 0.15, (trained, untrained))
        self.assertGreater(trained, hist + 0.05, (trained, hist))


if __name__ == "__main__":
    unittest.main()
