"""Thin shared core of the re-ID monorepo: datasets, data pipeline, evaluation and run hygiene.

``common`` never imports a method folder (``qaconv``, ``san``, ``mudeep``, ``crossmodal_bot``, ``mprd``);
``tests/test_common/test_layering.py`` enforces it.
"""

__version__ = "0.1.0"
