"""Metrics (sklearn-backed), bootstrap intervals, ECE and temperature scaling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from retina.labels import DR_GRADES, OCT_CLASSES
from training.evaluate.calibration import ece, fit_temperature, nll, softmax
from training.evaluate.metrics import bootstrap_ci, compute_metrics, sensitivity_at_specificity

KEYS = {
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "per_class",
    "confusion_matrix",
    "roc_auc",
    "accuracy_ci95",
    "balanced_accuracy_ci95",
    "macro_f1_ci95",
    "ece",
    "n",
    "n_patients",
}


def _toy(n: int = 120, k: int = 4, noise: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, noise, (n, k))
    logits[np.arange(n), y] += 2.0
    groups = np.array([f"p{i // 3}" for i in range(n)])  # 3 images per patient
    return softmax(logits), y, groups


def test_metrics_match_sklearn_and_have_every_key():
    probs, y, g = _toy()
    m = compute_metrics(probs, y, OCT_CLASSES, groups=g, n_bootstrap=100)
    assert KEYS <= set(m)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["roc_auc"]["per_class"]["DME"] == pytest.approx(roc_auc_score(y == 1, probs[:, 1]))
    assert np.asarray(m["confusion_matrix"]).sum() == m["n"] == 120
    assert m["n_patients"] == 40
    pc = m["per_class"]["CNV"]
    assert set(pc) == {"precision", "recall", "f1", "support", "sensitivity", "specificity"}
    assert pc["sensitivity"] == pytest.approx(pc["recall"])
    assert "referable" not in m  # OCT has no DR grades
    json.dumps(m, allow_nan=False)  # plain, strict-JSON types only


def test_bootstrap_ci_contains_the_point_estimate():
    probs, y, g = _toy(noise=1.5)
    m = compute_metrics(probs, y, OCT_CLASSES, groups=g, n_bootstrap=300)
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = m[f"{key}_ci95"]
        assert lo <= m[key] <= hi
        assert hi - lo > 0.01  # 120 noisy predictions: the interval cannot be a point
    assert m["bootstrap"]["unit"] == "patient"


def test_bootstrap_is_seeded_and_patient_level():
    y = np.array([1, 1, 1, 1, 0, 0])
    g = np.array(["a", "a", "a", "a", "b", "c"])  # patient a has 4 of 6 images
    ci1 = bootstrap_ci(lambda i: float(y[i].mean()), 6, g, n_boot=200, seed=1)
    ci2 = bootstrap_ci(lambda i: float(y[i].mean()), 6, g, n_boot=200, seed=1)
    assert ci1 == ci2
    # Resampling patients: a draw without patient a has mean 0; per-image resampling almost never would.
    assert ci1[0] == 0.0


def test_absent_class_is_nan_safe():
    probs, y, g = _toy()
    keep = y != 2
    m = compute_metrics(probs[keep], y[keep], OCT_CLASSES, groups=g[keep], n_bootstrap=20)
    assert m["roc_auc"]["per_class"]["DRUSEN"] is None  # undefined, not 0.5 and not NaN in JSON
    assert m["roc_auc"]["n_classes_defined"] == 3
    assert m["roc_auc"]["macro"] is not None
    assert m["per_class"]["DRUSEN"]["support"] == 0
    json.dumps(m, allow_nan=False)


def test_dr_grade_models_get_referable_and_any_dr():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(5), 20)
    logits = rng.normal(0, 1, (100, 5))
    logits[np.arange(100), y] += 1.5
    probs = softmax(logits)
    m = compute_metrics(probs, y, DR_GRADES, n_bootstrap=50)
    ref = m["referable"]
    assert ref["roc_auc"] == pytest.approx(roc_auc_score(y >= 2, probs[:, 2:].sum(1)))
    assert m["any_dr"]["roc_auc"] == pytest.approx(roc_auc_score(y >= 1, probs[:, 1:].sum(1)))
    lo, hi = ref["roc_auc_ci95"]
    assert lo <= ref["roc_auc"] <= hi
    assert ref["specificity_at_threshold"] >= 0.9
    score = probs[:, 2:].sum(1)
    neg = score[y < 2]
    assert (neg < ref["threshold"]).mean() == pytest.approx(ref["specificity_at_threshold"])
    assert 0 <= ref["sensitivity_at_90_specificity"] <= 1


def test_sensitivity_at_specificity_on_a_known_curve():
    y = np.array([0] * 10 + [1] * 10)
    s = np.concatenate([np.linspace(0, 0.5, 10), np.linspace(0.45, 1, 10)])
    r = sensitivity_at_specificity(y, s, 0.9)
    assert r["specificity"] >= 0.9
    assert r["sensitivity"] == pytest.approx((s[y == 1] >= r["threshold"]).mean())


def test_ece_is_zero_when_confidence_equals_accuracy():
    probs = np.array([[0.8, 0.2]] * 10)
    y = np.array([0] * 8 + [1] * 2)  # 80% correct at 80% confidence
    assert ece(probs, y) == pytest.approx(0.0, abs=1e-12)
    assert ece(np.array([[1.0, 0.0]] * 4), np.array([1, 1, 1, 1])) == pytest.approx(1.0)


def test_temperature_scaling_fixes_an_overconfident_toy():
    rng = np.random.default_rng(0)
    n, k = 400, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.0
    logits *= 5  # overconfident: same argmax, far too sharp
    cal = fit_temperature(logits, y)
    assert cal["temperature"] > 2
    assert cal["nll_after"] < cal["nll_before"]
    assert cal["ece_val_after"] < cal["ece_val_before"]
    assert cal["nll_after"] == pytest.approx(nll(logits, y, cal["temperature"]))


def test_temperature_is_kept_at_one_when_it_does_not_help():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    # Sample labels from the model's own probabilities: perfectly calibrated at T=1.
    logits = rng.normal(0, 1, (300, 3))
    p = softmax(logits)
    y = np.array([rng.choice(3, p=row) for row in p])
    cal = fit_temperature(logits, y)
    assert cal["nll_after"] <= cal["nll_before"]
    if cal["temperature"] != 1.0:  # a fitted T is kept only when it lowers val NLL
        assert cal["nll_after"] < cal["nll_before"]
    same = fit_temperature(np.zeros((5, 3)), np.array([0, 1, 2, 0, 1]))  # T cannot change uniform logits
    assert same["temperature"] == 1.0
