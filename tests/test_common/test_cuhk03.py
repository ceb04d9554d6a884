"""The classic CUHK03 parser on a small MATLAB v7.3 file written here with h5py (object references as MATLAB
stores them), with new-protocol configs written with scipy: extraction names, empty cells, camids, the new
protocol's relabelling, the classic splits, one-time extraction, the registry key and errors."""
import json
import os
import tempfile
import unittest

import h5py
import numpy as np
from PIL import Image
from scipy.io import savemat

from common.datasets import build_dataset, canonical_name
from common.datasets.base import DatasetError
from common.datasets.cuhk03 import CUHK03

# persons per camera pair; cells that are empty (0-based cell index) per (pair, person)
PERSONS = [3, 2]
EMPTY = {(0, 0): {3, 4, 9}, (0, 2): {5, 6, 7, 8, 9}, (1, 1): {0}}


def write_mat(path):
    """A v7.3-style file: 'detected'/'labeled' (1, pairs) refs -> (10, persons) refs -> (3, W, H) uint8 images;
    an empty cell is a 2-element uint64 array (MATLAB's []); 'testsets' (1, 2) refs -> (2, n) doubles."""
    os.makedirs(os.path.dirname(path))
    with h5py.File(path, "w") as f:
        counter = [0]

        def store(arr):
            name = f"#refs#/r{counter[0]}"
            counter[0] += 1
            f.create_dataset(name, data=arr)
            return f[name].ref

        for t, shade in (("detected", 10), ("labeled", 200)):
            pair_refs = []
            for c, n in enumerate(PERSONS):
                cells = np.empty((10, n), dtype=h5py.ref_dtype)
                for p in range(n):
                    for k in range(10):
                        if k in EMPTY.get((c, p), ()):
                            cells[k, p] = store(np.zeros(2, dtype=np.uint64))
                        else:  # H x W x 3 = 8 x 4 x 3, stored transposed as MATLAB does
                            img = np.full((8, 4, 3), shade + c * 10 + p, np.uint8)
                            img[0, 0, 0] = k
                            cells[k, p] = store(img.T)
                pair_refs.append(store(cells))
            f.create_dataset(t, data=np.array([pair_refs], dtype=h5py.ref_dtype))
        tests = [np.array([[1, 2], [2, 1]], float).T, np.array([[1, 1]], float).T]  # (pair, person) 1-based
        f.create_dataset("testsets", data=np.array([[store(a) for a in tests]], dtype=h5py.ref_dtype))


def write_config(path, names, labels, train, query, gallery):
    savemat(path, {"filelist": np.array([[n] for n in names], dtype=object),
                   "labels": np.array(labels, float).reshape(-1, 1),
                   "train_idx": np.array(train, float).reshape(-1, 1),
                   "query_idx": np.array(query, float).reshape(-1, 1),
                   "gallery_idx": np.array(gallery, float).reshape(-1, 1)})


class TestCUHK03(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.data = self._tmp.name
        self.root = os.path.join(self.data, "cuhk03")
        write_mat(os.path.join(self.root, "cuhk03_release", "cuhk-03.mat"))
        # new protocol over 4 images: 2 train images of person 7, query/gallery of person 3 (raw labels)
        names = ["1_001_1_01.png", "1_001_2_06.png", "1_002_1_01.png", "1_002_2_10.png", "2_001_1_02.png"]
        for t in ("detected", "labeled"):
            write_config(os.path.join(self.root, f"cuhk03_new_protocol_config_{t}.mat"), names,
                         [7, 7, 3, 3, 9], train=[1, 2, 5], query=[3], gallery=[4])

    def tearDown(self):
        self._tmp.cleanup()

    def test_extraction_names_and_new_protocol(self):
        ds = build_dataset("cuhk03", self.data, label_type="labeled", verbose=False)
        img_dir = os.path.join(self.root, "images_labeled")
        files = sorted(os.listdir(img_dir))
        # pair 1: person 1 has 7 cells, person 2 has 10, person 3 has 5; pair 2: 10 and 9
        self.assertEqual(len(files), 7 + 10 + 5 + 10 + 9)
        self.assertIn("1_001_1_03.png", files)
        self.assertNotIn("1_001_1_04.png", files)  # empty cell 3 skipped
        self.assertIn("1_001_2_06.png", files)     # cell index 5 -> view 2
        self.assertNotIn("2_002_1_01.png", files)
        img = np.asarray(Image.open(os.path.join(img_dir, "2_002_2_07.png")))
        self.assertEqual(img.shape, (8, 4, 3))
        self.assertEqual(img[1, 1, 0], 200 + 10 + 1)  # labeled shade + pair 2 + person 2, transposed back
        self.assertEqual(img[0, 0, 0], 6)              # cell index 6
        self.assertEqual(len(os.listdir(os.path.join(self.root, "images_detected"))), len(files))
        # train: raw label 7 (2 images) and 9 (1 image) relabelled to 0 and 1 in sorted order; query keeps 3
        self.assertEqual([(os.path.basename(r.img_path), r.pid, r.camid) for r in ds.train],
                         [("1_001_1_01.png", 0, 0), ("1_001_2_06.png", 0, 1), ("2_001_1_02.png", 1, 0)])
        self.assertEqual([(os.path.basename(r.img_path), r.pid, r.camid) for r in ds.query],
                         [("1_002_1_01.png", 3, 0)])
        self.assertEqual([(r.pid, r.camid) for r in ds.gallery], [(3, 1)])
        self.assertEqual(ds.protocol, "market1501")
        self.assertEqual(ds.extra["texture_key"], "cuhk03_labeled")
        self.assertTrue(ds.train[0].img_path.startswith(img_dir))

    def test_classic_splits(self):
        ds = CUHK03(self.data, label_type="detected", classic_split=True, split_id=0)
        # split 0 tests (pair 1, person 2) [10 images] and (pair 2, person 1) [10]; train = the other 3 persons
        self.assertEqual(len(ds.query), 20)
        self.assertEqual(ds.query, ds.gallery)
        self.assertEqual(sorted({r.pid for r in ds.query}), [0, 1])
        self.assertEqual(len(ds.train), 7 + 5 + 9)
        self.assertEqual(sorted({r.pid for r in ds.train}), [0, 1, 2])
        self.assertEqual({os.path.basename(r.img_path)[:5] for r in ds.train if r.pid == 1}, {"1_003"})
        self.assertEqual({r.camid for r in ds.query}, {0, 1})
        self.assertEqual(ds.protocol, "cuhk03")
        self.assertEqual(ds.extra["num_splits"], 2)
        ds1 = CUHK03(self.data, label_type="detected", classic_split=True, split_id=1)
        self.assertEqual(len(ds1.query), 7)
        with self.assertRaises(DatasetError):
            CUHK03(self.data, classic_split=True, split_id=2)

    def test_extracted_once_and_json_relative(self):
        CUHK03(self.data)
        os.remove(os.path.join(self.root, "cuhk03_release", "cuhk-03.mat"))  # no longer needed
        ds = CUHK03(self.data)
        self.assertEqual(len(ds.train), 3)
        split = json.load(open(os.path.join(self.root, "splits_new_detected.json")))[0]
        self.assertEqual(split["train"][0][0], "1_001_1_01.png")
        self.assertEqual(len(CUHK03(self.root).train), 3)  # the cuhk03 folder itself as root

    def test_errors_and_key(self):
        self.assertEqual(canonical_name("cuhk03"), "cuhk03")
        self.assertEqual(canonical_name("cuhk03_np"), "cuhk03_np_detected")
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(DatasetError, "cuhk-03.mat"):
                CUHK03(d)
        os.remove(os.path.join(self.root, "cuhk03_new_protocol_config_labeled.mat"))
        with self.assertRaisesRegex(DatasetError, "cuhk03_new_protocol_config_labeled.mat"):
            CUHK03(self.data, label_type="labeled")


if __name__ == "__main__":
    unittest.main()
