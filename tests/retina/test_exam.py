"""The exam rule (retina/exam.py) and laterality (retina/laterality.py), without models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from retina.assessment import Assessment
from retina.exam import ExamItem, assess_exam
from retina.laterality import from_dicom, from_filename, normalise, resolve, split_form
from retina.referral import ADVICE
from tests.dicom_helpers import make_dicom


def _assessment(level: str, p: float, label: str = "x") -> Assessment:
    referral: dict[str, Any] = {"level": level, "advice": ADVICE.get(level, level), "reason": f"p={p}"}
    referral |= {"probability": p, "threshold": 0.5, "note": "n"}
    return Assessment("m", "1", "fundus", True, label, p, {label: p}, 0.0, None, referral, None)


def _ungradable() -> Assessment:
    referral = {"level": "ungradable", "advice": ADVICE["ungradable"], "reason": "too dark"}
    return Assessment("m", "1", "fundus", False, None, None, None, 0.0, None, referral, None)


def _item(i: int, eye: str, a: Assessment | None, error: tuple[str, str] | None = None) -> ExamItem:
    return ExamItem(i, f"f{i}", eye, "form", "image", a, error)  # type: ignore[arg-type]


def test_each_eye_takes_its_most_urgent_image_and_the_patient_the_most_urgent_eye() -> None:
    exam = assess_exam(
        [
            _item(0, "right", _assessment("rescreen_12_months", 0.2)),
            _item(1, "right", _assessment("refer", 0.7, "Moderate")),
            _item(2, "left", _assessment("rescreen_12_months", 0.1)),
            _item(3, "left", _assessment("rescreen_12_months", 0.3, "Mild")),
        ]
    )
    right, left = exam.eyes
    assert (right.level, right.deciding, right.label) == ("refer", 1, "Moderate")
    assert (left.level, left.deciding, left.label) == ("rescreen_12_months", 3, "Mild")  # higher p at same level
    assert exam.patient["level"] == "refer" and exam.deciding_eye == "right"
    body = exam.to_dict()
    assert body["patient"]["deciding_eye"] == "right" and [e["n_gradable"] for e in body["eyes"]] == [2, 2]


def test_an_eye_without_a_gradable_image_is_ungradable_and_outranks_no_referral() -> None:
    exam = assess_exam(
        [
            _item(0, "right", _assessment("rescreen_12_months", 0.1)),
            _item(1, "left", _ungradable()),
            _item(2, "left", None, ("not_retinal_image", "not a retina")),
        ]
    )
    right, left = exam.eyes
    assert right.level == "rescreen_12_months"
    assert left.level == "ungradable" and left.deciding is None and left.referral["advice"] == ADVICE["ungradable_eye"]
    assert "not_retinal_image" in left.referral["reason"]
    assert exam.patient["level"] == "ungradable" and exam.deciding_eye == "left"


def test_a_referral_outranks_an_ungradable_eye_and_a_missing_eye_is_ungradable() -> None:
    exam = assess_exam([_item(0, "left", _assessment("urgent", 0.6))])
    right, left = exam.eyes
    assert right.level == "ungradable" and right.images == () and "no image" in right.referral["reason"]
    assert exam.patient["level"] == "urgent" and exam.deciding_eye == "left"


@pytest.mark.parametrize(
    ("value", "eye"),
    [("OD", "right"), (" os ", "left"), ("Left", "left"), ("R", "right"), ("B", None), ("", None), (None, None)],
)
def test_normalise(value: str | None, eye: str | None) -> None:
    assert normalise(value) == eye


@pytest.mark.parametrize(
    ("name", "eye"),
    [
        ("10_left.jpeg", "left"),
        ("1005_right.jpg", "right"),
        ("IMG-OD-1.png", "right"),
        ("scan.os.dcm", "left"),
        ("cross.jpg", None),
        ("IDRiD_001-grade3.jpeg", None),
        ("left_and_right.png", None),
        (None, None),
    ],
)
def test_from_filename(name: str | None, eye: str | None) -> None:
    assert from_filename(name) == eye


def test_from_dicom_and_the_order_of_sources() -> None:
    data = make_dicom(np.zeros((8, 8), np.uint8), ImageLaterality="L")
    assert from_dicom(data) == "left"
    assert from_dicom(make_dicom(np.zeros((8, 8), np.uint8))) is None
    assert from_dicom(b"not dicom") is None
    assert resolve("OD", data, "x_left.jpg", True) == ("right", "form")
    assert resolve(None, data, "x_right.jpg", True) == ("left", "dicom")
    assert resolve(None, b"", "x_right.jpg", False) == ("right", "filename")
    assert resolve("sideways", data, "x_right.jpg", True) == (None, None)  # a bad form value is not guessed over


def test_split_form() -> None:
    assert split_form(["right", "left"], 3) == ["right", "left", None]
    assert split_form(["right,left"], 2) == ["right", "left"]
    assert split_form(None, 1) == [None]
