"""Referral advice: operating points from the checkpoint, setting overrides, not-informative models, labels
that never contradict the advice."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from backend.app.core.config import Settings
from retina.labels import DR_GRADES, OCT_CLASSES
from retina.referral import (
    consistent_label,
    informative,
    label_chooser,
    referral_for,
    served_thresholds,
)
from training.evaluate.thresholds import SCORE_ROUNDING, sens_spec, threshold_for_sensitivity


def meta(points: dict | None = None, ci: list[float] | None = None, k: int = 5) -> SimpleNamespace:
    metrics = {"cv": {"balanced_accuracy_ci95": ci}} if ci else {}
    return SimpleNamespace(
        extra={"operating_points": points or {}},
        metrics=metrics,
        class_names=list(DR_GRADES if k == 5 else OCT_CLASSES),
    )


FUNDUS = meta({"refer": {"threshold": 0.2}})
NO_DR_LIKELIEST = np.array([0.55, 0.2, 0.15, 0.06, 0.04])  # P(grade >= 2) = 0.25


def test_the_checkpoint_operating_point_is_served() -> None:
    r = referral_for("fundus", DR_GRADES, NO_DR_LIKELIEST, Settings(), FUNDUS)
    assert r is not None and r["level"] == "refer" and r["threshold"] == pytest.approx(0.2)
    assert "0.25 >= 0.20" in r["reason"]
    assert served_thresholds("fundus", DR_GRADES, Settings(), FUNDUS) == {"refer": 0.2, "urgent": 0.5}


def test_a_setting_overrides_the_operating_point() -> None:
    r = referral_for("fundus", DR_GRADES, NO_DR_LIKELIEST, Settings(referral_fundus_refer=0.5), FUNDUS)
    assert r is not None and r["level"] == "rescreen_12_months" and r["threshold"] == 0.5


def test_without_an_operating_point_the_threshold_is_one_half() -> None:
    r = referral_for("fundus", DR_GRADES, NO_DR_LIKELIEST, Settings(), meta())
    assert r is not None and r["level"] == "rescreen_12_months" and r["threshold"] == 0.5


def test_label_never_contradicts_the_referral() -> None:
    r = referral_for("fundus", DR_GRADES, NO_DR_LIKELIEST, Settings(), FUNDUS)
    idx = consistent_label("fundus", DR_GRADES, NO_DR_LIKELIEST, r)
    assert DR_GRADES[idx] == "Moderate"  # the likeliest referable grade, not "No DR" next to "Refer"
    low = np.array([0.3, 0.5, 0.1, 0.05, 0.05])  # P(>= 2) = 0.2 < 0.5: rescreen, label among grades 0-1
    r2 = referral_for("fundus", DR_GRADES, low, Settings(), meta())
    assert r2 is not None and DR_GRADES[consistent_label("fundus", DR_GRADES, low, r2)] == "Mild"
    oct_p = np.array([0.3, 0.25, 0.05, 0.4])  # NORMAL likeliest, but P(CNV) + P(DME) = 0.55 >= 0.5: urgent
    r3 = referral_for("oct", OCT_CLASSES, oct_p, Settings(), meta(k=4))
    assert r3 is not None and r3["level"] == "urgent"
    assert OCT_CLASSES[consistent_label("oct", OCT_CLASSES, oct_p, r3)] == "CNV"
    assert label_chooser("oct", OCT_CLASSES, Settings(), meta(k=4))(oct_p) == 0


def test_a_model_at_chance_gives_no_advice() -> None:
    chance = meta(ci=[0.16, 0.51], k=4)
    assert not informative(chance)
    r = referral_for("oct", OCT_CLASSES, np.array([0.9, 0.05, 0.03, 0.02]), Settings(), chance)
    assert r is not None and r["level"] == "not_informative" and r["threshold"] is None
    assert informative(meta(ci=[0.80, 0.88], k=4))
    assert informative(meta())  # no interval: as configured


def test_threshold_for_sensitivity_keeps_the_target_on_the_fitting_set() -> None:
    rng = np.random.default_rng(0)
    pos = rng.random(400) < 0.3
    score = np.where(pos, rng.beta(4, 2, 400), rng.beta(2, 4, 400))
    t = threshold_for_sensitivity(score, pos, 0.87)
    assert (score[pos] >= t).mean() >= 0.87
    # the largest such threshold, but for the margin the 5-decimal predictions.csv needs
    assert (score[pos] >= np.nextafter(t + SCORE_ROUNDING, 1)).mean() < 0.87
    r = sens_spec(score, pos, t, n_boot=200)
    assert r["sensitivity"] >= 0.87 and r["sensitivity_ci95"][0] <= r["sensitivity"] <= r["sensitivity_ci95"][1]
    assert 0 < r["specificity"] < 1 and r["n_positive"] == int(pos.sum())


def test_operating_point_fits_on_several_files_and_raw_photos_only(tmp_path) -> None:
    from PIL import Image

    from training.evaluate.thresholds import read_predictions

    rows = []
    for i, (size, label) in enumerate([((256, 256), "Moderate"), ((768, 512), "Moderate"), ((768, 512), "No DR")]):
        p = tmp_path / f"{i}.jpeg"
        Image.new("RGB", size).save(p)
        rows.append(f"{p},{label},{label},0.5,0.1,{0.1 * (i + 1)},0.2,0.1")
    head = "path,label,pred,p_No DR,p_Mild,p_Moderate,p_Severe,p_Proliferative"
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("\n".join([head, *rows[:2]]) + "\n")
    b.write_text("\n".join([head, rows[2]]) + "\n")
    classes = ("Moderate", "Severe", "Proliferative")
    score, pos = read_predictions([a, b], classes)
    assert len(score) == 3 and pos.tolist() == [True, True, False]
    score, pos = read_predictions([a, b], classes, raw_only=True)  # the 256-px crop is left out
    assert pos.tolist() == [True, False] and score == pytest.approx([0.5, 0.6])


def test_every_domain_point_keeps_the_target_on_each_domain_and_is_the_largest_such() -> None:
    from training.evaluate.thresholds import minimax_threshold

    rng = np.random.default_rng(1)
    domains = {}
    for name, shift in [("low", 0.0), ("high", 0.25)]:  # a camera whose probabilities run high
        pos = rng.random(300) < 0.4
        score = np.clip(np.where(pos, rng.beta(4, 2, 300), rng.beta(2, 4, 300)) + shift, 0, 1)
        domains[name] = (score, pos)
    t, binding = minimax_threshold(domains, 0.85)
    for score, pos in domains.values():
        assert (score[pos] >= t).mean() >= 0.85
    assert binding == "low"  # the low-running camera binds: a higher point would miss its positives
    s, y = domains[binding]
    assert (s[y] >= np.nextafter(t + SCORE_ROUNDING, 1)).mean() < 0.85
    pooled = threshold_for_sensitivity(
        np.concatenate([d[0] for d in domains.values()]), np.concatenate([d[1] for d in domains.values()]), 0.85
    )
    assert t <= pooled  # pooling lets the high camera's positives carry the low one's misses


def test_patients_are_resampled_together() -> None:
    from training.evaluate.thresholds import patient_of

    assert patient_of("/x/1005_left.jpeg") == patient_of("/y/1005_right.jpeg") == "1005"
    assert patient_of("IDRiD_012.jpeg") == "IDRiD_012"
    score = np.array([0.9, 0.8, 0.2, 0.1])
    pos = np.array([True, True, False, False])
    r = sens_spec(score, pos, 0.5, n_boot=50, groups=np.array(["a", "a", "b", "b"]))
    assert r["n_patients"] == 2 and r["sensitivity"] == 1.0 and r["specificity"] == 1.0


def test_every_block_carries_its_headline_and_the_one_disclaimer() -> None:
    from retina.referral import DISCLAIMER, HEADLINES, ReferralThresholds, ungradable_referral

    blocks = [
        referral_for("fundus", DR_GRADES, NO_DR_LIKELIEST, ReferralThresholds(), FUNDUS),
        referral_for("fundus", DR_GRADES, NO_DR_LIKELIEST, ReferralThresholds(), meta()),
        referral_for("oct", OCT_CLASSES, np.array([0.6, 0.1, 0.1, 0.2]), ReferralThresholds(), meta(k=4)),
        referral_for("fundus", DR_GRADES, NO_DR_LIKELIEST, ReferralThresholds(), meta(ci=[0.1, 0.3])),
        ungradable_referral(["too dark"]),
    ]
    for block in blocks:
        assert block is not None
        assert block["headline"] == HEADLINES[block["level"]] and block["note"] == DISCLAIMER
    levels = {b["level"] for b in blocks if b}
    assert levels == {"refer", "rescreen_12_months", "urgent", "not_informative", "ungradable"}


def test_the_operating_point_sentence_names_the_rule_and_its_figures() -> None:
    from retina.referral import operating_point_text

    point = {"threshold": 0.4, "fitted_on": "OCT validation", "fit": {"sensitivity": 0.9, "n": 100, "n_positive": 40}}
    assert operating_point_text("oct", "routine", point, 0.4) == (
        "Routine referral when P(CNV) + P(DME) + P(DRUSEN) >= 0.400, chosen on OCT validation: "
        "sensitivity 0.90 (n = 100, 40 positive)."
    )
    assert operating_point_text("oct", "urgent", None, None) == ""
