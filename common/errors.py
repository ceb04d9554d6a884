"""Expected errors and how a script reports them.

A :class:`ReidError` is bad input a user can fix (a flag, a dataset tree, a weights file, a resume file). Every
``main.py`` ends with ``run_main(main)``: an expected error is printed as one block (what, where, how to fix),
appended to the run's ``log.txt`` when a run folder exists, and the process exits with status 2 and no traceback.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Optional


class ReidError(Exception):
    """An error the user can fix.

    Args:
        what: what is wrong, naming the flag / file / value.
        fix: how to fix it (one or more sentences).
        where: the file or folder concerned, if any.
    """

    def __init__(self, what: str, fix: str = "", where: str = ""):
        self.what, self.fix, self.where = what, fix, where
        super().__init__(self.block())

    def block(self) -> str:
        lines = [f"error: {self.what}"]
        if self.where:
            lines.append(f"where: {self.where}")
        if self.fix:
            lines.append(f"fix:   {self.fix}")
        return "\n".join(lines)


class PeerError(ReidError):
    """Under torchrun: rank 0 failed with this error (and printed it); the other ranks exit quietly with code 2."""


def _expected_types():
    types = [ReidError]
    try:  # these carry their own full messages (expected tree, file name and URL, ...)
        from common.datasets.base import DatasetError
        from common.weights import PretrainedWeightsNotFound
        types += [DatasetError, PretrainedWeightsNotFound]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def format_error(e: BaseException) -> str:
    return e.block() if isinstance(e, ReidError) else f"error: {e}"


def report_error(e: BaseException, logger_name: str = "reid") -> None:
    """Print an expected error as one block to stderr and to every file handler of the logger (the run's log.txt);
    marks it reported, so that :func:`run_main` does not print it twice."""
    text = format_error(e)
    logger: Optional[logging.Logger] = logging.getLogger(logger_name)
    for h in list(logger.handlers):
        if isinstance(h, logging.FileHandler):
            h.stream.write(text + "\n")
            h.flush()
    print(text, file=sys.stderr, flush=True)
    e.reported = True


def run_main(main: Callable, argv=None, logger_name: str = "reid") -> None:
    """Call ``main(argv)``; print an expected error as one block and exit 2 (no traceback).

    The block also goes to every file handler of the ``reid`` logger (the run's ``log.txt``) when one is open.
    """
    try:
        main(argv)
    except PeerError:
        sys.exit(2)
    except _expected_types() as e:
        if not getattr(e, "reported", False):
            report_error(e, logger_name)
        sys.exit(2)


class UnknownName(ReidError, ValueError):
    """A key that is not one of the known ones (dataset, architecture); the message lists the choices."""

    def __init__(self, what: str, fix: str = "", where: str = ""):
        super().__init__(what, fix, where)
