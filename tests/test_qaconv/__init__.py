"""Tests of the QAConv / QAConv-GS method folder."""
