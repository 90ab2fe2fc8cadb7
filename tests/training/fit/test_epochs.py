"""The validation score that picks a multi-dataset fundus model's best epoch."""

from __future__ import annotations

import numpy as np
import pytest

from retina.labels import DR_GRADES
from training.config import ConfigError
from training.fit.epochs import domain_referable_auc, referable_auc


def _logits(p_referable: np.ndarray) -> np.ndarray:
    """``(N, 5)`` logits whose P(grade >= 2) is ``p_referable`` (all of it on Moderate)."""
    p = np.stack([1 - p_referable, np.zeros_like(p_referable), p_referable, 0 * p_referable, 0 * p_referable], 1)
    return np.log(np.clip(p, 1e-9, 1))


def test_the_camera_shortcut_wins_the_pooled_auc_but_not_the_per_dataset_one() -> None:
    # dataset 1 (high prevalence) scores high throughout, dataset 0 low: inside each dataset the
    # score is noise, yet pooled, "which dataset" already ranks the referable eyes first.
    rng = np.random.default_rng(0)
    n = 400
    domains = np.r_[np.zeros(n, int), np.ones(n, int)]
    y = np.r_[(rng.random(n) < 0.2) * 2, (rng.random(n) < 0.7) * 2]
    score = np.r_[0.1 + 0.05 * rng.random(n), 0.6 + 0.05 * rng.random(n)]
    logits = _logits(score)
    pooled = referable_auc(logits, y, DR_GRADES)
    per_dataset = domain_referable_auc(logits, y, domains, DR_GRADES)
    assert pooled > 0.7
    assert abs(per_dataset - 0.5) < 0.08
    # a single dataset: the same as the pooled score
    assert domain_referable_auc(logits, y, None, DR_GRADES) == pytest.approx(pooled)


def test_a_dataset_without_both_classes_is_skipped() -> None:
    y = np.array([0, 2, 0, 2, 0, 0])
    domains = np.array([0, 0, 0, 0, 1, 1])  # dataset 1 has no referable eye
    logits = _logits(np.array([0.1, 0.9, 0.2, 0.8, 0.9, 0.9]))
    assert domain_referable_auc(logits, y, domains, DR_GRADES) == pytest.approx(1.0)


def test_it_needs_a_five_grade_model() -> None:
    with pytest.raises(ConfigError):
        domain_referable_auc(np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.zeros(4), ("a", "b"))
