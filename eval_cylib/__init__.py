"""Compiled (Cython) ranking evaluator, the fast twin of :mod:`common.eval.rank`'s NumPy protocols.

Build in place with ``make eval_cylib`` (``cd eval_cylib && ../.venv/bin/python setup.py build_ext --inplace``);
this produces ``eval_cylib/rank_cy.*.so``. The package is self-contained: it imports nothing from the repo.
"""
