"""Tests of ``training.sites``."""
