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


class TestBNNeckByHand(unittest.TestCase):
    """f_i = (f_t - mu) / sqrt(var + eps) * gamma + 0 and logits = f_i @ W^T, recomputed outside the module."""
    EPS = 1e-5

    def neck_model(self):
        model = small(num_classes=7)
        torch.manual_seed(3)
        with torch.no_grad():  # a non-trivial scale, so that gamma is really applied
            model.bottleneck.weight.copy_(torch.rand(model.feat_dim) + 0.5)
        return model

    @staticmethod
    def run_capturing_f_i(model, x):
        """Returns (model output, f_i as the module computed it) via a forward hook on the neck."""
        seen = {}
        handle = model.bottleneck.register_forward_hook(lambda m, inp, out: seen.update(f_i=out.detach()))
        try:
            out = model(x)
        finally:
            handle.remove()
        return out, seen["f_i"]

    def test_two_image_batch_by_hand(self):
        neck = small().bottleneck.train()  # the model's own BNNeck (512 channels): a 2-channel pattern, tiled
        with torch.no_grad():
            neck.weight.copy_(torch.tensor([2.0, 0.5]).repeat(256))
        f_t = torch.tensor([[1.0, 2.0], [3.0, 6.0]]).repeat(1, 256)  # mean (2, 4), biased variance (1, 4)
        a, b = 2.0 / (1 + self.EPS) ** 0.5, 0.5 * 2.0 / (4 + self.EPS) ** 0.5
        expected = torch.tensor([[-a, -b], [a, b]]).repeat(1, 256)
        torch.testing.assert_close(neck(f_t), expected)
        # running statistics: momentum 0.1 from (0, 1), with the UNBIASED batch variance (2, 8)
        torch.testing.assert_close(neck.running_mean, torch.tensor([0.2, 0.4]).repeat(256))
        torch.testing.assert_close(neck.running_var, torch.tensor([0.9 + 0.2, 0.9 + 0.8]).repeat(256))
        neck.eval()  # eval mode: the running statistics, not the batch's
        rm, rv = torch.tensor([0.2, 0.4]), torch.tensor([1.1, 1.7])
        expected = ((torch.tensor([[1.0, 2.0], [3.0, 6.0]]) - rm) / torch.sqrt(rv + self.EPS)
                    * torch.tensor([2.0, 0.5])).repeat(1, 256)
        with torch.no_grad():
            torch.testing.assert_close(neck(f_t), expected)

    def test_train_mode_batch_statistics_and_logits(self):
        model = self.neck_model().train()
        self.assertEqual(model.bottleneck.eps, self.EPS)
        x = torch.randn(6, 3, 64, 32)
        (logits, f_t), f_i = self.run_capturing_f_i(model, x)
        gamma, beta = model.bottleneck.weight.detach(), model.bottleneck.bias.detach()
        self.assertTrue(torch.all(beta == 0))
        f_t = f_t.detach().double()
        mu, var = f_t.mean(0), f_t.var(0, unbiased=False)
        by_hand = ((f_t - mu) / torch.sqrt(var + self.EPS) * gamma.double()).float()
        torch.testing.assert_close(f_i, by_hand, rtol=1e-4, atol=1e-4)
        self.assertIsNone(model.classifier.bias)
        w = model.classifier.weight.detach()
        torch.testing.assert_close(logits.detach(), by_hand @ w.t(), rtol=1e-4, atol=1e-6)

    def test_eval_mode_running_statistics(self):
        model = self.neck_model()
        with torch.no_grad():
            model.bottleneck.running_mean.copy_(torch.linspace(-0.5, 0.5, model.feat_dim))
            model.bottleneck.running_var.copy_(torch.linspace(0.2, 3.0, model.feat_dim))
        model.eval()
        x = torch.randn(3, 3, 64, 32)
        with torch.no_grad():
            f_t = model.gap(model.base(x)).flatten(1).double()
            f_i, hooked = self.run_capturing_f_i(model, x)
        bn = model.bottleneck
        by_hand = ((f_t - bn.running_mean.double()) / torch.sqrt(bn.running_var.double() + self.EPS)
                   * bn.weight.detach().double()).float()
        torch.testing.assert_close(f_i, by_hand, rtol=1e-4, atol=1e-5)  # the test feature (neck_feat 'after')
        torch.testing.assert_close(hooked, by_hand, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_mean, torch.linspace(-0.5, 0.5, model.feat_dim))  # unchanged


if __name__ == "__main__":
    unittest.main()
