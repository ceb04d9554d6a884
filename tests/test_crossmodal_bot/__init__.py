"""Tests of the Bag-of-Tricks / cross-modality method folder."""
