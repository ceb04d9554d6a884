"""BoT transforms: shapes, deterministic test transform, random erasing geometry and fill, torch-RNG determinism."""
import math
import random
import unittest

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomErasing, build_transforms


def make_image(h=50, w=30, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8))


def erased_mask(before, after):
    """Boolean (H, W) mask of pixels changed in any channel."""
    return (before != after).any(dim=0)


class TestBuildTransforms(unittest.TestCase):
    def test_output_shapes(self):
        img = make_image()
        for is_train in (True, False):
            out = build_transforms(32, 16, is_train=is_train, color_jitter=0.3)(img)
            self.assertEqual(tuple(out.shape), (3, 32, 16))
            self.assertEqual(out.dtype, torch.float32)

    def test_test_transform_deterministic_and_matches_manual(self):
        img = make_image()
        t = build_transforms(32, 16, is_train=False)
        a, b = t(img), t(img)
        self.assertTrue(torch.equal(a, b))
        manual = TF.to_tensor(img.resize((16, 32), Image.BILINEAR))
        manual = (manual - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        # torchvision's antialiased bilinear resize and PIL's bilinear agree up to rounding of 8-bit values
        self.assertLess((a - manual).abs().max().item(), 2.5 / 255 / min(IMAGENET_STD))

    def test_forced_flip_without_other_augmentation_is_flipped_test_output(self):
        img = make_image()
        train = build_transforms(32, 16, is_train=True, flip_p=1.0, pad=0, random_erase_p=0.0)
        test = build_transforms(32, 16, is_train=False)
        self.assertTrue(torch.allclose(train(img), test(img).flip(2), atol=1e-6))

    def test_train_transform_deterministic_under_torch_seed_only(self):
        img = make_image()
        t = build_transforms(32, 16, is_train=True, color_jitter=0.4, random_erase_p=0.9)
        torch.manual_seed(7)
        random.seed(1)
        a = t(img)
        torch.manual_seed(7)
        random.seed(2)  # python's RNG must not matter
        b = t(img)
        self.assertTrue(torch.equal(a, b))
        outs = []
        for s in range(5):
            torch.manual_seed(s)
            outs.append(t(img))
        self.assertTrue(any(not torch.equal(outs[0], o) for o in outs[1:]))

    def test_erasing_uses_normalize_mean_in_pipeline(self):
        t = build_transforms(32, 16, is_train=True, random_erase_p=1.0)
        self.assertIsInstance(t.transforms[-1], RandomErasing)
        self.assertEqual(t.transforms[-1].mean, tuple(IMAGENET_MEAN))
        names = [type(x).__name__ for x in t.transforms]
        self.assertEqual(names, ["Resize", "RandomHorizontalFlip", "Pad", "RandomCrop", "ToTensor", "Normalize",
                                 "RandomErasing"])


class TestRandomErasing(unittest.TestCase):
    H, W = 64, 32

    def test_fills_one_rectangle_with_exact_values_within_area_bounds(self):
        sl, sh, r1 = 0.02, 0.4, 0.3
        fill = (0.4914, 0.4822, 0.4465)
        erase = RandomErasing(probability=1.0, sl=sl, sh=sh, r1=r1, mean=fill)
        area = self.H * self.W
        # rounding h and w to integers moves h*w away from the drawn area by at most this many pixels
        slack = math.sqrt(sh * area / r1) + 0.25
        fractions = []
        for seed in range(200):
            torch.manual_seed(seed)
            before = torch.full((3, self.H, self.W), -5.0)
            after = erase(before.clone())
            mask = erased_mask(before, after)
            self.assertTrue(mask.any(), f"seed {seed}: nothing erased with probability 1")
            rows = torch.nonzero(mask.any(dim=1)).flatten()
            cols = torch.nonzero(mask.any(dim=0)).flatten()
            top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            box = torch.zeros_like(mask)
            box[top:bottom, left:right] = True
            self.assertTrue(torch.equal(mask, box), "erased pixels do not form one filled rectangle")
            for c in range(3):
                self.assertTrue(torch.all(after[c][mask] == torch.tensor(fill[c])))
            h, w = int(bottom - top), int(right - left)
            self.assertLess(h, self.H)
            self.assertLess(w, self.W)
            frac = h * w / area
            self.assertGreaterEqual(frac, sl - slack / area)
            self.assertLessEqual(frac, sh + slack / area)
            fractions.append(frac)
        self.assertGreater(max(fractions) - min(fractions), 0.1)  # sizes actually vary

    def test_probability_zero_is_identity(self):
        erase = RandomErasing(probability=0.0)
        x = torch.randn(3, self.H, self.W)
        for seed in range(20):
            torch.manual_seed(seed)
            self.assertTrue(torch.equal(erase(x.clone()), x))

    def test_probability_is_respected(self):
        erase = RandomErasing(probability=0.3)
        torch.manual_seed(0)
        hits = sum(bool(erased_mask(z, erase(z.clone())).any()) for z in [torch.full((3, 64, 32), -5.0)] * 400)
        self.assertGreater(hits, 80)
        self.assertLess(hits, 160)

    def test_single_channel_gets_first_value(self):
        erase = RandomErasing(probability=1.0, mean=(0.25, 0.5, 0.75))
        torch.manual_seed(3)
        before = torch.full((1, self.H, self.W), -5.0)
        after = erase(before.clone())
        mask = erased_mask(before, after)
        self.assertTrue(mask.any())
        self.assertTrue(torch.all(after[0][mask] == 0.25))

    def test_deterministic_under_torch_seed(self):
        erase = RandomErasing(probability=0.5)
        x = torch.randn(3, self.H, self.W)
        torch.manual_seed(11)
        a = [erase(x.clone()) for _ in range(10)]
        torch.manual_seed(11)
        b = [erase(x.clone()) for _ in range(10)]
        self.assertTrue(all(torch.equal(u, v) for u, v in zip(a, b)))


if __name__ == "__main__":
    unittest.main()
