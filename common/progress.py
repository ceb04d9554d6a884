"""Progress display: a tqdm bar on a terminal, nothing (the caller logs plain lines) when output is redirected.

Captured logs (CI, ``nohup``, ``| tee``) then hold whole lines only, never the carriage-return fragments of a bar.
"""
from __future__ import annotations

import os
import sys

from tqdm import tqdm


def interactive(progress: bool = True) -> bool:
    """True when a bar should be drawn: ``progress`` is on, stderr is a terminal and this is rank 0 (torchrun)."""
    if os.environ.get("RANK", "0") not in ("", "0"):
        return False
    try:
        return bool(progress) and sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def bar(total: int = None, desc: str = "", progress: bool = True, iterable=None, **kwargs) -> tqdm:
    """A tqdm bar that is disabled unless :func:`interactive`; same arguments as ``tqdm``."""
    return tqdm(iterable, total=total, desc=desc, disable=not interactive(progress), leave=False,
                dynamic_ncols=True, **kwargs)
