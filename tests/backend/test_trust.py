"""The trust layer over HTTP: image gate, model=auto, referral advice, calibration in /models, PDF report."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

from retina.registry import default_for
from tests.backend.helpers import SMALL_ID, encode

skimage_data = pytest.importorskip("skimage.data")


def _cat() -> bytes:
    return encode(Image.fromarray(skimage_data.chelsea()), "JPEG")


def _blurred(path: Path) -> bytes:
    img = Image.open(path).convert("RGB")
    return encode(img.filter(ImageFilter.GaussianBlur(radius=max(img.size) / 40)), "JPEG")


@pytest.mark.parametrize("route", ["/predict?model=oct", "/predict?model=fundus", "/gradcam?model=oct", "/report"])
def test_a_cat_photo_is_not_a_retinal_image(client: TestClient, route: str) -> None:
    r = client.post(route, files={"file": ("cat.jpeg", _cat(), "image/jpeg")})
    assert r.status_code == 422
    assert r.json()["error"] == "not_retinal_image"
    assert "OCT" in r.json()["detail"] and "fundus" in r.json()["detail"]


def _non_retinal() -> dict[str, bytes]:
    from tests.retina.test_gate import grace_hopper, letter, noise, photo_in_black_disc

    return {
        "portrait": encode(grace_hopper(), "JPEG"),
        "letter": encode(letter(), "PNG"),
        "noise": encode(noise(), "PNG"),
        "disc": encode(photo_in_black_disc(), "JPEG"),
    }


@pytest.mark.parametrize(
    "route",
    ["/predict?model=auto", "/predict?model=fundus", "/predict?model=oct", "/gradcam?model=auto", "/report?model=auto"],
)
def test_portrait_letter_noise_and_disc_photo_are_refused_everywhere(client: TestClient, route: str) -> None:
    for name, data in _non_retinal().items():
        r = client.post(route, files={"file": (f"{name}.img", data, "application/octet-stream")})
        assert r.status_code == 422, (name, r.status_code, r.text[:200])
        body = r.json()
        assert body["error"] == "not_retinal_image", (name, body)
        # the gate's numbers that decided it, or the rule that refused before the CNN (noise)
        assert "probabilities" in body["detail"] or "noise-like" in body["detail"], (name, body)


def test_batch_refuses_each_non_retinal_file_on_its_own(client: TestClient, oct_image: Path) -> None:
    files = [("files", oct_image.read_bytes())] + [("files", d) for d in _non_retinal().values()]
    res = client.post("/predict/batch?model=auto", files=files).json()["results"]
    assert res[0]["task"] == "oct"
    assert [x["error"] for x in res[1:]] == ["not_retinal_image"] * 4


def test_answers_carry_the_gate_probabilities(client: TestClient, oct_image: Path) -> None:
    gate = client.post("/predict?model=oct", files={"file": oct_image.read_bytes()}).json()["gate"]
    assert set(gate["probabilities"]) == {"oct", "fundus", "other"}
    assert gate["probabilities"]["oct"] >= gate["thresholds"]["oct"]


def test_model_auto_refuses_a_cat_too(client: TestClient) -> None:
    r = client.post("/predict?model=auto", files={"file": _cat()})
    assert r.status_code == 422 and r.json()["error"] == "not_retinal_image"


def test_fundus_photo_sent_to_the_oct_model_names_the_right_model(client: TestClient, fundus_image: Path) -> None:
    r = client.post("/predict?model=oct", files={"file": fundus_image.read_bytes()})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "wrong_modality"
    assert "model=fundus" in body["detail"] and default_for("fundus").key in body["detail"]


def test_oct_scan_sent_to_the_fundus_model_is_refused(client: TestClient, oct_image: Path) -> None:
    r = client.post("/gradcam?model=fundus", files={"file": oct_image.read_bytes()})
    assert r.status_code == 422 and r.json()["error"] == "wrong_modality"
    assert "model=oct" in r.json()["detail"]


def test_model_auto_routes_by_modality(client: TestClient, oct_image: Path, fundus_image: Path) -> None:
    o = client.post("/predict?model=auto", files={"file": oct_image.read_bytes()})
    f = client.post("/predict?model=auto", files={"file": fundus_image.read_bytes()})
    assert o.status_code == 200 and f.status_code == 200
    assert (o.json()["task"], o.json()["model"]) == ("oct", default_for("oct").key)
    assert (f.json()["task"], f.json()["model"]) == ("fundus", default_for("fundus").key)
    assert o.json()["gate"]["modality"] == "oct" and f.json()["gate"]["modality"] == "fundus"


def test_model_auto_batch_mixes_modalities(client: TestClient, oct_image: Path, fundus_image: Path) -> None:
    files = [("files", oct_image.read_bytes()), ("files", fundus_image.read_bytes()), ("files", _cat())]
    r = client.post("/predict/batch?model=auto", files=files)
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x.get("task") for x in res[:2]] == ["oct", "fundus"]
    assert res[2]["error"] == "not_retinal_image"


def test_ungradable_photo_gets_reasons_and_no_diagnosis(client: TestClient, fundus_image: Path) -> None:
    r = client.post("/predict?model=fundus", files={"file": _blurred(fundus_image)})
    assert r.status_code == 200
    body = r.json()
    assert body["gradable"] is False
    assert body["label"] is None and body["probabilities"] is None and body["confidence"] is None
    assert body["referral"]["level"] == "ungradable"
    # The learned quality grade and/or the hand-set limits (blur) say why.
    assert body["gate"]["reasons"] and any(("blur" in x or "quality grade" in x) for x in body["gate"]["reasons"])
    g = client.post("/gradcam?model=fundus", files={"file": _blurred(fundus_image)})
    assert g.status_code == 422 and g.json()["error"] == "ungradable_image"


def test_oct_referral_follows_the_probabilities(client: TestClient, oct_images: list[Path]) -> None:
    for path in oct_images[:4]:
        body = client.post("/predict?model=oct", files={"file": path.read_bytes()}).json()
        p = body["probabilities"]
        ref = body["referral"]
        urgent = p["CNV"] + p["DME"]
        expected = "urgent" if urgent >= 0.5 else ("routine" if urgent + p["DRUSEN"] >= 0.5 else "observation")
        assert ref["level"] == expected
        assert ref["probability"] == pytest.approx(urgent if expected == "urgent" else urgent + p["DRUSEN"], abs=1e-5)
        assert "Research use only" in ref["note"]


def test_fundus_referral_uses_the_referable_probability(client: TestClient, fundus_image: Path) -> None:
    body = client.post("/predict?model=fundus", files={"file": fundus_image.read_bytes()}).json()
    p_ref = body["derived"]["referable"]
    p4 = body["probabilities"][list(body["probabilities"])[4]]
    level = body["referral"]["level"]
    assert level == ("urgent" if p4 >= 0.5 else "refer" if p_ref >= 0.5 else "rescreen_12_months")


def test_referral_thresholds_are_configurable(
    make_client: Callable, api_models_dir: Path, oct_image: Path, fundus_image: Path
) -> None:
    with make_client(api_models_dir, referral_oct_urgent=0.001, referral_fundus_refer=0.999999) as c:
        o = c.post("/predict?model=oct", files={"file": oct_image.read_bytes()}).json()
        f = c.post("/predict?model=fundus", files={"file": fundus_image.read_bytes()}).json()
    assert o["referral"]["level"] == "urgent" and o["referral"]["threshold"] == 0.001
    assert f["referral"]["level"] in ("rescreen_12_months", "urgent")


@pytest.mark.parametrize("content", [None, "[]", "not a checkpoint", "dir"])
def test_gate_missing_or_broken_means_not_ready_and_nothing_is_classified(
    make_client: Callable, api_models_dir: Path, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "gate.pt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with make_client(api_models_dir, gate_file=path) as c:
        r = c.get("/ready")
        assert r.status_code == 503
        assert "image gate" in r.json()["detail"]
        p = c.post("/predict?model=oct", files={"file": _cat()})
        assert p.status_code == 503 and p.json()["error"] == "not_ready"  # never a silent pass-through


def test_auto_refusals_are_audited(make_client: Callable, api_models_dir: Path) -> None:
    with make_client(api_models_dir, operator_key="k") as c:  # the operator key predicts and reads /audit
        r = c.post("/predict?model=auto", files={"file": _cat()}, headers={"X-API-Key": "k"})
        assert r.status_code == 422
        rid = r.headers["x-request-id"]
        entries = c.get("/audit", headers={"X-API-Key": "k"}).json()["entries"]
    rows = [e for e in entries if e["request_id"] == rid]
    assert len(rows) == 1
    assert rows[0]["outcome"] == "not_retinal_image" and rows[0]["model_id"] == "auto"
    assert rows[0]["label"] is None


def test_gate_can_be_disabled_for_experiments(make_client: Callable, api_models_dir: Path) -> None:
    with make_client(api_models_dir, gate_enabled=False) as c:
        assert c.get("/ready").status_code == 200
        r = c.post("/predict?model=oct", files={"file": _cat()})
        assert r.status_code == 200 and r.json()["gate"] is None
        a = c.post("/predict?model=auto", files={"file": _cat()})
        assert a.status_code == 422 and a.json()["error"] == "invalid_parameter"
        b = c.post("/predict/batch?model=auto", files=[("files", _cat()), ("files", _cat())])
        assert b.status_code == 422 and b.json()["error"] == "invalid_parameter"


def test_models_show_calibration(client: TestClient) -> None:
    models = {m["id"]: m for m in client.get("/models").json()}
    small = models[SMALL_ID]
    assert small["calibration"]["temperature"] == 2.0
    assert small["temperature"] == 2.0


def test_models_show_ece_before_and_after_for_the_shipped_models(make_client: Callable) -> None:
    from retina.paths import DEFAULT_MODELS_DIR

    if not all((DEFAULT_MODELS_DIR / s.checkpoint).is_file() for s in (default_for("oct"), default_for("fundus"))):
        pytest.skip("shipped checkpoints absent")
    with make_client(DEFAULT_MODELS_DIR) as c:
        models = {m["id"]: m for m in c.get("/models").json()}
    for spec in (default_for("oct"), default_for("fundus")):
        cal = models[spec.key]["calibration"]
        assert cal["ece_after"] < cal["ece_before"], (spec.key, cal)


def _pdf_text(data: bytes) -> tuple[int, str]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return len(reader.pages), "\n".join(p.extract_text() for p in reader.pages)


def test_report_is_a_one_page_pdf_with_the_prediction(client: TestClient, fundus_image: Path) -> None:
    data = fundus_image.read_bytes()
    pred = client.post("/predict?model=fundus", files={"file": data}).json()
    r = client.post("/report?model=fundus&method=gradcam", files={"file": ("photo.jpeg", data, "image/jpeg")})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["x-referral"] == pred["referral"]["level"]
    pages, text = _pdf_text(r.content)
    flat = " ".join(text.split())
    assert pages == 1
    for needle in (pred["model"], pred["model_version"], pred["referral"]["advice"], "not a medical device"):
        assert " ".join(needle.split()) in flat, needle
    for name in pred["probabilities"]:
        assert name in flat
    assert r.headers["x-request-id"] in flat
    assert "photo.jpeg" not in flat  # upload names may carry patient names


def test_report_of_an_ungradable_image_says_so(client: TestClient, fundus_image: Path) -> None:
    r = client.post("/report?model=fundus", files={"file": _blurred(fundus_image)})
    assert r.status_code == 200
    _, text = _pdf_text(r.content)
    low = " ".join(text.lower().split())
    assert ("blur" in low or "quality grade is reject" in low) and "gradable" in low


def test_report_refuses_unknown_method(client: TestClient, oct_image: Path) -> None:
    r = client.post("/report?model=oct&method=nope", files={"file": oct_image.read_bytes()})
    assert r.status_code == 404 and r.json()["error"] == "unknown_method"


def test_rgba_and_16bit_versions_of_real_scans_pass_the_gate(client: TestClient, oct_image: Path) -> None:
    img = Image.open(oct_image).convert("L")
    a16 = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    for data in (encode(img.convert("RGBA"), "PNG"), encode(a16, "PNG")):
        r = client.post("/predict?model=oct", files={"file": data})
        assert r.status_code == 200, r.json()


SAMPLE_DIR = Path(__file__).resolve().parents[2] / "samples" / "fundus"


@pytest.mark.parametrize("path", sorted(SAMPLE_DIR.glob("*-grade[34].jpeg")), ids=lambda p: p.stem)
def test_severe_dr_samples_are_answered_with_a_quality_grade(client: TestClient, path: Path) -> None:
    # Exudates and haemorrhages make a retina look less like EyePACS, never "not a retinal image".
    r = client.post("/predict?model=auto", files={"file": path.read_bytes()})
    assert r.status_code == 200, r.json()
    gate = r.json()["gate"]
    assert gate["modality"] == "fundus" and gate["quality_grade"] in ("Good", "Usable", "Reject")
    assert set(gate["quality_grade_probabilities"]) == {"Good", "Usable", "Reject"}


def test_a_dark_retina_is_ungradable_not_refused(client: TestClient) -> None:
    img = Image.open(sorted(SAMPLE_DIR.glob("*-grade4.jpeg"))[0]).convert("RGB")
    dark = Image.fromarray((np.asarray(img, dtype=np.float32) * 0.12).astype(np.uint8))
    r = client.post("/predict?model=fundus", files={"file": encode(dark, "JPEG")})
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["gradable"] is False and body["gate"]["reasons"] and body["label"] is None
    assert body["referral"]["level"] == "ungradable"


def test_report_shows_the_quality_grade(client: TestClient) -> None:
    path = sorted(SAMPLE_DIR.glob("*-grade0.jpeg"))[0]
    pred = client.post("/predict?model=fundus", files={"file": path.read_bytes()}).json()
    r = client.post("/report?model=fundus", files={"file": path.read_bytes()})
    assert r.status_code == 200
    _, text = _pdf_text(r.content)
    assert f"Quality grade: {pred['gate']['quality_grade']}" in " ".join(text.split())
