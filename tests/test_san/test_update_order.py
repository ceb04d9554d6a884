"""The two-optimiser update (spec §5.5, §10b-1): which parameters each loss group moves, and that both
gradients are taken at the same (pre-step) weights, against a reference built with plain backward passes."""
import copy
import unittest

import torch

from san.decoder import SADecoder
from san.loss import ReidCriterion, reconstruction_loss, triplet_reconstruction_loss
from san.model import SAEncoder
from san.trainer import SANStep


def build(seed=0, opt=torch.optim.Adam):
    torch.manual_seed(seed)
    enc = SAEncoder(3, "resnet18_fc512", pretrained=False)
    dec = SADecoder(enc.skip_channels)
    crit = ReidCriterion(3, epsilon=0.1)
    step = SANStep(enc, dec, crit, opt(enc.parameters(), lr=1e-2), opt(enc.parameters(), lr=1e-2),
                   opt(dec.parameters(), lr=1e-2))
    return enc, dec, step


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(8, 3, 64, 32, generator=g)
    pids = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2])
    tex = torch.rand(8, 3, 64, 64, generator=g) * 2 - 1
    return imgs, pids, tex


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())}


class TestUpdateOrder(unittest.TestCase):
    def test_decoder_step_alone(self):
        enc, dec, step = build()
        b_enc, b_dec = snapshot(enc), snapshot(dec)
        step(*batch(), reid=False, dec=True)
        moved = changed(b_enc, enc)
        self.assertIn("conv1.weight", moved)
        self.assertIn("layer4.1.conv2.weight", moved)
        head = {k for k in b_enc if k.startswith(("fc.", "classifier."))}
        self.assertTrue(head)
        self.assertFalse(moved & head, "the decoder losses must not move fc / classifier")
        self.assertEqual(len(changed(b_dec, dec)), len(b_dec))

    def test_reid_step_alone(self):
        enc, dec, step = build()
        b_enc, b_dec = snapshot(enc), snapshot(dec)
        b_buf = {k: v.clone() for k, v in dec.named_buffers()}
        step(*batch(), reid=True, dec=False)
        self.assertEqual(changed(b_dec, dec), set())
        self.assertTrue(all(torch.equal(b_buf[k], v) for k, v in dec.named_buffers()))  # not even BN stats
        moved = changed(b_enc, enc)
        self.assertIn("classifier.weight", moved)
        self.assertIn("conv1.weight", moved)

    def test_both_grads_at_pre_step_weights(self):
        # with SGD, one step must equal theta - lr (g_reid(theta) + g_dec(theta)) for the encoder backbone
        enc, dec, step = build(opt=torch.optim.SGD)
        ref_enc, ref_dec = copy.deepcopy(enc), copy.deepcopy(dec)
        imgs, pids, tex = batch()
        step(imgs, pids, tex)
        ref_enc.train()
        ref_dec.train()
        logits, v, f, x1, x2, x3 = ref_enc(imgs)
        t, *sims = ref_dec(f, x1, x2, x3)
        loss_reid = ReidCriterion(3, epsilon=0.1)(logits, v, pids)[0]
        loss_dec = reconstruction_loss(t, tex) + triplet_reconstruction_loss(sims, pids)
        g_reid = torch.autograd.grad(loss_reid, list(ref_enc.parameters()), retain_graph=True, allow_unused=True)
        g_dec = torch.autograd.grad(loss_dec, list(ref_enc.parameters()) + list(ref_dec.parameters()),
                                    allow_unused=True)
        n = len(list(ref_enc.parameters()))
        with torch.no_grad():
            for (name, p), gr, gd in zip(ref_enc.named_parameters(), g_reid, g_dec[:n]):
                expect = p - 1e-2 * ((gr if gr is not None else 0) + (gd if gd is not None else 0))
                torch.testing.assert_close(dict(enc.named_parameters())[name], expect, atol=1e-6, rtol=1e-5)
            for (name, p), gd in zip(ref_dec.named_parameters(), g_dec[n:]):
                torch.testing.assert_close(dict(dec.named_parameters())[name], p - 1e-2 * gd, atol=1e-6, rtol=1e-5)


if __name__ == "__main__":
    unittest.main()
