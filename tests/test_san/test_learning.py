"""SAN learns: a few epochs of the full SAN step (L_ID + L_Triplet, L_Rec on the true synthetic textures, L_TR)
lift mAP and rank-1 clearly above the untrained network on the same split. CPU, resnet18_fc512 at 64x32."""
import os
import tempfile
import unittest

from common.datasets import build_dataset
from tests.e2e import Workspace

IDS = 40
WS = Workspace("san-learn-", "synthetic", IDS)


def setUpModule():
    build_dataset("synthetic", WS.data, num_ids=IDS, textures=True, verbose=False)


tearDownModule = WS.cleanup


class TestLearning(unittest.TestCase):
    def test_san_beats_untrained(self):
        from san.main import main
        with tempfile.TemporaryDirectory() as exp:
            rows = main(["-d", "synthetic", "--data-dir", WS.data, "--synthetic-ids", str(IDS), "-a", "resnet18_fc512",
                         "--no-pretrained", "--height", "64", "--width", "32", "--train-batch-size", "16",
                         "--warm-up-epoch", "1", "--warm-up-gamma", "10", "--max-epoch", "4", "--stepsize", "3",
                         "--lr", "8e-4", "--texture-source", "true", "--compare-histogram", "-j", "0",
                         "--device", "cpu", "--exp-dir", exp, "--no-progress", "--no-tensorboard"])
            self.assertTrue(os.path.isdir(exp))
        trained = rows["trained resnet18_fc512 / synthetic"]
        untrained = rows["untrained resnet18_fc512 / synthetic"]
        self.assertGreater(trained["mAP"], untrained["mAP"] + 0.10, (trained["mAP"], untrained["mAP"]))
        self.assertGreater(trained["rank1"], untrained["rank1"] + 0.10, (trained["rank1"], untrained["rank1"]))
        self.assertIn("colour histogram / synthetic", rows)


if __name__ == "__main__":
    unittest.main()
