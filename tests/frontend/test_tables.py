"""The pure tables of the UI (``frontend.tables``, ``frontend.uploads``), without Streamlit: model figures,
the batch results table, the exam's image rows, upload screening."""

from __future__ import annotations

import pandas as pd

from frontend import tables
from frontend.answers import GateInfo, Prediction, Referral
from frontend.catalog import auto_model
from frontend.errors import BackendError
from frontend.exam_answer import ErrorBody, ExamImage
from frontend.model_info import ModelInfo
from frontend.uploads import Upload, screen_uploads
from tests.frontend.fake_backend import DARK_REASONS, DR, HEADLINES, NOTE, OCT

TRAINING_METRICS = {
    "val": {
        "accuracy": 0.8,
        "accuracy_ci95": [0.61, 0.93],
        "balanced_accuracy": 0.75,
        "macro_f1": 0.7,
        "roc_auc": {"per_class": {"CNV": 0.9}, "macro": 0.88},
        "confusion_matrix": [[3, 1], [0, 4]],
        "ece": 0.05,
        "n": 20,
        "n_patients": 9,
    },
    "test": {"accuracy": 0.9, "macro_f1": 0.85, "n": 30, "n_patients": None},
    "best_epoch": 7,
}


def test_headline_metrics_test_first_with_ci() -> None:
    found = tables.headline_metrics(TRAINING_METRICS)
    assert [t for t, _ in found] == ["Test (n=30)", "Validation (n=20, 9 patients)"]
    test, val = (dict(zip(f["metric"], f["value"], strict=True)) for _, f in found)
    assert test == {"Accuracy": "0.900", "Macro F1": "0.850"}
    assert val["Accuracy"] == "0.800 (0.61-0.93)"
    assert val["ROC AUC (macro)"] == "0.880"
    assert val["Calibration error (ECE)"] == "0.050"


def test_headline_metrics_prefer_cross_validation() -> None:
    metrics = {
        "val": {"accuracy": 0.14, "n": 7},
        "cv": {"balanced_accuracy": 0.325, "balanced_accuracy_ci95": [0.16, 0.51], "n": 46, "n_patients": 27},
    }
    found = tables.headline_metrics(metrics)
    assert [t for t, _ in found] == ["Cross-validation (n=46, 27 patients)"]
    assert found[0][1].iloc[0].tolist() == ["Balanced accuracy", "0.325 (0.16-0.51)"]


def test_headline_metrics_fallbacks() -> None:
    [(title, frame)] = tables.headline_metrics({"note": "random weights", "test_accuracy": 0.5})
    assert title == "Metrics"
    assert dict(zip(frame["metric"], frame["value"], strict=True)) == {
        "note": "random weights",
        "test_accuracy": "0.500",
    }
    assert tables.headline_metrics({}) == []


def test_flatten_metrics_drops_matrices() -> None:
    flat = tables.flatten_metrics(TRAINING_METRICS)
    assert flat["val.roc_auc.per_class.CNV"] == 0.9
    assert flat["test.n_patients"] == "None"
    assert not any(k.startswith("val.confusion_matrix") or k.endswith("_ci95") for k in flat)


def _ref(level: str) -> Referral:
    return Referral(level=level, headline=HEADLINES[level], advice=f"advice for {level}", note=NOTE)


def _dark(model: str = "m", task: str = "oct") -> Prediction:
    gate = GateInfo("oct", gradable=False, reasons=tuple(DARK_REASONS))
    return Prediction(model, "1", task, None, None, None, gradable=False, referral=_ref("ungradable"), gate=gate)


def test_results_table_rows_and_errors() -> None:
    model = ModelInfo(id="m", task="oct", classes=tuple(OCT))
    probs = dict(zip(OCT, [0.1, 0.2, 0.3, 0.4], strict=True))
    pred = Prediction("m", "1", "oct", "NORMAL", 0.4, probs, referral=_ref("observation"))
    ups = [Upload(f"{c}.png", c.encode(), f"d{c}", f"k{c}") for c in "abc"]
    results = [pred, _dark(), BackendError("not_retinal_image", "c.png is not a retinal image", 422)]
    table = tables.results_table(model, ups, results)
    head = ["filename", "label", "confidence", "referral", "gradable"]
    assert table.columns.tolist() == [*head, *(f"p_{c}" for c in OCT), "error"]
    assert table["filename"].tolist() == ["a.png", "b.png", "c.png"]
    assert table.loc[0, "p_NORMAL"] == 0.4 and table.loc[0, "label"] == "NORMAL"
    # The refused image says so (it showed None in every column).
    assert cells(table["referral"]) == ["observation", "ungradable", tables.REFUSED]
    assert cells(table["gradable"]) == [True, False, None]
    # The ungradable image has no diagnosis: no label, no probabilities.
    assert pd.isna(table.loc[1, "label"]) and table.loc[1, [f"p_{c}" for c in OCT]].isna().all()
    assert table.loc[2, "error"] == "c.png is not a retinal image"
    csv = table.to_csv(index=False)
    assert csv.splitlines()[0] == "filename,label,confidence,referral,gradable,p_CNV,p_DME,p_DRUSEN,p_NORMAL,error"
    # No error column when every image succeeded.
    assert "error" not in tables.results_table(model, ups[:1], [pred]).columns


def test_results_table_auto_lists_the_model_and_every_class() -> None:
    auto = auto_model([])
    oct_pred = Prediction("oct-x", "1", "oct", "CNV", 0.7, dict(zip(OCT, [0.7, 0.1, 0.1, 0.1], strict=True)))
    dr = dict(zip(DR, [0.1, 0.2, 0.4, 0.2, 0.1], strict=True))
    fundus = Prediction("dr-x", "1", "fundus", "Moderate", 0.4, dr, derived={"referable": 0.7, "any": 0.9})
    ups = [Upload(f"{c}.png", c.encode(), f"d{c}", f"k{c}") for c in "ab"]
    table = tables.results_table(auto, ups, [oct_pred, fundus])
    assert table["model"].tolist() == ["oct-x", "dr-x"]
    p_cols = [c for c in table.columns if c.startswith("p_")]
    assert p_cols == [f"p_{c}" for c in [*OCT, *DR, "referable", "any"]]
    assert table.loc[0, "p_CNV"] == 0.7 and pd.isna(table.loc[0, "p_Moderate"])
    assert table.loc[1, "p_referable"] == 0.7


def cells(column: pd.Series) -> list[object]:
    """A column's values with pandas' missing markers (None, NaN) as None."""
    return [None if pd.isna(v) else v for v in column]


def test_results_display_order_puts_the_reason_first() -> None:
    model = ModelInfo(id="m", task="oct", classes=tuple(OCT))
    ups = [Upload("a.png", b"a", "da", "ka"), Upload("fundus.png", b"b", "db", "kb")]
    api = "this looks like a colour fundus photo, but model 'm' reads OCT B-scans: send it with model=fundus"
    table = tables.results_table(model, ups, [_dark(), BackendError("wrong_modality", api, 422)])
    assert tables.results_display_order(table)[:2] == ["filename", "error"]
    assert table.loc[1, "error"].startswith("This looks like a colour fundus photo; the OCT model")
    assert table.loc[1, "referral"] == tables.REFUSED
    assert tables.results_display_order(table.drop(columns="error"))[0:2] == ["filename", "label"]


# As GET /models sends them (retina.figures.Evaluation.to_dict), with a value the old sidebar table cut.
FIGURES = [
    {
        "name": "test",
        "kind": "test",
        "title": "Held-out test split (742 images)",
        "heading": "Test split (742 images, 371 patients)",
        "n": 742,
        "n_patients": 371,
        "figures": [
            {
                "key": "balanced_accuracy",
                "label": "Balanced accuracy",
                "value": 0.326,
                "ci95": [0.171, 0.502],
                "text": "0.326 [0.171, 0.502]",
            },
            {"key": "ece", "label": "ECE after temperature scaling", "value": 0.039, "ci95": None, "text": "0.039"},
        ],
    },
    {
        "name": "val",
        "kind": "validation",
        "title": "Validation patients",
        "heading": "Validation split (742 images, 371 patients)",
        "n": 742,
        "n_patients": 371,
        "figures": [{"key": "accuracy", "label": "Accuracy", "value": 0.737, "ci95": None, "text": "0.737"}],
    },
]


def test_figure_tables_show_the_backend_texts_and_fall_back_to_metrics() -> None:
    model = ModelInfo(id="m", task="fundus", figures=tuple(FIGURES), metrics=TRAINING_METRICS)
    found = tables.figure_tables(model)
    assert [(h, k) for h, k, _, _ in found] == [
        ("Test split (742 images, 371 patients)", "test"),
        ("Validation split (742 images, 371 patients)", "validation"),
    ]
    assert found[0][3].values.tolist() == [
        ["Balanced accuracy", "0.326 [0.171, 0.502]"],
        ["ECE after temperature scaling", "0.039"],
    ]
    # No figures (an older backend): the training-run metrics, as before.
    old = tables.figure_tables(ModelInfo(id="m", task="oct", metrics=TRAINING_METRICS))
    assert [h for h, *_ in old] == [t for t, _ in tables.headline_metrics(TRAINING_METRICS)]


def test_exam_image_rows_one_per_file_in_upload_order() -> None:
    scored = Prediction("m", "1", "fundus", "No DR", 0.9, {"No DR": 0.9}, referral=_ref("rescreen_12_months"))
    rows = tables.image_rows(
        [
            ExamImage(0, "a.jpg", "right", "form", "image", True, result=scored),
            ExamImage(1, "b.jpg", "left", "filename", "image", False, error=ErrorBody("not_retinal_image", "x")),
        ]
    )
    assert [r["referral"] for r in rows] == ["rescreen_12_months", "not_retinal_image"]
    assert [r["label"] for r in rows] == ["No DR", ""]
    assert rows[1] == {
        "#": 1,
        "file": "b.jpg",
        "eye": "left",
        "eye from": "filename",
        "kind": "image",
        "gradable": False,
        "label": "",
        "referral": "not_retinal_image",
    }


def test_screen_uploads_says_why_a_file_is_left_out() -> None:
    ups = [
        Upload("a.png", b"a", "da", "ka"),
        Upload("notes.txt", b"t", "dt", "kt"),
        Upload("big.png", b"x" * 2000, "db", "kb"),
        Upload("copy.png", b"a", "da", "kc"),
    ]
    keep, problems = screen_uploads(ups, 0.001)
    assert [u.name for u in keep] == ["a.png"]
    assert problems[0].startswith("notes.txt: not an image this service reads (.jpg, .jpeg")
    assert problems[1] == "big.png is 0.0 MB, over the limit of 0.001 MB per file; it was not sent."
    assert problems[2] == "copy.png is the same file as a.png; it is shown once."
