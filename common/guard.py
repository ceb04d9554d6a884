"""Divergence: a run whose loss stays non-finite stops with a message instead of training (and saving) NaN.

Trainers skip the optimiser step of a batch whose loss is not finite and tell the guard; after ``patience``
consecutive such steps the guard raises :class:`Diverged`, before the epoch's checkpoint is written, so the last
good checkpoint stays the newest one. :func:`check_finite_parameters` catches weights that went non-finite even
though the loss did not (yet).
"""
from __future__ import annotations

import math

import torch

from common.errors import ReidError


class Diverged(ReidError):
    """Training produced non-finite losses or weights."""


_FIX = ("lower --lr (or enable gradient clipping where the method has it) and resume from the last checkpoint, "
        "or start a new run with --run-name")


class DivergenceGuard:
    """Counts consecutive non-finite losses.

    Args:
        patience: consecutive non-finite steps tolerated (the steps are skipped); one more raises.
    """

    def __init__(self, patience: int = 10):
        self.patience, self.bad, self.total_bad = max(1, int(patience)), 0, 0

    def ok(self, loss, where: str = "") -> bool:
        """True if ``loss`` (a float or a tensor) is finite; otherwise count it and raise after ``patience``."""
        value = float(loss.detach().float().sum()) if torch.is_tensor(loss) else float(loss)
        if math.isfinite(value):
            self.bad = 0
            return True
        self.bad += 1
        self.total_bad += 1
        if self.bad >= self.patience:
            raise Diverged(f"the training loss was not finite ({value}) for {self.bad} consecutive steps"
                           + (f" ({where})" if where else "") + "; training stopped, nothing was saved for "
                           "this epoch (the last good checkpoint is kept)", fix=_FIX)
        return False


def check_finite_parameters(*modules: torch.nn.Module, where: str = "") -> None:
    """Raise :class:`Diverged` naming the first parameter or buffer that holds NaN or inf."""
    for module in modules:
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise Diverged(f"weight {name} is not finite" + (f" ({where})" if where else "")
                               + "; training stopped before saving it (the last good checkpoint is kept)", fix=_FIX)
