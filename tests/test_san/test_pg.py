"""SAN-PG and generate_texture.py: the written textures are the model's clipped outputs, mirrored under the
images' relative paths and names (folder mode skips texture folders), and the pairing layout closes the round
trip: train_pg -> generate_texture -d -> san/main.py reads them."""
import os
import tempfile
import unittest

import numpy as np
import torch
from PIL import Image

from common.checkpoint import save_checkpoint
from common.datasets import build_dataset
from san.decoder import SADecoder
from san.generate_texture import list_images, main as generate_main
from san.model import SAEncoder
from san.pg_data import split_groups
from tests.e2e import Workspace

IDS = 16
WS = Workspace("san-pg-test-", "synthetic", IDS)


def setUpModule():
    for seed in (0, 1):
        build_dataset("synthetic", WS.data, num_ids=IDS, seed=seed, textures=True, verbose=False)


tearDownModule = WS.cleanup


class TestGenerate(unittest.TestCase):
    def test_folder_mode_values_and_layout(self):
        torch.manual_seed(0)
        enc = SAEncoder(1, "resnet18_fc512", pretrained=False).eval()
        dec = SADecoder(enc.skip_channels).eval()
        with torch.no_grad():  # make the output large so that clipping matters
            dec.final_layer[1].bias.copy_(torch.tensor([3.0, -3.0, 0.0]))
        with tempfile.TemporaryDirectory() as d:
            ck = os.path.join(d, "pg.pth")
            save_checkpoint(ck, {"encoder": enc.state_dict(), "decoder": dec.state_dict(), "arch": "resnet18_fc512",
                                 "height": 32, "width": 16, "num_classes": 1})
            src = os.path.join(d, "imgs")
            rng = np.random.default_rng(0)
            names = ["a/0001_c1_x.jpg", "b/c/0002_c2_y.png", "texture_old/skip.png"]
            for n in names:
                os.makedirs(os.path.dirname(os.path.join(src, n)), exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(os.path.join(src, n))
            self.assertEqual(list_images(src), ["a/0001_c1_x.jpg", "b/c/0002_c2_y.png"])
            out = os.path.join(d, "tex")
            generate_main(["-m", ck, "-i", src, "-o", out, "--device", "cpu"])
            self.assertFalse(os.path.exists(os.path.join(out, "texture_old")))
            png = np.asarray(Image.open(os.path.join(out, "b/c/0002_c2_y.png")))
            self.assertEqual(png.shape, (32, 32, 3))
            # reference: the same preprocessing written by hand, then clip, scale, round
            from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
            img = Image.open(os.path.join(src, "b/c/0002_c2_y.png")).convert("RGB").resize((16, 32), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)
            x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
            with torch.no_grad():
                _, f, x1, x2, x3 = enc(x[None])
                t = dec(f, x1, x2, x3)[0][0]
            ref = ((t.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
            self.assertLessEqual(np.abs(png.astype(np.float64) - ref).max(), 2.0)  # resize filters may differ by 1-2
            self.assertEqual(png[..., 0].min(), 255)  # clipped at +1, not wrapped around
            self.assertEqual(png[..., 1].max(), 0)    # clipped at -1
            self.assertTrue(os.path.isfile(os.path.join(out, "a/0001_c1_x.jpg")))

    def test_round_trip(self):
        from san.main import main as san_main
        from san.train_pg import main as pg_main
        with tempfile.TemporaryDirectory() as exp:
            res = pg_main(["--data-dir", WS.data, "--synthetic-ids", str(IDS), "--synthetic-seed", "1", "-a",
                           "resnet18_fc512", "--no-pretrained", "--height", "32", "--width", "16", "--epochs", "1",
                           "--max-batches", "2", "-b", "8", "-j", "0", "--device", "cpu", "--exp-dir", exp,
                           "--no-progress", "--no-tensorboard"])
            self.assertIn("heldout_l1", res)
            self.assertGreater(res["mean_texture_l1"], 0.0)
            ck = os.path.join(exp, "san", "synthetic", "pg-resnet18_fc512-s1", "checkpoint.pth")
            self.assertTrue(os.path.isfile(ck))
            out = generate_main(["-m", ck, "-d", "synthetic", "--data-dir", WS.data, "--synthetic-ids", str(IDS),
                                 "--synthetic-seed", "0", "--device", "cpu"])
            ds = build_dataset("synthetic", WS.data, num_ids=IDS, seed=0, textures=True, verbose=False)
            self.assertEqual(out["written"], len({r.img_path for r in ds.train + ds.query + ds.gallery}))
            self.assertTrue(0.0 < out["pseudo_vs_true_l1_train"] < 2.0)
            r = ds.train[0]
            rel = os.path.relpath(r.img_path, ds.root)
            self.assertTrue(os.path.isfile(os.path.join(ds.root, "texture_synthetic", rel)))
            results = san_main(["-d", "synthetic", "--data-dir", WS.data, "--synthetic-ids", str(IDS), "-a",
                                "resnet18_fc512", "--no-pretrained", "--height", "32", "--width", "16",
                                "--train-batch-size", "8", "--warm-up-epoch", "0", "--max-epoch", "1",
                                "--max-batches", "1", "-j", "0", "--device", "cpu", "--exp-dir", exp,
                                "--no-progress", "--no-tensorboard"])  # default --texture-source folder
            self.assertTrue(any(k.startswith("trained") for k in results))

    def test_split_groups_disjoint(self):
        pairs = [(f"i{k}", f"t{k % 10}", k % 10) for k in range(50)]
        a, b = split_groups(pairs, 0.2, 0)
        self.assertEqual(len({g for *_, g in b}), 2)
        self.assertFalse({g for *_, g in a} & {g for *_, g in b})
        self.assertEqual(len(a) + len(b), 50)


if __name__ == "__main__":
    unittest.main()
