"""SA-Enc / SA-Dec shapes, parameter counts (spec §3, §4, §10a-1/2/3) and the width doubling."""
import unittest

import torch
import torch.nn.functional as F

from san.decoder import SADecoder
from san.model import SAEncoder, count_params


class TestEncoderDecoder(unittest.TestCase):
    def test_resnet50_fc512_counts_and_shapes(self):
        torch.manual_seed(0)
        enc = SAEncoder(767, "resnet50_fc512", pretrained=False)
        dec = SADecoder(enc.skip_channels)
        # the spec's figures, computed from the layer list: 23,508,032 + 1,050,112 and 9,071,075
        self.assertEqual(count_params(enc), 24_558_144)
        self.assertEqual(sum(p.numel() for p in dec.parameters()), 9_071_075)
        self.assertEqual(sum(p.numel() for p in enc.classifier.parameters()), 393_471)
        enc.eval()
        dec.eval()
        with torch.no_grad():
            out = enc(torch.randn(1, 3, 256, 128))
            self.assertEqual(len(out), 5)
            v, f, x1, x2, x3 = out
            self.assertEqual(tuple(v.shape), (1, 512))
            self.assertGreaterEqual(v.min().item(), 0.0)  # after ReLU
            self.assertEqual([tuple(t.shape[1:]) for t in (f, x1, x2, x3)],
                             [(2048, 16, 8), (256, 64, 32), (512, 32, 16), (1024, 16, 8)])
            tex, *sims = dec(f, x1, x2, x3)
        self.assertEqual(tuple(tex.shape), (1, 3, 256, 256))
        self.assertEqual([tuple(s.shape[1:]) for s in sims],
                         [(256, 32, 16), (64, 64, 32), (32, 128, 64), (16, 256, 128)])

    def test_train_mode_returns_logits(self):
        enc = SAEncoder(5, "resnet18_fc512", pretrained=False).train()
        out = enc(torch.randn(2, 3, 64, 32))
        self.assertEqual(len(out), 6)
        self.assertEqual(tuple(out[0].shape), (2, 5))
        self.assertEqual(tuple(out[1].shape), (2, 512))

    def test_decoder_sizes(self):
        torch.manual_seed(0)
        for arch in ("resnet18_fc512", "resnet18", "resnet50"):
            enc = SAEncoder(3, arch, pretrained=False).eval()
            dec = SADecoder(enc.skip_channels).eval()
            c1 = enc.skip_channels[0]
            for h, w in ((64, 32), (128, 64), (96, 48), (80, 80), (32, 16)):
                with torch.no_grad():
                    v, f, x1, x2, x3 = enc(torch.randn(2, 3, h, w))
                    tex, s1, s2, s3, s4 = dec(f, x1, x2, x3)
                self.assertEqual(tuple(tex.shape), (2, 3, h, 2 * w), (arch, h, w))
                self.assertEqual(tuple(s1.shape[2:]), (h // 8, w // 8))
                self.assertEqual(tuple(s2.shape), (2, c1 // 4, h // 4, w // 4))
                self.assertEqual(tuple(s3.shape), (2, c1 // 8, h // 2, w // 2))
                self.assertEqual(tuple(s4.shape), (2, c1 // 16, h, w))
        self.assertEqual(SAEncoder(3, "resnet50", pretrained=False).feat_dim, 2048)  # the paper's pooled f_e4

    def test_width_doubling_align_corners(self):
        torch.manual_seed(0)
        enc = SAEncoder(3, "resnet18_fc512", pretrained=False).eval()
        dec = SADecoder(enc.skip_channels).eval()
        seen = {}
        dec.final_layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
        with torch.no_grad():
            tex = dec(*enc(torch.randn(1, 3, 32, 16))[1:])[0]
        out = seen["out"]
        w = out.shape[-1]
        # output column j samples input column x = j (W - 1) / (2W - 1), by linear interpolation
        for j in range(2 * w):
            x = j * (w - 1) / (2 * w - 1)
            lo = int(x)
            hi = min(lo + 1, w - 1)
            ref = out[..., lo] * (1 - (x - lo)) + out[..., hi] * (x - lo)
            torch.testing.assert_close(tex[..., j], ref, atol=1e-5, rtol=1e-4)

    def test_decoder_init(self):
        torch.manual_seed(0)
        dec = SADecoder((256, 512, 1024, 2048))
        conv = dec.up1.res.conv1.weight  # 512 -> 512, 3x3: xavier std = 0.02 sqrt(2 / (fan_in + fan_out))
        fan = 512 * 9
        self.assertAlmostEqual(conv.std().item(), 0.02 * (2.0 / (2 * fan)) ** 0.5, delta=2e-5)
        self.assertEqual(dec.up1.up[2].bias.abs().sum().item(), 0.0)
        bn = dec.up1.res.bn1.weight
        self.assertAlmostEqual(bn.mean().item(), 1.0, delta=0.01)
        self.assertAlmostEqual(bn.std().item(), 0.02, delta=0.005)

    def test_unknown_arch(self):
        with self.assertRaises(ValueError):
            SAEncoder(3, "vgg16", pretrained=False)


if __name__ == "__main__":
    unittest.main()
