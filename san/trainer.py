"""One SAN training step / epoch with the release's two optimiser groups, made correct on PyTorch >= 1.5.

The release (spec §5.5) steps the re-ID optimiser, then backpropagates the decoder losses through the *same*,
now stale, forward graph and steps an encoder Adam and the decoder Adam; PyTorch >= 1.5 refuses that
("modified by an inplace operation"). We keep one forward per iteration and take both gradients before any step
(option 1 of spec §10b-1):

1. one encoder forward (train mode) -> logits, v, f, x_down1..3; one decoder forward on f, x_down1..3;
2. ``g_reid = d L_reid / d encoder`` and ``g_dec = d L_dec / d (encoder, decoder)`` by two ``autograd.grad``
   calls on the intact graph;
3. the re-ID optimiser (warm-up Adam, then AMSGrad; all encoder parameters, classifier included) steps with
   ``g_reid``; then the encoder Adam(1e-5, beta1 0.5) with ``g_dec`` on the encoder and the decoder
   Adam(1e-5, beta1 0.5) with ``g_dec`` on the decoder. fc and classifier get no ``g_dec`` (their grad is
   None, so the encoder Adam skips them, as the release's "closed" layers).

Difference from the release: its decoder gradient was computed with activations of the pre-step weights but
backpropagated through the post-step conv weights (an accident of old autograd); ours is the exact gradient at
the pre-step weights, so both updates are evaluated at the same point (a simultaneous, not sequential, update).

Under torchrun (``san/ddp.py``): rank 0's buffers are broadcast before the forward, L_TR and the triplet run on
the gathered global batch, and both gradient lists are averaged over the ranks before any step; the logged parts
are the means over ranks (the global batch's values).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import torch
from tqdm import tqdm

from common.distributed import average_scalars, gather_with_grad
from common.meters import MeterDict
from san.ddp import average_gradients, sync_buffers
from san.loss import ReidCriterion, reconstruction_loss, triplet_reconstruction_loss


class SANStep:
    """The per-iteration update.

    Args:
        encoder: :class:`san.model.SAEncoder`; decoder: :class:`san.decoder.SADecoder`.
        criterion: :class:`san.loss.ReidCriterion`.
        opt_reid: re-ID optimiser over all encoder parameters (replaceable: warm-up Adam -> AMSGrad).
        opt_enc: Adam over the encoder, decoder losses only; opt_dec: Adam over the decoder.
        use_rec: add L_Rec (SAN-basic); use_tr: add L_TR (SAN); both False: the re-ID baseline (no decoder).
        lambda_rec, lambda_tr: weights of L_Rec and L_TR (1 and 1 in the release).
        num_instances: K of the identity groups L_TR assumes.
    """

    def __init__(self, encoder, decoder, criterion: ReidCriterion, opt_reid, opt_enc, opt_dec,
                 use_rec: bool = True, use_tr: bool = True, lambda_rec: float = 1.0, lambda_tr: float = 1.0,
                 num_instances: int = 4):
        self.encoder, self.decoder, self.criterion = encoder, decoder, criterion
        self.opt_reid, self.opt_enc, self.opt_dec = opt_reid, opt_enc, opt_dec
        self.use_rec, self.use_tr = use_rec, use_tr
        self.lambda_rec, self.lambda_tr, self.k = lambda_rec, lambda_tr, num_instances

    @property
    def uses_decoder(self) -> bool:
        return self.use_rec or self.use_tr

    def __call__(self, imgs: torch.Tensor, pids: torch.Tensor, textures: Optional[torch.Tensor],
                 reid: bool = True, dec: bool = True) -> Dict[str, float]:
        """One update on (imgs (B, 3, H, W), pids (B,), textures (B, 3, H, 2W) in [-1, 1] or None).

        ``reid=False`` / ``dec=False`` skip the re-ID / decoder update (tests of the update order).
        Returns the loss parts as floats.
        """
        dec = dec and self.uses_decoder
        self.encoder.train()
        self.decoder.train()
        sync_buffers(self.encoder, self.decoder)  # torchrun: rank 0's BN statistics (DDP's broadcast_buffers)
        logits, v, f, x1, x2, x3 = self.encoder(imgs)
        enc_params = [p for p in self.encoder.parameters() if p.requires_grad]
        dec_params = [p for p in self.decoder.parameters() if p.requires_grad]
        loss_reid, parts = self.criterion(logits, v, pids)
        parts["loss_reid"] = loss_reid.item()
        g_reid = g_dec = None
        if dec:
            texture, *x_sims = self.decoder(f, x1, x2, x3)
            loss_dec = texture.new_zeros(())
            if self.use_rec:
                rec = reconstruction_loss(texture, textures)
                loss_dec = loss_dec + self.lambda_rec * rec
                parts["rec"] = rec.item()
            if self.use_tr:
                # the fixed-index triplets cross identity groups (and ranks): on the global batch under torchrun
                tr = triplet_reconstruction_loss([gather_with_grad(x) for x in x_sims], gather_with_grad(pids),
                                                 self.k)
                loss_dec = loss_dec + self.lambda_tr * tr
                parts["tr"] = tr.item()
            parts["loss_dec"] = loss_dec.item()
        if reid:
            g_reid = average_gradients(torch.autograd.grad(loss_reid, enc_params, retain_graph=dec,
                                                           allow_unused=True))
        if dec:
            g_dec = average_gradients(torch.autograd.grad(loss_dec, enc_params + dec_params, allow_unused=True))
        if reid:
            _assign(enc_params, g_reid)
            self.opt_reid.step()
        if dec:
            _assign(enc_params, g_dec[:len(enc_params)])
            _assign(dec_params, g_dec[len(enc_params):])
            self.opt_enc.step()
            self.opt_dec.step()
        for p in enc_params + dec_params:
            p.grad = None
        return parts


def _assign(params: List[torch.Tensor], grads) -> None:
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.detach()


def train_one_epoch(step: SANStep, loader, device: torch.device, epoch: int, max_batches: int = 0,
                    print_freq: int = 20, log: Callable[[str], None] = print, progress: bool = True,
                    on_step: Optional[Callable[[int, Dict[str, float]], None]] = None) -> Dict[str, float]:
    """Run ``step`` over one epoch of ``loader`` (batches ``(imgs, pids, camids, indices, textures)``).

    Args:
        epoch: the global epoch (warm-up epochs included), for logging and the TensorBoard step.
        max_batches: stop after this many batches (0 = whole epoch).
        on_step: called with (global iteration, parts) after each step.
    Returns:
        epoch averages of the parts, plus images/s (this rank's) and the re-ID lr.
    """
    meters = MeterDict()
    total = len(loader) if not max_batches else min(max_batches, len(loader))
    bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    start, seen = time.time(), 0
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        dtype = torch.get_default_dtype()  # float32 (the loader's), or float64 with --float64
        imgs, pids = batch[0].to(device, dtype), batch[1].to(device)
        textures = batch[4].to(device, dtype) if step.uses_decoder else None
        parts = average_scalars(step(imgs, pids, textures))  # torchrun: the global batch's values
        meters.update(n=imgs.size(0), **parts)
        seen += imgs.size(0)
        bar.update(1)
        if on_step is not None:
            on_step(epoch * total + i, parts)
        if print_freq and (i + 1) % print_freq == 0 and not progress:
            log(f"epoch {epoch} [{i + 1}/{total}] {meters}")
    bar.close()
    stats = meters.averages()
    stats["images_per_s"] = seen / max(time.time() - start, 1e-9)
    stats["lr"] = step.opt_reid.param_groups[0]["lr"]
    return stats
