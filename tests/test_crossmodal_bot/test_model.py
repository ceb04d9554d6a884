"""Baseline / build_backbone: shapes, last stride, BNNeck, gradients. Random init only.

Pretrained-weight lookup and loading are tested in tests/test_common/test_weights.py."""
import unittest

import torch

from crossmodal_bot.loss import build_loss
from crossmodal_bot.model import Baseline, build_backbone
from crossmodal_bot.solver import build_optimizer


def small(num_classes=5, **kw):
    torch.manual_seed(0)
    return Baseline(num_classes, arch="resnet18", pretrained=False, **kw)


class TestShapes(unittest.TestCase):
    def test_train_and_eval_outputs(self):
        model = small()
        x = torch.randn(4, 3, 64, 32)
        model.train()
        logits, f_t = model(x)
        self.assertEqual(tuple(logits.shape), (4, 5))
        self.assertEqual(tuple(f_t.shape), (4, 512))
        self.assertEqual(model.feat_dim, 512)
        model.eval()
        with torch.no_grad():
            self.assertEqual(tuple(model(x).shape), (4, 512))

    def test_last_stride(self):
        x = torch.randn(2, 3, 64, 32)
        b1 = build_backbone("resnet18", last_stride=1, pretrained=False).eval()
        b2 = build_backbone("resnet18", last_stride=2, pretrained=False).eval()
        with torch.no_grad():
            self.assertEqual(tuple(b1(x).shape), (2, 512, 4, 2))  # H/16 x W/16
            self.assertEqual(tuple(b2(x).shape), (2, 512, 2, 1))  # H/32 x W/32
        self.assertEqual(b1.layer4[0].conv1.stride, (1, 1))
        self.assertEqual(b1.layer4[0].downsample[0].stride, (1, 1))
        b50 = build_backbone("resnet50", last_stride=1, pretrained=False)
        self.assertEqual(b50.layer4[0].conv2.stride, (1, 1))  # torchvision puts the stride on the 3x3 conv
        self.assertEqual(b50.layer4[0].downsample[0].stride, (1, 1))
        self.assertEqual(b50.out_channels, 2048)

    def test_eval_feature_after_and_before_neck(self):
        model = small()
        x = torch.randn(3, 3, 64, 32)
        model.eval()
        with torch.no_grad():
            f_t = model.gap(model.base(x)).flatten(1)
            f_i = model(x)
            model.neck_feat = "before"
            torch.testing.assert_close(model(x), f_t)
        torch.testing.assert_close(f_i, model.bottleneck(f_t))


class TestNeck(unittest.TestCase):
    def test_bnneck_init_and_classifier(self):
        model = small(num_classes=50)
        self.assertFalse(model.bottleneck.bias.requires_grad)
        self.assertTrue(torch.all(model.bottleneck.bias == 0))
        self.assertTrue(torch.all(model.bottleneck.weight == 1))
        self.assertIsNone(model.classifier.bias)
        self.assertAlmostEqual(model.classifier.weight.std().item(), 0.001, delta=0.0002)

    def test_bnneck_bias_stays_zero_after_step(self):
        model = small()
        opt = build_optimizer(model, lr=0.1)
        self.assertNotIn(id(model.bottleneck.bias), {id(p) for g in opt.param_groups for p in g["params"]})
        model.train()
        logits, feat = model(torch.randn(4, 3, 64, 32))
        loss, _ = build_loss(5)(logits, feat, torch.tensor([0, 0, 1, 1]))
        loss.backward()
        opt.step()
        self.assertTrue(torch.all(model.bottleneck.bias == 0))
        self.assertFalse(torch.all(model.bottleneck.weight == 1))  # the neck's weight did move

    def test_every_trainable_parameter_gets_a_gradient(self):
        model = small()
        model.train()
        logits, feat = model(torch.randn(4, 3, 64, 32))
        loss, _ = build_loss(5)(logits, feat, torch.tensor([0, 0, 1, 1]))
        loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.assertIsNotNone(p.grad, name)
                self.assertTrue(torch.isfinite(p.grad).all(), name)
                self.assertGreater(p.grad.abs().sum().item(), 0, name)

    def test_no_neck(self):
        model = small(neck="no")
        self.assertIsNone(model.bottleneck)
        self.assertIsNotNone(model.classifier.bias)
        x = torch.randn(2, 3, 64, 32)
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), model.gap(model.base(x)).flatten(1))

    def test_state_dict_round_trip(self):
        a = small()
        torch.manual_seed(1)
        b = Baseline(5, arch="resnet18", pretrained=False)
        b.load_state_dict(a.state_dict())
        a.eval(), b.eval()
        x = torch.randn(2, 3, 64, 32)
        with torch.no_grad():
            torch.testing.assert_close(a(x), b(x))
        self.assertIn("base.layer4.0.conv1.weight", a.state_dict())
        self.assertIn("bottleneck.running_mean", a.state_dict())


if __name__ == "__main__":
    unittest.main()
