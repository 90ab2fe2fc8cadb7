"""training.evaluate.exams on a synthetic predictions.csv: pairs eyes by patient and scores the exam rule."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

from retina.labels import DR_GRADES
from training.evaluate.exams import evaluate_exams, read_rows


def _write(path: Path, rows: list[tuple[str, str, list[float]]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", *(f"p_{c}" for c in DR_GRADES)])
        for name, label, probs in rows:
            w.writerow([f"train/{name}.jpeg", label, *probs])
    return path


def test_most_urgent_eye_finds_the_patient_a_mean_would_miss(tmp_path: Path) -> None:
    healthy, sick = [0.9, 0.05, 0.03, 0.01, 0.01], [0.1, 0.1, 0.7, 0.05, 0.05]
    path = _write(
        tmp_path / "predictions.csv",
        [
            ("1_left", "No DR", healthy),
            ("1_right", "Moderate", [0.5, 0.05, 0.4, 0.03, 0.02]),  # P(>=2) 0.45: refer at 0.3, mean 0.25
            ("2_left", "No DR", healthy),
            ("2_right", "No DR", healthy),
            ("3_left", "Moderate", sick),
            ("4_right", "No DR", healthy),  # one eye only: left out
        ],
    )
    # Only what grade() and the referral read: classes, task, version, operating points.
    points = {"refer": {"threshold": 0.3}, "urgent": {"threshold": 0.9}}
    meta = SimpleNamespace(
        class_names=list(DR_GRADES), task="fundus", version="1", metrics={}, extra={"operating_points": points}
    )
    result = evaluate_exams(read_rows([path]), meta)
    assert result["patients_with_both_eyes"] == 2
    assert result["per_patient_most_urgent_eye"]["sensitivity"] == 1.0
    assert result["per_patient_mean_of_eyes"]["sensitivity"] == 0.0
    assert result["patients_with_exactly_one_referable_eye"] == 1
