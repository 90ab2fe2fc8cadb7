"""Site profiles in the API: site=NAME decides fundus referrals, names itself, is listed and audited."""

from __future__ import annotations

import io
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pypdf
import pytest
from fastapi.testclient import TestClient

from retina import checkpoint
from retina.paths import REPO_ROOT
from retina.registry import default_for
from retina.site_profile import SiteProfile, model_fingerprint, write_profile
from tests.backend.helpers import app_client, base_settings

FUNDUS = REPO_ROOT / "samples" / "fundus" / "IDRiD_003-grade2.jpeg"
OCT = REPO_ROOT / "samples" / "oct" / "NORMAL-9698749-1.jpeg"
# A refer threshold no photo falls under and an urgent one no photo reaches: site answers are "refer".
SITE_REFER, SITE_URGENT = 1e-6, 1.0


def make_profile(name: str, model_id: str, version: str, fingerprint: str, **over: Any) -> SiteProfile:
    rates = {
        "sensitivity": 0.9,
        "sensitivity_ci95": (0.8, 0.97),
        "specificity": 0.75,
        "specificity_ci95": (0.66, 0.83),
        "n": 150,
        "n_positive": 60,
    }
    values: dict[str, Any] = {
        "name": name,
        "model": {"model_id": model_id, "version": version, "arch": "resnet18", "fingerprint": fingerprint},
        "temperature": 1.5,
        "target_sensitivity": 0.87,
        "refer": {"threshold": SITE_REFER, "score": "P(grade >= 2)", "fitted": True, "source": "fitted", "fit": rates},
        "urgent": {"threshold": SITE_URGENT, "score": "P(grade 4)", "fitted": False, "source": "the model's own"},
        "n_images": 150,
        "n_referable": 60,
        "n_proliferative": 3,
        "n_patients": 90,
        "created": datetime(2026, 12, 7, tzinfo=UTC),
    }
    values.update(over)
    return SiteProfile.model_validate(values)


@pytest.fixture(scope="module")
def sites_dir(api_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``clinic-a`` for the served fundus weights, ``old-weights`` for other weights of the same id."""
    spec = default_for("fundus")
    model, meta = checkpoint.load(api_models_dir / spec.checkpoint)
    d = tmp_path_factory.mktemp("sites")
    write_profile(make_profile("clinic-a", spec.key, meta.version, model_fingerprint(model)), d)
    write_profile(make_profile("old-weights", spec.key, meta.version, "sha256:" + "0" * 64), d)
    return d


@pytest.fixture(scope="module")
def audit_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sites_audit") / "audit.sqlite"


@pytest.fixture(scope="module")
def sited(api_models_dir: Path, sites_dir: Path, audit_db: Path) -> Iterator[TestClient]:
    with app_client(base_settings(api_models_dir, sites_dir=sites_dir, audit_db=f"sqlite:///{audit_db}")) as c:
        yield c


def _post(client: TestClient, path: str, image: Path, rid: str | None = None) -> Any:
    headers = {"X-Request-ID": rid} if rid else {}
    return client.post(path, files={"file": (image.name, image.read_bytes(), "image/jpeg")}, headers=headers)


def test_unknown_site_is_422_unknown_site(sited: TestClient) -> None:
    for path in ("/predict", "/gradcam", "/report"):
        r = _post(sited, f"{path}?model=fundus&site=nowhere", FUNDUS)
        assert r.status_code == 422, path
        assert r.json()["error"] == "unknown_site"
        assert "clinic-a" in r.json()["detail"]


def test_site_changes_the_threshold_and_the_referral_names_it(sited: TestClient, audit_db: Path) -> None:
    default = _post(sited, "/predict?model=fundus", FUNDUS).json()["referral"]
    rid = uuid.uuid4().hex
    site = _post(sited, "/predict?model=fundus&site=clinic-a", FUNDUS, rid).json()["referral"]
    assert default["profile"] == "default" and default["threshold"] != SITE_REFER
    assert site["profile"] == "clinic-a"
    assert site["threshold"] == pytest.approx(SITE_REFER) and site["level"] == "refer"
    con = sqlite3.connect(audit_db)
    try:
        (row,) = con.execute("SELECT site, referral FROM audit_log WHERE request_id = ?", (rid,)).fetchall()
    finally:
        con.close()
    assert row == ("clinic-a", "refer")


def test_site_applies_to_batch_gradcam_and_report(sited: TestClient) -> None:
    files = [("files", (FUNDUS.name, FUNDUS.read_bytes(), "image/jpeg"))] * 2
    r = sited.post("/predict/batch?model=fundus&site=clinic-a", files=files)
    assert r.status_code == 200
    assert [item["referral"]["profile"] for item in r.json()["results"]] == ["clinic-a", "clinic-a"]
    cam = _post(sited, "/gradcam?model=fundus&site=clinic-a&format=json", FUNDUS)
    assert cam.status_code == 200 and cam.json()["referral"]["profile"] == "clinic-a"
    pdf = _post(sited, "/report?model=fundus&site=clinic-a", FUNDUS)
    assert pdf.status_code == 200 and pdf.headers["X-Referral"] == "refer"
    text = " ".join(pypdf.PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text().split())
    assert "site profile 'clinic-a' (150 photos, 60 referable)" in text


def test_oct_ignores_the_site(sited: TestClient) -> None:
    r = _post(sited, "/predict?model=oct&site=clinic-a", OCT)
    assert r.status_code == 200
    assert r.json()["referral"]["profile"] == "default"


def test_models_lists_loaded_and_rejected_sites(sited: TestClient) -> None:
    rows = {m["id"]: m for m in sited.get("/models").json()}
    sites = {s["name"]: s for s in rows[default_for("fundus").key]["sites"]}
    assert sites["clinic-a"]["loaded"] and sites["clinic-a"]["profile"]["refer"]["threshold"] == SITE_REFER
    assert not sites["old-weights"]["loaded"] and "other weights" in sites["old-weights"]["error"]
    assert all(not m["sites"] for m in rows.values() if m["task"] == "oct")


def test_a_rejected_profile_is_not_usable(sited: TestClient) -> None:
    r = _post(sited, "/predict?model=fundus&site=old-weights", FUNDUS)
    assert r.status_code == 422 and r.json()["error"] == "unknown_site"
    assert "other weights" in r.json()["detail"]


def test_unknown_default_site_makes_the_service_not_ready(api_models_dir: Path, sites_dir: Path) -> None:
    settings = base_settings(api_models_dir, sites_dir=sites_dir, default_site="nowhere", operator_key="op-key")
    with app_client(settings) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and "RETINA_DEFAULT_SITE" not in r.text  # the public answer names no setting
        r = c.get("/ready", headers={"X-API-Key": "op-key"})  # the operator sees why
        assert r.status_code == 503
        assert "RETINA_DEFAULT_SITE=nowhere" in r.text


def test_default_site_decides_requests_that_name_none(api_models_dir: Path, sites_dir: Path) -> None:
    with app_client(base_settings(api_models_dir, sites_dir=sites_dir, default_site="clinic-a")) as c:
        assert c.get("/ready").status_code == 200
        assert _post(c, "/predict?model=fundus", FUNDUS).json()["referral"]["profile"] == "clinic-a"
        assert _post(c, "/predict?model=fundus&site=default", FUNDUS).json()["referral"]["profile"] == "default"


def test_an_older_audit_log_gets_the_site_column(api_models_dir: Path, sites_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.execute(  # the table as services before site profiles created it
        "CREATE TABLE audit_log (id INTEGER PRIMARY KEY, ts DATETIME NOT NULL, request_id VARCHAR(64) NOT NULL, "
        "endpoint VARCHAR(32) NOT NULL, model_id VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL, "
        "task VARCHAR(16) NOT NULL, input_sha256 VARCHAR(64) NOT NULL, outcome VARCHAR(64) NOT NULL, "
        "label VARCHAR(128), confidence FLOAT, probabilities JSON, referral VARCHAR(32), modality VARCHAR(32))"
    )
    con.close()
    with app_client(base_settings(api_models_dir, sites_dir=sites_dir, audit_db=f"sqlite:///{db}")) as c:
        rid = uuid.uuid4().hex
        assert _post(c, "/predict?model=fundus&site=clinic-a", FUNDUS, rid).status_code == 200
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT site FROM audit_log WHERE request_id = ?", (rid,)).fetchall() == [("clinic-a",)]
    finally:
        con.close()
