"""One source of truth for every figure of each shipped model: /models, the PDF report, the model card and
the README print the same numbers (issue 15: the UI said 0.713 / ECE 0.074 where the PDF and card said
0.716 / 0.072)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.app.main import create_app
from backend.app.services.report import ONE_PAGE_SKIPS
from retina.paths import DEFAULT_MODELS_DIR, REPO_ROOT
from retina.registry import default_for
from tests.backend.helpers import base_settings

SAMPLES = {
    "oct": REPO_ROOT / "samples/oct/CNV-9333524-1.jpeg",
    "fundus": REPO_ROOT / "samples/fundus/IDRiD_001-grade3.jpeg",
}
# figures[].key -> how training/ship/card.py words the same figure in the markdown card.
CARD_WORDS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "referable_roc_auc": "referable DR (grade >= 2) ROC AUC",
    "referable_sensitivity_at_90_specificity": "sensitivity at 90% specificity",
    "any_dr_roc_auc": "any DR (grade >= 1) ROC AUC",
    "ece": "expected calibration error (15 bins)",
}


def _shipped() -> list[str]:
    return [t for t in ("oct", "fundus") if (DEFAULT_MODELS_DIR / default_for(t).checkpoint).is_file()]


pytestmark = pytest.mark.skipif(len(_shipped()) < 2, reason="shipped checkpoints absent")


@pytest.fixture(scope="module")
def shipped() -> Iterator[dict[str, Any]]:
    """Per task: its /models entry, its PDF report's text (whitespace runs as one space) and its card."""
    from pypdf import PdfReader

    out: dict[str, Any] = {}
    with TestClient(create_app(base_settings(DEFAULT_MODELS_DIR))) as c:
        models = {m["id"]: m for m in c.get("/models").json()}
        for task in ("oct", "fundus"):
            key = default_for(task).key
            r = c.post(f"/report?model={task}", files={"file": SAMPLES[task].read_bytes()})
            assert r.status_code == 200, r.text[:300]
            reader = PdfReader(io.BytesIO(r.content))
            text = " ".join("\n".join(p.extract_text() for p in reader.pages).split())
            card = (DEFAULT_MODELS_DIR / f"{key}.md").read_text(encoding="utf-8")
            out[task] = {"model": models[key], "pdf": text, "card": card}
    yield out


def _sections(card: str) -> dict[str, str]:
    """``### title`` -> the section's text, for every results section of a card."""
    parts = re.split(r"^### (.+)$", card, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _model_block(pdf: str) -> str:
    return pdf[pdf.index(" Model ") : pdf.index("Image check")]


@pytest.mark.parametrize("task", ["oct", "fundus"])
def test_models_figures_are_the_cards(shipped: dict[str, Any], task: str) -> None:
    model, card = shipped[task]["model"], shipped[task]["card"]
    sections = _sections(card)
    assert model["figures"], "the shipped model has no figures in /models"
    assert [e["title"] for e in model["figures"]] == [t for t in sections if not t.endswith("raw camera photos only")]
    for ev in model["figures"]:
        text = sections[ev["title"]]
        assert f"- images {ev['n']}, patients {ev['n_patients']};" in text
        for fig in ev["figures"]:
            assert f"{CARD_WORDS[fig['key']]} {fig['text']}" in text, (ev["name"], fig)
    # The calibration block /models sends is the card's calibration line.
    cal = model["calibration"]
    assert f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}" in card


@pytest.mark.parametrize("task", ["oct", "fundus"])
def test_pdf_prints_the_same_figures_under_their_split(shipped: dict[str, Any], task: str) -> None:
    model, pdf = shipped[task]["model"], shipped[task]["pdf"]
    block = _model_block(pdf)
    lead = next(e for e in model["figures"] if e["kind"] != "validation")
    # The table names the split it shows (it said "Validation metric" over test and CV figures).
    assert "Validation metric" not in pdf
    assert lead["heading"] in block
    for fig in lead["figures"]:
        if fig["key"] not in ONE_PAGE_SKIPS:  # in /models and the card; not on the one page
            assert f"{fig['label']} {fig['text']}" in block, fig
    for ev in model["figures"]:
        if ev is not lead and ev["kind"] != "validation":
            auc = next(f for f in ev["figures"] if f["key"] == "referable_roc_auc")
            assert auc["text"] in block, ev["name"]
    # The source is printed whole, never cut with "...".
    assert lead["title"] in block and "..." not in block
    # The ECE after temperature scaling, as /models and the card give it.
    cal = model["calibration"]
    assert f"ECE before -> after temperature scaling {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}" in block
    ece = next(f for f in lead["figures"] if f["key"] == "ece")
    assert f"ECE after temperature scaling {ece['text']}" in block


def test_the_disclaimer_is_said_once(shipped: dict[str, Any]) -> None:
    for task in ("oct", "fundus"):
        pdf = shipped[task]["pdf"]
        assert pdf.count("not a medical device") == 1, pdf[-600:]
        assert pdf.count("must confirm any referral") + pdf.count("must review the image") == 1


def _readme_rows() -> dict[str, str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9-]+)` v[^\n]*$", text, flags=re.M)}


def _numbers(text: str) -> list[str]:
    """Every ``0.87`` / ``0.921`` / ``0.1099`` in ``text``, as written."""
    return re.findall(r"(?<![\d.])\d\.\d{2,4}(?![\d.])", text)


@pytest.mark.parametrize("task", ["oct", "fundus"])
def test_readme_figures_are_the_cards(shipped: dict[str, Any], task: str) -> None:
    """Every figure of the README's shipped-models row is in the card, to the README's rounding."""
    key = default_for(task).key
    row = _readme_rows()[key]
    card = [float(c) for c in _numbers(shipped[task]["card"])]
    figures = _numbers(row.split("|")[4])  # the "headline (95% CI)" column
    assert len(figures) >= 4, row
    for x in figures:
        tol = 0.5 * 10 ** -len(x.split(".")[1]) + 1e-9  # the card's figure, rounded as the README writes it
        assert any(abs(float(x) - c) <= tol for c in card), (key, x)
