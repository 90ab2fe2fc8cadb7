"""A refer point fitted on predictions.csv holds for the served, full-precision scores."""

from __future__ import annotations

import numpy as np

from training.evaluate.thresholds import minimax_threshold, threshold_for_sensitivity


def test_a_point_fitted_on_rounded_csv_scores_keeps_its_sensitivity_at_full_precision() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=400)  # (N, 5) served probabilities
    positive = rng.random(400) < 0.3
    served = probs[:, 2:].sum(1)  # P(grade >= 2) as the service computes it
    csv = np.round(probs, 5)[:, 2:].sum(1)  # what predictions.csv gives back (5 decimals per class)
    for target in (0.8, 0.87, 0.9, 0.95):
        t = threshold_for_sensitivity(csv, positive, target)
        assert (served[positive] >= t).mean() >= target, target
        assert (csv[positive] >= t).mean() >= target


def test_the_minimax_point_is_the_lowest_domain_point_and_names_it() -> None:
    a = (np.array([0.9, 0.8, 0.7, 0.1]), np.array([True, True, True, False]))
    b = (np.array([0.5, 0.4, 0.3, 0.2]), np.array([True, True, False, False]))
    t, binding = minimax_threshold({"a": a, "b": b}, 1.0)
    assert binding == "b" and abs(t - 0.4) < 1e-4
