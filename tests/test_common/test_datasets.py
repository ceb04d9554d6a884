"""Benchmark parsers on tiny fake trees with the real naming conventions; every count is worked out by hand."""
import io
import os
import tempfile
import unittest
import warnings

from PIL import Image

from common.datasets import build_dataset, canonical_name, names
from common.datasets.base import DatasetError
from common.datasets.cuhk03_np import CUHK03NP
from common.datasets.dukemtmc import DukeMTMCreID
from common.datasets.market1501 import Market1501
from common.datasets.msmt17 import MSMT17
from common.datasets.randperson import RandPerson
from common.datasets.synthetic import Synthetic
from common.datasets.sysu_mm01 import IR_CAMS, RGB_CAMS, SYSUMM01, is_infrared


def _image_bytes(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (4, 8), (120, 30, 200)).save(buf, fmt)
    return buf.getvalue()


JPEG, PNG = _image_bytes("JPEG"), _image_bytes("PNG")


def touch(path, data=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(JPEG if data is None else data)


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s2_000100_01.jpg",
                           "0007_c1s2_000050_02.jpg", "0010_c6s3_000020_01.jpg", "-1_c1s1_000001_01.jpg"],
    "query": ["0001_c1s1_001051_00.jpg", "0001_c2s1_000500_00.jpg", "0003_c4s1_000200_00.jpg",
              "0000_c1s1_000010_00.jpg"],
    "bounding_box_test": ["0001_c3s1_000600_01.jpg", "0001_c1s2_000010_01.jpg", "0003_c5s1_000700_01.jpg",
                          "0000_c1s1_000151_01.jpg", "0000_c2s1_000160_01.jpg", "-1_c1s1_009999_03.jpg"],
}
DUKE = {"bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c3_f0046500.jpg", "0004_c8_f0000100.jpg"],
        "query": ["0005_c2_f0046985.jpg"],
        "bounding_box_test": ["0005_c1_f0044158.jpg", "0006_c7_f0001000.jpg"]}
CUHK = {"detected": {"bounding_box_train": ["0001_c1_1.png", "0001_c2_6.png", "0002_c1_1.png", "0002_c1_2.png"],
                     "query": ["0003_c1_1.png", "0004_c2_1.png"],
                     "bounding_box_test": ["0003_c2_6.png", "0004_c1_2.png", "0004_c1_3.png"]},
        "labeled": {"bounding_box_train": ["0001_c1_1.png"], "query": ["0003_c1_1.png"],
                    "bounding_box_test": ["0003_c2_6.png", "0003_c2_7.png"]}}
MSMT_V1 = {
    "list_train.txt": "0000/0000_000_01_0303morning_0015_0.jpg 0\n0000/0000_001_03_0303noon_0100_1.jpg 0\n"
                      "0001/0001_000_15_0113afternoon_0020_0.jpg 1\n",
    "list_val.txt": "0002/0002_000_07_0302morning_0005_0.jpg 2\n\n",
    "list_query.txt": "0000/0000_000_02_0303morning_0008_0.jpg 0\n0001/0001_000_05_0114noon_0030_0.jpg 1\n",
    "list_gallery.txt": "0000/0000_001_04_0303morning_0050_0.jpg 0\n0000/0000_002_02_0303noon_0060_0.jpg 0\n"
                        "0001/0001_001_09_0114noon_0070_0.jpg 1\n0002/0002_000_10_0114noon_0080_0.jpg 2\n",
}
MSMT_V2 = {"list_train.txt": "0000/0000_000_01_0303morning_0015_0.jpg 0\n",
           "list_val.txt": "0001/0001_000_02_0303morning_0016_0.jpg 1\n",
           "list_query.txt": "0000/0000_000_03_0303morning_0008_0.jpg 0\n",
           "list_gallery.txt": "0000/0000_001_04_0303morning_0050_0.jpg 0\n"}
SYSU_IDS = {"train_id.txt": "1,2\n", "val_id.txt": "3", "test_id.txt": "4,5\n"}
SYSU_IMAGES = ["cam1/0001/0001.jpg", "cam1/0001/0002.jpg", "cam3/0001/0001.jpg", "cam6/0002/0010.jpg",
               "cam2/0003/0001.jpg",  # train + val ids: 5 images, cams 1, 2, 3, 6
               "cam1/0004/0001.jpg", "cam4/0004/0003.jpg", "cam3/0004/0001.jpg", "cam3/0004/0002.jpg",
               "cam5/0005/0001.jpg", "cam6/0005/0007.jpg", "cam2/0005/0004.jpg",  # test ids 4, 5
               "cam1/0099/0001.jpg"]  # an id in no list: ignored
RANDPERSON = ["000000_s00_c00_f000264.jpg", "000000_s00_c01_f001632.jpg", "000003_s10_c03_f000010.jpg",
              "000005_s04_c00_f000100.jpg", "000007_c01_s00_f000001.jpg"]


def write_market_style(folder, layout, data=None):
    for sub, names in layout.items():
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        for n in names:
            touch(os.path.join(folder, sub, n), data)


def build_tree(root):
    """All benchmarks under one --data-dir."""
    write_market_style(os.path.join(root, "Market-1501-v15.09.15"), MARKET)
    write_text(os.path.join(root, "Market-1501-v15.09.15", "bounding_box_train", "Thumbs.db"), "not an image")
    write_market_style(os.path.join(root, "DukeMTMC-reID"), DUKE)
    for label_type, layout in CUHK.items():
        write_market_style(os.path.join(root, "cuhk03-np", label_type), layout, PNG)
    for version, lists, (tr, te) in ((1, MSMT_V1, ("train", "test")), (2, MSMT_V2, ("mask_train_v2", "mask_test_v2"))):
        folder = os.path.join(root, f"MSMT17_V{version}")
        for list_name, text in lists.items():
            write_text(os.path.join(folder, list_name), text)
            sub = tr if list_name in ("list_train.txt", "list_val.txt") else te
            for line in text.split("\n"):
                if line.strip():
                    touch(os.path.join(folder, sub, line.split()[0]))
    sysu = os.path.join(root, "SYSU-MM01")
    for cam in range(1, 7):
        os.makedirs(os.path.join(sysu, f"cam{cam}"), exist_ok=True)
    for name, text in SYSU_IDS.items():
        write_text(os.path.join(sysu, "exp", name), text)
    for rel in SYSU_IMAGES:
        touch(os.path.join(sysu, rel))
    for name in RANDPERSON:
        touch(os.path.join(root, "randperson_subset", "randperson_subset", name))


def stats(records):
    """(ids, images, cameras) of a split."""
    return len({r.pid for r in records}), len(records), len({r.camid for r in records})


def by_name(records):
    return {os.path.basename(r.img_path): r for r in records}


class DatasetTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = cls._tmp.name
        build_tree(cls.root)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def assert_relabelled(self, ds):
        self.assertEqual(sorted({r.pid for r in ds.train}), list(range(ds.num_train_pids)))


class TestMarket1501(DatasetTestCase):
    def setUp(self):
        self.ds = Market1501(self.root)

    def test_counts_junk_and_distractors(self):
        self.assertEqual(stats(self.ds.train), (3, 5, 4))  # pids 2, 7, 10; junk -1 dropped
        self.assertEqual(stats(self.ds.query), (2, 3, 3))  # distractor 0000 dropped from the query
        self.assertEqual(stats(self.ds.gallery), (3, 5, 4))  # 0000 kept twice, junk dropped
        self.assertEqual(sorted({r.pid for r in self.ds.gallery}), [0, 1, 3])
        self.assertEqual(sorted({r.pid for r in self.ds.query}), [1, 3])
        self.assertEqual(self.ds.protocol, "market1501")

    def test_relabel_and_camids(self):
        self.assert_relabelled(self.ds)
        self.assertEqual(self.ds.extra["train_pids_original"], [2, 7, 10])
        train = by_name(self.ds.train)
        self.assertEqual((train["0010_c6s3_000020_01.jpg"].pid, train["0010_c6s3_000020_01.jpg"].camid), (2, 5))
        self.assertEqual(train["0002_c1s1_000451_03.jpg"].camid, 0)
        self.assertTrue(os.path.isfile(self.ds.train[0].img_path))

    def test_frames_follow_qaconv_session_offsets(self):
        # camera 1: longest s1 frame over kept images is 1051 (query); the junk 009999 must not count
        train, gal, query = by_name(self.ds.train), by_name(self.ds.gallery), by_name(self.ds.query)
        self.assertEqual(train["0002_c1s1_000451_03.jpg"].frame, 451)
        self.assertEqual(train["0007_c1s2_000050_02.jpg"].frame, 1051 + 50)
        self.assertEqual(gal["0001_c1s2_000010_01.jpg"].frame, 1051 + 10)
        self.assertEqual(train["0007_c3s2_000100_01.jpg"].frame, 600 + 100)  # camera 3: s1 longest 600
        self.assertEqual(train["0010_c6s3_000020_01.jpg"].frame, 20)  # camera 6 has no s1/s2 images
        self.assertEqual(query["0001_c1s1_001051_00.jpg"].frame, 1051)
        self.assertEqual(self.ds.extra["fps"], 25.0)

    def test_combine_all(self):
        merged = self.ds.combine_all()
        self.assertEqual(stats(merged.train)[:2], (5, 11))  # + ids 1, 3 with their 3 + 3 images; no 0000
        self.assert_relabelled(merged)
        self.assertEqual(len(merged.query), 3)

    def test_factory_key_alias_and_direct_folder(self):
        for key in ("market", "market1501", "Market-1501"):
            ds = build_dataset(key, self.root, verbose=False)
            self.assertEqual(stats(ds.gallery), (3, 5, 4))
        ds = Market1501(os.path.join(self.root, "Market-1501-v15.09.15"))
        self.assertEqual(len(ds.train), 5)
        self.assertEqual(stats(build_dataset("market", self.root, combine_all=True, verbose=False).train)[:2],
                         (5, 11))

    def test_unknown_argument(self):
        with self.assertRaises(TypeError):
            Market1501(self.root, verison=2)


class TestDukeMTMCreID(DatasetTestCase):
    def test_parse(self):
        ds = build_dataset("dukemtmcreid", self.root, verbose=False)
        self.assertIsInstance(ds, DukeMTMCreID)
        self.assertEqual(stats(ds.train), (2, 3, 3))
        self.assertEqual(stats(ds.query), (1, 1, 1))
        self.assertEqual(stats(ds.gallery), (2, 2, 2))
        self.assert_relabelled(ds)
        train, gal = by_name(ds.train), by_name(ds.gallery)
        self.assertEqual(train["0004_c8_f0000100.jpg"][1:], (1, 7, 100))  # (pid relabelled, camid, frame)
        self.assertEqual(train["0001_c2_f0046182.jpg"].frame, 46182)
        self.assertEqual((gal["0006_c7_f0001000.jpg"].pid, gal["0006_c7_f0001000.jpg"].camid), (6, 6))
        self.assertEqual(stats(ds.combine_all().train)[:2], (4, 6))


class TestCUHK03NP(DatasetTestCase):
    def test_detected(self):
        ds = build_dataset("cuhk03_np_detected", self.root, verbose=False)
        self.assertEqual(ds.name, "cuhk03_np_detected")
        self.assertEqual(stats(ds.train), (2, 4, 2))
        self.assertEqual(stats(ds.query), (2, 2, 2))
        self.assertEqual(stats(ds.gallery), (2, 3, 2))
        self.assert_relabelled(ds)
        self.assertEqual(sorted({r.pid for r in ds.gallery}), [3, 4])
        self.assertEqual({r.camid for r in ds.train}, {0, 1})
        self.assertEqual({r.frame for r in ds.train}, {-1})
        self.assertEqual(ds.protocol, "market1501")
        self.assertEqual(len(build_dataset("cuhk03_np", self.root, verbose=False).train), 4)  # alias -> detected

    def test_labeled(self):
        ds = build_dataset("cuhk03_np_labeled", self.root, verbose=False)
        self.assertEqual((stats(ds.train), stats(ds.query), stats(ds.gallery)), ((1, 1, 1), (1, 1, 1), (1, 2, 1)))
        self.assertEqual(len(CUHK03NP(self.root, label_type="labeled").gallery), 2)
        with self.assertRaises(ValueError):
            CUHK03NP(self.root, label_type="manual")


class TestMSMT17(DatasetTestCase):
    def test_v1_lists(self):
        ds = build_dataset("msmt17", self.root, verbose=False)  # both versions present: V1 preferred
        self.assertEqual(ds.extra["version"], 1)
        self.assertEqual(stats(ds.train), (3, 4, 4))  # list_train + list_val
        self.assertEqual(stats(ds.query), (2, 2, 2))
        self.assertEqual(stats(ds.gallery), (3, 4, 4))
        self.assert_relabelled(ds)
        self.assertEqual(sorted({r.pid for r in ds.gallery}), [0, 1, 2])  # list labels kept
        train = by_name(ds.train)
        self.assertEqual(train["0001_000_15_0113afternoon_0020_0.jpg"].camid, 14)
        self.assertEqual(train["0002_000_07_0302morning_0005_0.jpg"].pid, 2)
        self.assertTrue(all(os.path.isfile(r.img_path) for r in ds.train + ds.query + ds.gallery))
        self.assertIn(os.path.join("MSMT17_V1", "test", "0000"), ds.query[0].img_path)

    def test_combine_all_keeps_test_id_zero(self):
        merged = MSMT17(self.root).combine_all()
        self.assertEqual(stats(merged.train)[:2], (6, 10))  # 3 train ids + test ids 0, 1, 2
        self.assert_relabelled(merged)

    def test_v2(self):
        for ds in (MSMT17(self.root, version=2), MSMT17(self.root, version="V2"),
                   MSMT17(os.path.join(self.root, "MSMT17_V2"))):
            self.assertEqual(ds.extra["version"], 2)
            self.assertEqual((stats(ds.train), stats(ds.query), stats(ds.gallery)), ((2, 2, 2), (1, 1, 1), (1, 1, 1)))
            self.assertIn("mask_train_v2", ds.train[0].img_path)
            self.assertEqual(ds.query[0].camid, 2)

    def test_auto_detects_v2_alone_and_rejects_bad_lines(self):
        with tempfile.TemporaryDirectory() as root:
            folder = os.path.join(root, "MSMT17_V2")
            for name, text in MSMT_V2.items():
                write_text(os.path.join(folder, name), text)
            os.makedirs(os.path.join(folder, "mask_train_v2"))
            os.makedirs(os.path.join(folder, "mask_test_v2"))
            self.assertEqual(MSMT17(root).extra["version"], 2)
            with self.assertRaises(DatasetError) as ctx:
                MSMT17(root, version=1)
            self.assertIn("MSMT17_V1", str(ctx.exception))
            write_text(os.path.join(folder, "list_query.txt"), "0000/0000_000_03_0303morning_0008_0.jpg\n")
            with self.assertRaises(DatasetError) as ctx:
                MSMT17(root)
            self.assertIn("list_query.txt:1", str(ctx.exception))


class TestSYSUMM01(DatasetTestCase):
    def test_splits_and_modalities(self):
        ds = build_dataset("sysu", self.root, verbose=False)
        self.assertIsInstance(ds, SYSUMM01)
        self.assertEqual(ds.protocol, "sysu")
        self.assertEqual(stats(ds.train), (3, 5, 4))  # train + val ids, all six cameras
        self.assertEqual(stats(ds.query), (2, 3, 2))  # IR images of test ids 4, 5
        self.assertEqual(stats(ds.gallery), (2, 4, 4))  # RGB images of test ids 4, 5
        self.assert_relabelled(ds)
        self.assertEqual({r.camid for r in ds.query}, {2, 5})
        self.assertEqual({r.camid for r in ds.gallery}, {0, 1, 3, 4})
        self.assertEqual(sorted({r.pid for r in ds.query}), [4, 5])
        self.assertTrue(all(is_infrared(r.camid) for r in ds.query))
        self.assertFalse(any(is_infrared(r.camid) for r in ds.gallery))
        self.assertEqual(by_name([r for r in ds.query if r.pid == 5])["0007.jpg"].frame, 7)
        self.assertEqual(ds.extra["ir_cams"], [2, 5])
        self.assertEqual(ds.extra["modality"][2], "ir")
        self.assertEqual((RGB_CAMS, IR_CAMS), ((1, 2, 4, 5), (3, 6)))
        self.assertEqual(stats(ds.combine_all().train)[:2], (5, 12))

    def test_overlapping_id_lists(self):
        with tempfile.TemporaryDirectory() as root:
            sysu = os.path.join(root, "SYSU-MM01")
            for cam in range(1, 7):
                os.makedirs(os.path.join(sysu, f"cam{cam}"))
            for name, text in {"train_id.txt": "1,2", "val_id.txt": "3", "test_id.txt": "2,4"}.items():
                write_text(os.path.join(sysu, "exp", name), text)
            with self.assertRaises(DatasetError):
                SYSUMM01(root)


class TestRandPerson(DatasetTestCase):
    def test_train_only(self):
        ds = build_dataset("randperson", self.root, verbose=False)
        self.assertEqual(stats(ds.train), (4, 5, 5))
        self.assertEqual((ds.query, ds.gallery), ([], []))
        self.assert_relabelled(ds)
        train = by_name(ds.train)
        self.assertEqual((train["000000_s00_c01_f001632.jpg"].camid, train["000000_s00_c01_f001632.jpg"].frame),
                         (1, 1632))
        self.assertEqual((train["000003_s10_c03_f000010.jpg"].camid, train["000003_s10_c03_f000010.jpg"].frame),
                         (18, 3490010))
        self.assertEqual((train["000005_s04_c00_f000100.jpg"].camid, train["000005_s04_c00_f000100.jpg"].frame),
                         (8, 640100))
        self.assertEqual(train["000007_c01_s00_f000001.jpg"].camid, 2)  # read by position: scene 1, camera 0
        self.assertEqual(train["000007_c01_s00_f000001.jpg"].pid, 3)
        self.assertEqual(ds.extra["fps"], 24.0)


class TestSyntheticKeys(unittest.TestCase):
    """``synthetic`` and ``synthetic_sysu``: one generator, two layouts; ``num_ids`` reaches the generator."""
    TINY = dict(num_ids=8, num_distractors=5, num_junk=4)

    def test_aliases(self):
        for name in ("synthetic_sysu", "synth_sysu", "Synthetic-SYSU", "synth-sysu"):
            self.assertEqual(canonical_name(name), "synthetic_sysu", name)
        self.assertEqual(canonical_name("synth"), "synthetic")
        self.assertIn("synthetic_sysu", names())

    def test_sysu_key_builds_the_infrared_layout_with_num_ids(self):
        with tempfile.TemporaryDirectory() as root:
            ds = build_dataset("synth_sysu", root, verbose=False, **self.TINY)
            self.assertIsInstance(ds, Synthetic)
            self.assertEqual((ds.name, ds.protocol), ("synthetic_sysu", "sysu"))
            self.assertEqual(ds.extra["meta"]["config"]["num_ids"], 8)
            self.assertTrue(ds.extra["meta"]["config"]["infrared"])
            self.assertEqual(ds.extra["ir_cams"], [2, 5])
            self.assertEqual({r.camid for r in ds.query}, {2, 5})  # IR queries
            self.assertTrue({r.camid for r in ds.gallery} <= {0, 1, 3, 4})  # RGB gallery
            self.assertTrue({2, 5} & {r.camid for r in ds.train} and {0, 1, 3, 4} & {r.camid for r in ds.train})
            self.assertEqual({r.pid for r in ds.query}, {r.pid for r in ds.gallery})
            train_ids = len({r.pid for r in ds.train})
            self.assertEqual(train_ids + len({r.pid for r in ds.query}), 8)  # train+val / test split of 8 ids
            self.assertEqual(sorted({r.pid for r in ds.train}), list(range(train_ids)))
            market = build_dataset("synthetic", root, verbose=False, **self.TINY)
            self.assertEqual((market.name, market.protocol), ("synthetic", "market1501"))
            self.assertFalse(market.extra["meta"]["config"]["infrared"])


class TestErrors(unittest.TestCase):
    def test_missing_roots_name_the_tree(self):
        expect = {"market": ["Market-1501-v15.09.15", "bounding_box_train", "query", "bounding_box_test"],
                  "duke": ["DukeMTMC-reID", "bounding_box_train"],
                  "cuhk03_np_labeled": ["cuhk03-np", "labeled", "bounding_box_train"],
                  "msmt": ["MSMT17_V1", "list_train.txt", "mask_train_v2"],
                  "sysu_mm01": ["SYSU-MM01", "cam3", "train_id.txt"],
                  "randperson": ["randperson_subset"]}
        with tempfile.TemporaryDirectory() as root:
            for key, words in expect.items():
                with self.assertRaises(DatasetError, msg=key) as ctx:
                    build_dataset(key, root, verbose=False)
                for word in words:
                    self.assertIn(word, str(ctx.exception), key)
            self.assertTrue(issubclass(DatasetError, FileNotFoundError))

    def test_unknown_key(self):
        with self.assertRaises(ValueError) as ctx:
            build_dataset("viper", "/nonexistent", verbose=False)
        self.assertIn("market", str(ctx.exception))

    def test_empty_folder_names_folder_and_pattern(self):
        with tempfile.TemporaryDirectory() as root:
            folder = os.path.join(root, "Market-1501-v15.09.15")
            write_market_style(folder, {"bounding_box_train": MARKET["bounding_box_train"], "query": [],
                                        "bounding_box_test": MARKET["bounding_box_test"]})
            with self.assertRaises(DatasetError) as ctx:
                Market1501(root)
            self.assertIn(os.path.join(folder, "query"), str(ctx.exception))
            self.assertIn("0002_c1s1_000451_03.jpg", str(ctx.exception))

    def test_malformed_image_names_are_skipped_with_a_warning(self):
        with tempfile.TemporaryDirectory() as root:
            folder = os.path.join(root, "Market-1501-v15.09.15")
            write_market_style(folder, MARKET)
            touch(os.path.join(folder, "query", "copy of 0001.jpg"))
            touch(os.path.join(folder, "query", "0001_c9s1_000001_00.jpg"))  # camera outside 1..6
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = Market1501(root)
            self.assertEqual(len(ds.query), 3)
            self.assertEqual(len(caught), 1)
            self.assertIn("skipped 2 image(s)", str(caught[0].message))
            rp = os.path.join(root, "randperson", "randperson_subset")
            touch(os.path.join(rp, "000000_s00_c00_f000264.jpg"))
            touch(os.path.join(rp, "000001_s11_c00_f000001.jpg"))  # no scene 11
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.assertEqual(len(RandPerson(root).train), 1)
            self.assertEqual(len(caught), 1)


if __name__ == "__main__":
    unittest.main()
