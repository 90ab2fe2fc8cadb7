"""Tests of ``training.fit``."""
