"""MuDeep v2 data: the original's plain folders (Market names, junk, distractors, stray files), the transforms
(random erasing fills 0 after Normalize) and the flip-averaged, L2-normalised test descriptor."""
import argparse
import os
import tempfile
import unittest

import numpy as np
import torch
from PIL import Image

from mudeep.data import folder_dataset, folder_records, train_transform


def write(folder, name, arr):
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(arr).save(os.path.join(folder, name))


class TestFolders(unittest.TestCase):
    def test_market_names_junk_distractors_and_stray_files(self):
        rng = np.random.default_rng(0)
        img = lambda: rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)  # noqa: E731
        with tempfile.TemporaryDirectory() as d:
            tr, q, g = (os.path.join(d, x) for x in ("bounding_box_train", "query", "bounding_box_test"))
            for name in ("0007_c1s1_000151_01.jpg", "0007_c2s1_000301_01.jpg", "0002_c3s1_000451_03.jpg"):
                write(tr, name, img())
            open(os.path.join(tr, "Thumbs.db"), "w").write("x")  # crashed the original's parser
            write(q, "0002_c1s1_001051_00.jpg", img())
            for name in ("0002_c12s1_000551_01.jpg", "-1_c1s1_000401_03.jpg", "0000_c2s1_000001_01.jpg"):
                write(g, name, img())
            ds = folder_dataset(tr, q, g)
            self.assertEqual([(os.path.basename(r.img_path), r.pid, r.camid) for r in ds.train],
                             [("0002_c3s1_000451_03.jpg", 0, 2), ("0007_c1s1_000151_01.jpg", 1, 0),
                              ("0007_c2s1_000301_01.jpg", 1, 1)])
            self.assertEqual(sorted((r.pid, r.camid) for r in ds.gallery), [(0, 1), (2, 11)])  # junk -1 dropped
            self.assertEqual([(r.pid, r.camid) for r in ds.query], [(2, 0)])
            self.assertEqual(len(folder_records(g)), 3)


class TestTransforms(unittest.TestCase):
    def test_erasing_fills_zero_after_normalize(self):
        torch.manual_seed(0)
        t = train_transform(32, 16, flip_p=0.0, erasing_p=1.0)
        img = Image.fromarray(np.full((64, 32, 3), 200, dtype=np.uint8))  # a flat image: only the erased box is 0
        x = t(img)
        self.assertEqual(tuple(x.shape), (3, 32, 16))
        zero = (x == 0).all(dim=0)
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        self.assertGreater(int(zero.sum()), 0)
        box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        self.assertTrue(bool(box.all()))  # one rectangle
        self.assertEqual(int(zero.sum()), box.numel())


class TestDescriptor(unittest.TestCase):
    def test_flip_averaged_unit_norm_descriptor(self):
        from mudeep.evaluate import extract
        from mudeep.model import MuDeepV2
        from common.datasets.base import Record
        torch.manual_seed(0)
        model = MuDeepV2(5, "tiny", pretrained=False, guidance=8, embed_dim=8).eval()
        arr = np.random.default_rng(1).integers(0, 255, (96, 32, 3), dtype=np.uint8)
        with tempfile.TemporaryDirectory() as d:
            write(d, "a.png", arr)
            write(d, "b.png", arr[:, ::-1].copy())
            recs = [Record(os.path.join(d, "a.png"), 1, 0), Record(os.path.join(d, "b.png"), 1, 1)]
            args = argparse.Namespace(height=96, width=32, test_batch_size=2, workers=0, flip_test=True, amp=False,
                                      progress=False)
            f = extract(model, recs, args, "cpu").feats
            args.flip_test = False
            plain = extract(model, recs, args, "cpu").feats
        self.assertEqual(tuple(f.shape), (2, 12 * 8))
        self.assertTrue(torch.allclose(f.norm(dim=1), torch.ones(2), atol=1e-5))
        self.assertTrue(torch.allclose(f[0], f[1], atol=1e-5))  # desc(x) == desc(flip_lr(x))
        self.assertFalse(torch.allclose(plain[0], plain[1], atol=1e-3))
        with torch.no_grad():  # by hand: normalise(1/2 (phi(x) + phi(flip(x))))
            from mudeep.data import test_transform
            x = test_transform(96, 32)(Image.fromarray(arr)).unsqueeze(0)
            want = torch.nn.functional.normalize((model.descriptor(x) + model.descriptor(x.flip(3))) / 2, dim=1)
        self.assertTrue(torch.allclose(f[0], want[0], atol=1e-5))


if __name__ == "__main__":
    unittest.main()
