"""retina.figures: the one reading of a checkpoint's headline figures (card first, training record as fallback)."""

from __future__ import annotations

from retina.figures import figure_text, model_figures, split_kind

CAL = {"method": "temperature", "temperature": 0.8, "ece_val_before": 0.07, "ece_val_after": 0.05}
CARD = {
    "evaluations": {
        "test": {
            "title": "Held-out EyePACS test split (742 images): never trained on",
            "n": 742,
            "n_patients": 371,
            "accuracy": 0.72506,
            "accuracy_ci95": [0.6859, 0.7614],
            "referable_roc_auc": 0.7531,
            "referable_roc_auc_ci95": [0.7015, 0.8027],
            "macro_f1": float("nan"),  # not finite: left out, never printed as "nan"
            "ece": 0.03865,
        },
        "idrid": {"title": "IDRiD held-out part: 58 raw photos", "n": 58, "n_patients": 58, "accuracy": 0.569},
        "empty": {"title": "nothing stored", "n": 3},
    }
}
# The training run's layout (training/evaluate/metrics.py), with numbers that differ from the card's.
TRAINING = {
    "val": {"accuracy": 0.73, "n": 800},
    "test": {"accuracy": 0.71375, "referable": {"roc_auc": 0.79, "roc_auc_ci95": [0.75, 0.83]}, "n": 800},
}


def test_figure_text_is_the_card_format() -> None:
    assert figure_text(0.92053, [0.90044, 0.94032]) == "0.921 [0.900, 0.940]"
    assert figure_text(0.5) == figure_text(0.5, [0.1]) == "0.500"
    assert figure_text(None) == figure_text(float("inf")) == figure_text(True) == "n/a"


def test_the_card_is_the_source_when_present() -> None:
    evals = model_figures(CARD, TRAINING, CAL)
    assert [e.name for e in evals] == ["test", "idrid"]  # card order; a set without figures dropped
    test = evals[0]
    assert test.heading == "Test split (742 images, 371 patients)"
    assert [(f.key, f.text) for f in test.figures] == [
        ("accuracy", "0.725 [0.686, 0.761]"),
        ("referable_roc_auc", "0.753 [0.702, 0.803]"),
        ("ece", "0.039"),
    ]
    assert test.figures[-1].label == "ECE after temperature scaling"
    assert evals[1].kind == "held-out" and evals[1].short_name == "IDRiD held-out part"
    assert "0.714" not in str([e.to_dict() for e in evals])  # the training record is not read


def test_training_record_is_the_fallback_and_cv_hides_its_leftover_val() -> None:
    evals = model_figures({"limits": []}, TRAINING, {})
    assert [e.heading for e in evals] == ["Test split (800 images)", "Validation split (800 images)"]
    assert [(f.key, f.text) for f in evals[0].figures] == [
        ("accuracy", "0.714"),
        ("referable_roc_auc", "0.790 [0.750, 0.830]"),
    ]
    cv = model_figures(None, {"val": {"accuracy": 0.1}, "cv": {"balanced_accuracy": 0.9, "ece": 0.02}}, {})
    assert [e.name for e in cv] == ["cv"]
    assert cv[0].figures[-1].label == "ECE"  # no temperature: not called "after temperature scaling"
    assert model_figures(None, {"note": "random weights"}, {}) == []


def test_split_kind() -> None:
    assert [split_kind(n) for n in ("cv", "test", "val", "val_idrid", "external")] == [
        "cv",
        "test",
        "validation",
        "validation",
        "held-out",
    ]
