"""OCT volumes: POST /predict/volume, /gradcam and /report with frame=, multi-frame DICOM limits and identifiers.

Volumes are built with pydicom from the real Kermany B-scans of one patient in the shipped sample volume
(``samples/oct/*-volume.dcm``) as Ophthalmic Tomography and multi-frame Secondary Capture files carrying
fake patient identifiers (``tests.dicom_helpers.PATIENT``), which must appear in no response, log record
or audit row.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retina.labels import OCT_CLASSES
from retina.volume import aggregate
from tests.backend.helpers import assert_probabilities_close, encode
from tests.dicom_helpers import leaked, make_volume


@pytest.fixture(scope="module")
def frames(oct_volume: Path) -> list[np.ndarray]:
    """The shipped sample volume's three real DRUSEN B-scans of one patient, each ``uint8 (496, 512)``."""
    import pydicom

    pixels = pydicom.dcmread(oct_volume).pixel_array
    assert pixels.shape == (3, 496, 512) and pixels.dtype == np.uint8
    return list(pixels)


@pytest.fixture(scope="module")
def opt_volume(frames: list[np.ndarray]) -> bytes:
    """Ophthalmic Tomography, per-frame windows in the functional groups (full range: pixels unchanged)."""
    return make_volume(frames, "opt", windows=[(128.0, 256.0)] * len(frames))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    for name in ("backend", "retina", "pydicom", "uvicorn", "fastapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.clear()
    yield caplog


def _post(client: TestClient, url: str, data: bytes) -> httpx.Response:
    return client.post(url, files={"file": ("Jane Doe volume.dcm", data, "application/dicom")})


def _no_leak(r: httpx.Response, logs: pytest.LogCaptureFixture) -> None:
    assert leaked(r.content) == []
    assert leaked(" ".join(f"{k}: {v}" for k, v in r.headers.items())) == []
    assert leaked(logs.text) == []


def test_volume_answer_shape_rule_and_deciding_frames(
    client: TestClient, opt_volume: bytes, frames: list[np.ndarray], logs: pytest.LogCaptureFixture
) -> None:
    r = _post(client, "/predict/volume?model=oct", opt_volume)
    assert r.status_code == 200, r.text
    body = r.json()
    _no_leak(r, logs)
    assert body["n_frames"] == 3 and len(body["frames"]) == 3
    assert body["n_graded"] + body["n_ungradable"] + body["n_not_oct"] == 3
    assert body["gradable"] and body["label"] in OCT_CLASSES and body["referral"]["level"]
    graded = [f for f in body["frames"] if f["status"] == "graded"]
    assert [f["index"] for f in body["frames"]] == [0, 1, 2] and len(graded) == body["n_graded"] >= 2
    # Volume probabilities are the served rule applied to the B-scans' own probabilities.
    per_frame = np.array([list(f["probabilities"].values()) for f in graded])
    want = aggregate(per_frame, body["rule"])
    assert_probabilities_close(body["probabilities"], dict(zip(OCT_CLASSES, want.tolist(), strict=True)))
    # Deciding frames: graded ones, highest P(volume label) first.
    p_label = {f["index"]: f["probabilities"][body["label"]] for f in graded}
    deciding = body["deciding_frames"]
    assert deciding and set(deciding) <= set(p_label)
    assert [p_label[i] for i in deciding] == sorted(p_label.values(), reverse=True)[: len(deciding)]
    # Each B-scan's answer is what /predict says about that frame alone (to float32 batch-size noise:
    # the volume's frames share one forward pass, the lone PNG gets its own).
    one = client.post("/predict?model=oct", files={"file": ("b.png", encode(Image.fromarray(frames[1]), "PNG"))})
    assert one.status_code == 200
    assert_probabilities_close(body["frames"][1]["probabilities"], one.json()["probabilities"], atol=2e-3)
    assert body["frames"][1]["label"] == one.json()["label"]


def test_multiframe_secondary_capture_16_bit_with_a_window_equals_the_8_bit_volume(
    client: TestClient, frames: list[np.ndarray], opt_volume: bytes
) -> None:
    # 16-bit stored values v*256 + 128, windowed back to 0-255 by one top-level window.
    words = [f.astype(np.uint16) * 256 + 128 for f in frames]
    sc = make_volume(words, "sc", windows=[(32768.0, 65536.0)])
    a = _post(client, "/predict/volume?model=oct", sc)
    b = _post(client, "/predict/volume?model=oct", opt_volume)
    assert a.status_code == 200, a.text
    for fa, fb in zip(a.json()["frames"], b.json()["frames"], strict=True):
        assert fa["status"] == fb["status"]
        if fa["probabilities"]:
            assert_probabilities_close(fa["probabilities"], fb["probabilities"], atol=2e-3)


def test_per_frame_windowing_is_applied_frame_by_frame(client: TestClient, frames: list[np.ndarray]) -> None:
    # Frame 1 stored at half contrast with a window that restores it: same answer as the plain frame.
    halved = [frames[0], (frames[1] // 2).astype(np.uint8), frames[2]]
    vol = make_volume(halved, "opt", windows=[(128.0, 256.0), (64.0, 128.0), (128.0, 256.0)])
    plain = make_volume(frames, "opt")
    a, b = _post(client, "/predict/volume", vol).json(), _post(client, "/predict/volume", plain).json()
    assert_probabilities_close(a["frames"][1]["probabilities"], b["frames"][1]["probabilities"], atol=2e-2)


def test_auto_is_the_oct_default(client: TestClient, opt_volume: bytes) -> None:
    a = _post(client, "/predict/volume?model=auto", opt_volume)
    b = _post(client, "/predict/volume?model=oct", opt_volume)
    assert a.status_code == 200, a.text
    assert a.json()["model"] == b.json()["model"]
    assert a.json()["probabilities"] == b.json()["probabilities"]


def test_non_oct_frames_are_counted_and_skipped(client: TestClient, frames: list[np.ndarray]) -> None:
    blank = np.zeros_like(frames[0])
    r = _post(client, "/predict/volume?model=oct", make_volume([frames[0], blank, frames[1], blank], "opt"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_frames"] == 4 and body["n_not_oct"] == 2 and body["n_graded"] == 2
    assert [f["status"] for f in body["frames"]] == ["graded", "not_oct", "graded", "not_oct"]
    assert set(body["deciding_frames"]) <= {0, 2}
    assert body["frames"][1]["reasons"]


def test_a_volume_of_noise_is_refused_not_retinal(client: TestClient, frames: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, frames[0].shape).astype(np.uint8) for _ in range(3)]
    r = _post(client, "/predict/volume?model=oct", make_volume(noise, "opt"))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "not_retinal_image"


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("/predict/volume?model=fundus", 422, "invalid_parameter"),
        ("/predict/volume?model=nope", 404, "unknown_model"),
    ],
)
def test_volume_model_errors(client: TestClient, opt_volume: bytes, url: str, status: int, code: str) -> None:
    r = _post(client, url, opt_volume)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code


def test_a_single_image_is_415_on_the_volume_endpoint(client: TestClient, frames: list[np.ndarray]) -> None:
    r = client.post("/predict/volume", files={"file": ("b.png", encode(Image.fromarray(frames[0]), "PNG"))})
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media_type" and "/predict" in r.json()["detail"]


@pytest.mark.parametrize("url", ["/predict?model=oct", "/gradcam?model=oct", "/report?model=oct"])
def test_single_image_endpoints_refuse_a_volume_and_point_to_predict_volume(
    client: TestClient, opt_volume: bytes, url: str, logs: pytest.LogCaptureFixture
) -> None:
    r = _post(client, url, opt_volume)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_image"
    assert "multi-frame" in body["detail"] and "/predict/volume" in body["detail"] and "frame=0..2" in body["detail"]
    _no_leak(r, logs)


# ----------------------------------------------------------------------------- frame=


def test_gradcam_frame_explains_that_b_scan(client: TestClient, opt_volume: bytes) -> None:
    volume = _post(client, "/predict/volume?model=oct", opt_volume).json()
    shown = volume["frames"][2]
    r = _post(client, "/gradcam?model=oct&frame=2&format=json", opt_volume)
    assert r.status_code == 200, r.text
    assert r.json()["label"] == shown["label"]
    assert_probabilities_close(r.json()["probabilities"], shown["probabilities"])
    png = _post(client, "/gradcam?model=oct&frame=2", opt_volume)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["X-Label"] == shown["label"]
    Image.open(io.BytesIO(png.content)).verify()


def test_frame_out_of_range_is_422(client: TestClient, opt_volume: bytes) -> None:
    r = _post(client, "/gradcam?model=oct&frame=3", opt_volume)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_image" and "frames 0-2" in r.json()["detail"]
    neg = _post(client, "/gradcam?model=oct&frame=-1", opt_volume)
    assert neg.status_code == 422 and neg.json()["error"] == "invalid_parameter"


def test_frame_of_a_single_image(client: TestClient, frames: list[np.ndarray]) -> None:
    png = encode(Image.fromarray(frames[0]), "PNG")
    ok = client.post("/gradcam?model=oct&frame=0", files={"file": ("b.png", png)})
    assert ok.status_code == 200, ok.text
    bad = client.post("/gradcam?model=oct&frame=1", files={"file": ("b.png", png)})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_parameter"
    pdf = client.post("/report?model=oct&frame=0", files={"file": ("b.png", png)})
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")


def test_report_frame_shows_the_volume_and_its_deciding_b_scans(
    client: TestClient, opt_volume: bytes, logs: pytest.LogCaptureFixture
) -> None:
    from pypdf import PdfReader

    volume = _post(client, "/predict/volume?model=oct", opt_volume).json()
    r = _post(client, "/report?model=oct&frame=1", opt_volume)
    assert r.status_code == 200, r.text
    assert r.content.startswith(b"%PDF")
    _no_leak(r, logs)
    pdf = PdfReader(io.BytesIO(r.content))
    assert len(pdf.pages) == 1
    text = " ".join(pdf.pages[0].extract_text().split())
    assert "OCT volume" in text and "B-scan 1" in text
    assert f"Whole volume: {volume['label']}" in text
    for i in volume["deciding_frames"]:
        assert f"B-scan {i}:" in text
    # The deciding B-scans are drawn: the image, its CAM and one thumbnail each (the PDF stores the shown
    # B-scan once when it is also a deciding one: the same pixels).
    assert len(pdf.pages[0].images) == 2 + len([i for i in volume["deciding_frames"] if i != 1])
    assert r.headers["X-Referral"] == volume["referral"]["level"]


# ----------------------------------------------------------------------------- limits, identifiers


@pytest.fixture(scope="module")
def small_frames(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(Image.fromarray(f).resize((256, 248))) for f in frames]


def test_volume_limits(
    make_client: Callable[..., AbstractContextManager[TestClient]],
    api_models_dir: Path,
    small_frames: list[np.ndarray],
    opt_volume: bytes,
) -> None:
    two, three = make_volume(small_frames[:2], "opt"), make_volume(small_frames, "opt")
    settings = {
        "max_volume_frames": 2,
        "max_volume_pixels": 2 * 256 * 248 - 1,
        "max_volume_upload_mb": 0.5,
        "models": ["oct-resnet18"],
    }
    with make_client(api_models_dir, **settings) as c:
        r = _post(c, "/predict/volume", three)
        assert r.status_code == 413 and r.json()["error"] == "too_many_frames", r.text
        assert "3 frames" in r.json()["detail"] and "limit of 2" in r.json()["detail"]
        r = _post(c, "/predict/volume", two)
        assert r.status_code == 422 and r.json()["error"] == "image_too_large", r.text
        assert len(opt_volume) > 500_000
        r = _post(c, "/predict/volume", opt_volume)
        assert r.status_code == 413 and r.json()["error"] == "file_too_large", r.text
        assert "RETINA_MAX_VOLUME_UPLOAD_MB" in r.json()["detail"]
        # frame= on /gradcam applies the volume limits too.
        r = _post(c, "/gradcam?frame=0", three)
        assert r.status_code == 413 and r.json()["error"] == "too_many_frames", r.text


def test_identifiers_never_reach_responses_logs_or_the_audit(
    client: TestClient, opt_volume: bytes, logs: pytest.LogCaptureFixture
) -> None:
    before = len(client.app.state.audit.query(limit=100_000))
    responses = [
        _post(client, "/predict/volume?model=oct", opt_volume),
        _post(client, "/gradcam?model=oct&frame=0", opt_volume),
        _post(client, "/report?model=oct&frame=0", opt_volume),
        _post(client, "/predict?model=oct", opt_volume),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 422]
    for r in responses:
        _no_leak(r, logs)
    rows = client.app.state.audit.query(limit=100_000)[before:]
    assert [row["endpoint"] for row in rows] == ["predict_volume", "gradcam", "report"]
    assert rows[0]["outcome"] == "ok" and rows[0]["label"] in OCT_CLASSES
    assert leaked(repr(rows)) == []
