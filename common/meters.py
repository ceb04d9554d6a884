"""Running averages for training logs."""
from __future__ import annotations

from typing import Dict


class AverageMeter:
    """Running sum / count / mean of a scalar."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.val, self.sum, self.count = 0.0, 0.0, 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0


class MeterDict:
    """A dict of :class:`AverageMeter` keyed by name, created on first update."""

    def __init__(self):
        self.meters: Dict[str, AverageMeter] = {}

    def update(self, n: int = 1, **values: float) -> None:
        for k, v in values.items():
            self.meters.setdefault(k, AverageMeter()).update(v, n)

    def averages(self) -> Dict[str, float]:
        return {k: m.avg for k, m in self.meters.items()}

    def __str__(self) -> str:
        return " ".join(f"{k} {m.val:.4f} ({m.avg:.4f})" for k, m in self.meters.items())


def format_stats(stats: Dict[str, float]) -> str:
    """``loss 1.234 acc 56.78% lr 3.5e-04 ...``: accuracies (``acc``, ``*_acc``) as percentages, as every method
    prints them; integers as they are; other numbers with 4 significant digits."""
    parts = []
    for k, v in stats.items():
        if k == "acc" or k.endswith("_acc"):
            parts.append(f"{k} {v:.2%}")
        elif isinstance(v, int):
            parts.append(f"{k} {v}")
        else:
            parts.append(f"{k} {v:.4g}")
    return " ".join(parts)
