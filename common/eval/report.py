"""Printed result tables (percent), one row per (model, test set)."""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

COLUMNS = (("rank1", "R1"), ("rank5", "R5"), ("rank10", "R10"), ("rank20", "R20"), ("mAP", "mAP"), ("mINP", "mINP"))


def results_table(rows: Iterable[Tuple[str, Dict]], title: str = "") -> str:
    """Format rows of evaluation results.

    Args:
        rows: (label, results) pairs; results hold fractions in [0, 1] under the keys of ``COLUMNS``
            (missing keys print as '-').
        title: optional first line.
    Returns:
        the table as text.
    """
    rows = list(rows)
    width = max([len(label) for label, _ in rows] + [10])
    head = f"{'model / test set':<{width}} | " + " | ".join(f"{c:>6}" for _, c in COLUMNS)
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for label, res in rows:
        cells = []
        for key, _ in COLUMNS:
            v = res.get(key)
            cells.append(f"{100 * v:6.1f}" if isinstance(v, (int, float)) else f"{'-':>6}")
        lines.append(f"{label:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)
