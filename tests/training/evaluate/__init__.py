"""Tests of ``training.evaluate``."""
