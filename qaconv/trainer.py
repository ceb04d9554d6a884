"""QAConv training: one epoch (AMP, gradient clipping, finite-loss filtering), the adaptive learning-rate / epoch
schedule of QAConv 2.1, and the pre-training trials of QAConv 1.1 / 1.2.

Semantics follow ShengcaiLiao/QAConv (see ``qaconv/README.md`` for where we deviate):

* 2.x: ``model.eval()`` every iteration (the backbone's BatchNorm keeps its ImageNet statistics; its affine
  parameters still learn) while the loss and its matcher train; 1.x: plain ``model.train()``.
* Per-sample losses that are not finite are dropped; a batch with none finite is skipped.
* Gradients of the model and of the criterion are clipped separately to ``clip_value`` (after unscaling under AMP).
* Under torchrun the loss sees the global batch: every rank's feature maps and labels are gathered in rank order
  (:func:`common.distributed.gather_with_grad`, a no-op alone), so the loss, the matcher's gradient and the
  class-memory update are the single-process ones on every rank, and DDP's average of the backbone gradients is
  the single-process gradient (the gather's backward sums the W identical copies, DDP divides by W).
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Dict, Optional

import torch
from torch.nn.utils import clip_grad_norm_

from common.distributed import gather_with_grad, get_world_size
from common.guard import DivergenceGuard
from common.meters import MeterDict
from common.progress import bar as progress_bar, interactive


def train_one_epoch(model: torch.nn.Module, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer, loader,
                    device: torch.device, epoch: int, freeze_bn: bool = True, amp: bool = False,
                    clip_value: float = 8.0, max_batches: int = 0, progress: bool = True, print_freq: int = 0,
                    log: Callable[[str], None] = print,
                    on_step: Optional[Callable[[int, Dict[str, float]], None]] = None,
                    guard: Optional[DivergenceGuard] = None, step_offset: Optional[int] = None,
                    num_epochs: int = 0) -> Dict[str, float]:
    """Train ``model`` and ``criterion`` for one pass over ``loader``.

    Args:
        model: images (B, 3, H, W) -> feature maps (B, C, h, w).
        criterion: ``criterion(maps (B, C, h, w), pids (B,)) -> (loss (B,), acc (B,))`` (a QAConv loss).
        optimizer: optimises model and criterion parameters.
        loader: yields (images, pids, camids, indices).
        device: where to train.
        epoch: 0-based epoch (for the progress bar and the global step).
        freeze_bn: QAConv 2.x: ``model.eval()`` at every iteration (frozen backbone BN statistics).
        amp: float16 autocast with a fresh GradScaler per epoch, on CUDA only (ignored on CPU).
        clip_value: max gradient norm, applied to the model and to the criterion separately; <= 0 disables
            clipping (the original then multiplies gradients by a non-positive norm: see the README).
        max_batches: stop after this many batches (0 = the whole loader).
        progress: tqdm bar.
        print_freq: log every N iterations when the bar is off (0 = never).
        log: logging function.
        on_step: called with (global step, {'loss', 'acc'}) after every trained iteration; the global step is
            ``step_offset + i`` (default ``epoch * len(loader)``; graph-sampling epochs differ in length, so the
            engine passes the running count and the step never repeats).
        guard: counts batches with no finite loss; stops training after ``--nonfinite-patience`` in a row.
        num_epochs: total epochs, for the progress display (``epoch 3/20``).
    Returns:
        {'loss', 'acc' (epoch means over samples of trained batches), 'skipped' (batches without a finite loss),
         'images_per_s', 'lr' (the first group's), 'iterations'}.
    """
    use_amp = bool(amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    meters = MeterDict()
    total = len(loader) if not max_batches else min(max_batches, len(loader))
    name = f"epoch {epoch + 1}" + (f"/{num_epochs}" if num_epochs else "")
    bar = progress_bar(total=total, desc=name, progress=progress)
    plain = not interactive(progress)
    guard = guard if guard is not None else DivergenceGuard(10 ** 9)
    step0 = epoch * total if step_offset is None else step_offset
    start, seen, skipped, trained = time.time(), 0, 0, 0
    world = get_world_size()
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        model.train(not freeze_bn)
        criterion.train()
        imgs, pids = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            maps = gather_with_grad(model(imgs))  # (W * B_r, C, h, w): the global batch (alone: as it is)
            pids = gather_with_grad(pids)
            loss_vec, acc_vec = criterion(maps, pids)
        bar.update(1)
        finite = torch.isfinite(loss_vec)
        if not guard.ok(0.0 if bool(finite.any()) else float("nan"), where=f"{name}, iteration {i + 1}"):
            skipped += 1
            continue
        loss, acc = loss_vec[finite].float().mean(), acc_vec[finite].float().mean()
        scaler.scale(loss).backward()
        if clip_value > 0:
            scaler.unscale_(optimizer)
            clip_grad_norm_(model.parameters(), clip_value)
            clip_grad_norm_(criterion.parameters(), clip_value)
        scaler.step(optimizer)
        scaler.update()
        trained += 1
        seen += imgs.size(0) * world
        meters.update(n=pids.size(0), loss=loss.item(), acc=acc.item())
        bar.set_postfix(loss=f"{meters.meters['loss'].avg:.3f}", acc=f"{meters.meters['acc'].avg:.3f}")
        if on_step is not None:
            on_step(step0 + i, {"loss": loss.item(), "acc": acc.item()})
        if print_freq and plain and (i + 1) % print_freq == 0:
            log(f"{name} [{i + 1}/{total}] {meters}")
    bar.close()
    stats = meters.averages() if trained else {"loss": float("nan"), "acc": 0.0}
    stats.update(skipped=skipped, iterations=trained, images_per_s=seen / max(time.time() - start, 1e-9),
                 lr=optimizer.param_groups[0]["lr"])
    return stats


class AdaptiveSchedule:
    """QAConv 2.1's learning-rate / epoch schedule, decided after each epoch from the epoch's mean loss.

    * ``step_factor < 1`` (dynamic, default 0.7): the loss of the second epoch is the base loss; the first later
      epoch whose loss is below ``step_factor * base_loss`` multiplies every group's lr by 0.1 and sets
      ``final_epochs = min(max_epochs, e + e // 2)`` (``e`` 1-based). Training stops after epoch ``final_epochs``.
    * ``step_factor >= 1`` (fixed): the lr is multiplied by 0.1 once, after epoch ``step_factor``; training runs
      ``max_epochs``.

    Args:
        step_factor: see above (``--step_factor``).
        max_epochs: upper bound on epochs (``--max_epochs``).
    """

    def __init__(self, step_factor: float = 0.7, max_epochs: int = 60):
        self.step_factor, self.max_epochs = float(step_factor), int(max_epochs)
        self.base_loss: Optional[float] = None
        self.final_epochs = int(max_epochs)
        self.lr_stepped = False

    def step(self, epoch1: int, loss: float, optimizer: Optional[torch.optim.Optimizer] = None) -> bool:
        """Record the loss of 1-based epoch ``epoch1``; decay the lr of ``optimizer`` when due.

        Returns:
            True when training should stop after this epoch.
        """
        if epoch1 == 2:
            self.base_loss = float(loss)
        if not self.lr_stepped:
            if self.step_factor >= 1:
                self.lr_stepped = epoch1 == int(self.step_factor)
            elif self.base_loss is not None and loss < self.base_loss * self.step_factor:
                self.lr_stepped = True
                self.final_epochs = min(self.max_epochs, epoch1 + epoch1 // 2)
            if self.lr_stepped and optimizer is not None:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.1
        return epoch1 >= self.final_epochs

    def state_dict(self) -> Dict[str, object]:
        return {"base_loss": self.base_loss, "final_epochs": self.final_epochs, "lr_stepped": self.lr_stepped,
                "step_factor": self.step_factor, "max_epochs": self.max_epochs}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore the decision state. The optimizer's stored lr already carries the decay: unlike the original
        (which multiplies by 0.1 again on resume), nothing is decayed here."""
        self.base_loss = None if state["base_loss"] is None else float(state["base_loss"])
        self.final_epochs = int(state["final_epochs"])
        self.lr_stepped = bool(state["lr_stepped"])


class StepSchedule:
    """``StepLR(step_size, gamma=0.1)`` stepped after every epoch (QAConv 1.x and 2.0), with the
    :class:`AdaptiveSchedule` interface: the lr is multiplied by 0.1 after every ``step_size``-th epoch.

    Args:
        step_size: decay period in epochs (``--step_size``; <= 0: never).
        epochs: number of epochs (``--epochs``).
    """

    def __init__(self, step_size: int = 10, epochs: int = 15):
        self.step_size, self.final_epochs = int(step_size), int(epochs)

    def step(self, epoch1: int, loss: float, optimizer: Optional[torch.optim.Optimizer] = None) -> bool:
        """After 1-based epoch ``epoch1``: decay when due; True when training should stop."""
        if self.step_size > 0 and epoch1 % self.step_size == 0 and optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
        return epoch1 >= self.final_epochs

    def state_dict(self) -> Dict[str, object]:
        return {"step_size": self.step_size, "final_epochs": self.final_epochs}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Nothing to restore beyond the optimizer's stored lr (the decays so far are in it)."""


def pretrain_trials(model: torch.nn.Module, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loader, device: torch.device, reset: Callable[[], None], num_trials: int = 10,
                    pre_epochs: int = 1, max_steps: int = 2000, log: Callable[[str], None] = print,
                    progress: bool = True, **epoch_kwargs) -> Dict[str, float]:
    """QAConv 1.1/1.2 pre-training: several short trials from the same start, keep the best.

    Each trial trains up to ``pre_epochs`` epochs, at most ``max_steps - 1`` iterations in all (as the original's
    counter), from the initial state; its score is ``100 * acc - loss`` of its last epoch. Before each trial
    ``reset()`` restores the initial state (backbone snapshot, fresh neck, matcher and class memory); the
    optimizer's state (momentum) is cleared here. The best trial's model, criterion and optimizer states are
    loaded at the end.

    Args:
        model, criterion, optimizer, loader, device: as for :func:`train_one_epoch`.
        reset: callable restoring model and criterion to the initial state (in place).
        num_trials: trials (``--num_trials``).
        pre_epochs: epochs per trial (``--pre_epochs``).
        max_steps: iteration budget per trial (``--max_steps``).
        log: logging function.
        progress: tqdm bars.
        **epoch_kwargs: passed to :func:`train_one_epoch` (freeze_bn, amp, clip_value).
    Returns:
        {'trial', 'score', 'loss', 'acc'} of the best trial (1-based trial number).
    """
    best: Optional[Dict] = None
    opt_init = copy.deepcopy(optimizer.state_dict())
    for trial in range(1, num_trials + 1):
        reset()
        optimizer.load_state_dict(opt_init)  # same lrs, empty momentum buffers
        steps_left, stats = max_steps - 1, {"loss": float("nan"), "acc": 0.0}
        for epoch in range(pre_epochs):
            if steps_left <= 0:
                break
            stats = train_one_epoch(model, criterion, optimizer, loader, device, epoch, progress=progress,
                                    max_batches=min(steps_left, len(loader)), **epoch_kwargs)
            steps_left -= stats["iterations"] + stats["skipped"]
        score = stats["acc"] * 100 - stats["loss"]
        log(f"pre-training trial {trial}/{num_trials}: loss {stats['loss']:.3f} acc {stats['acc']:.2%} "
            f"score {score:.2f}")
        if best is None or score > best["score"]:
            best = {"trial": trial, "score": score, "loss": stats["loss"], "acc": stats["acc"],
                    "states": (copy.deepcopy(model.state_dict()), copy.deepcopy(criterion.state_dict()),
                               copy.deepcopy(optimizer.state_dict()))}
    assert best is not None, "num_trials must be >= 1"
    model.load_state_dict(best["states"][0])
    criterion.load_state_dict(best["states"][1])
    optimizer.load_state_dict(best["states"][2])
    log(f"pre-training: kept trial {best['trial']} (score {best['score']:.2f})")
    return {k: best[k] for k in ("trial", "score", "loss", "acc")}
