"""GET /models speaks retina.referral's words: the disclaimer and a sentence per referral threshold (the UI prints
them), from the checkpoint's operating points, a setting that overrides one, and a default site profile."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi.testclient import TestClient

from backend.app.core.config import Settings
from backend.app.services.catalog import advice_note, point_texts
from backend.app.services.sites import SiteEntry, SiteRegistry
from retina.labels import DR_GRADES
from retina.referral import ADVICE, DISCLAIMER, HEADLINES, NO_POLICY
from tests.backend.test_sites import make_profile

REFER = {
    "threshold": 0.086,
    "fitted_on": "validation split",
    "fit": {
        "sensitivity": 0.86,
        "sensitivity_ci95": [0.8, 0.91],
        "specificity": 0.48,
        "specificity_ci95": [0.44, 0.52],
    },
}


def test_models_carry_the_disclaimer_and_a_sentence_per_threshold(client: TestClient) -> None:
    models = client.get("/models").json()
    assert models
    for m in models:
        assert m["disclaimer"] == DISCLAIMER
        assert set(m["served_thresholds"]) <= set(m["operating_point_text"])
        for name, threshold in m["served_thresholds"].items():
            assert f">= {threshold:.3f}" in m["operating_point_text"][name]
    fundus = next(m for m in models if m["task"] == "fundus" and m["default"])
    assert fundus["operating_point_text"]["refer"].startswith("Refer when P(grade >= 2) >= ")


def test_answers_carry_the_headline_and_the_disclaimer(client: TestClient, fundus_image) -> None:
    body = client.post("/predict?model=fundus", files={"file": fundus_image.read_bytes()}).json()
    assert body["referral"]["headline"] == HEADLINES[body["referral"]["level"]]
    assert body["referral"]["note"] == DISCLAIMER


def _served(meta_points: dict) -> SimpleNamespace:
    meta = SimpleNamespace(extra={"operating_points": meta_points}, metrics={}, class_names=list(DR_GRADES))
    return SimpleNamespace(id="fundus-x", task="fundus", class_names=list(DR_GRADES), meta=meta)


def test_a_setting_and_a_default_site_profile_are_named_in_the_sentence() -> None:
    m = _served({"refer": REFER})
    store = SimpleNamespace(sites=SiteRegistry())
    texts = point_texts(m, store, Settings())  # type: ignore[arg-type]
    assert texts["refer"] == (
        "Refer when P(grade >= 2) >= 0.086, chosen on validation split: sensitivity 0.86 [0.80, 0.91], "
        "specificity 0.48 [0.44, 0.52]."
    )
    assert texts["urgent"].startswith("Urgent referral when P(proliferative) >= 0.500 (service default or setting")
    over = point_texts(m, store, Settings(referral_fundus_refer=0.3))  # type: ignore[arg-type]
    assert over["refer"].startswith(
        "Refer when P(grade >= 2) >= 0.300 (service setting RETINA_REFERRAL_FUNDUS_REFER), overriding the operating "
        "point 0.086 chosen on validation split: sensitivity 0.86"
    )
    profile = make_profile("clinic-a", "fundus-x", "1", "sha256:" + "0" * 64)
    entry = SiteEntry("clinic-a", profile=profile, path=None, model_id="fundus-x")  # type: ignore[arg-type]
    store = SimpleNamespace(sites=SiteRegistry(entries={"clinic-a": entry}, default="clinic-a"))
    sited = point_texts(m, store, Settings())  # type: ignore[arg-type]
    assert sited["refer"].startswith(texts["refer"] + " Without site=, the site profile 'clinic-a' decides: refer when")
    assert "chosen on site profile 'clinic-a' (150 photos, 60 referable)" in sited["refer"]


def test_advice_note_says_why_a_model_gives_no_advice(client: TestClient) -> None:
    # The UI prints this note instead of words of its own (issue 28: one author of the words).
    for m in client.get("/models").json():
        if not m["informative"]:
            assert m["advice_note"] == ADVICE["not_informative"]
        elif not m["served_thresholds"]:
            assert m["advice_note"] == NO_POLICY["advice"]
        else:
            assert m["advice_note"] is None
    chance = SimpleNamespace(metrics={"test": {"balanced_accuracy_ci95": [0.2, 0.4]}}, class_names=DR_GRADES, extra={})
    assert advice_note("fundus", list(DR_GRADES), chance, Settings()) == ADVICE["not_informative"]
    useful = SimpleNamespace(metrics={}, class_names=["a", "b"], extra={})
    assert advice_note("fundus", ["a", "b"], useful, Settings()) == NO_POLICY["advice"]
    graded = SimpleNamespace(metrics={}, class_names=DR_GRADES, extra={})
    assert advice_note("fundus", list(DR_GRADES), graded, Settings()) is None
