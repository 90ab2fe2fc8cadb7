"""DICOM uploads on every image endpoint, built with pydicom from real scans; identifiers never leak.

Every file carries fake patient identifiers (``tests.dicom_helpers.PATIENT``): they must appear in
no response body or header and in no log record, at DEBUG, for the whole request.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.app.services.intake import ACCEPTED_FORMATS, sniff
from retina.labels import DR_GRADES, OCT_CLASSES
from tests.backend.helpers import assert_probabilities_close, encode
from tests.dicom_helpers import OPHTHALMIC_PHOTOGRAPHY_8BIT, leaked, make_dicom


@pytest.fixture(scope="module")
def oct_pixels(oct_image: Path) -> np.ndarray:
    """``uint8 (H, W)``: a real OCT B-scan."""
    return np.asarray(Image.open(oct_image).convert("L"))


@pytest.fixture(scope="module")
def oct_dcm(oct_pixels: np.ndarray) -> bytes:
    """Secondary Capture, MONOCHROME2, 8 bit, of the real scan."""
    return make_dicom(oct_pixels)


@pytest.fixture(scope="module")
def fundus_dcm(fundus_image: Path) -> bytes:
    """Ophthalmic Photography 8 Bit, RGB, of a real fundus photo."""
    rgb = np.asarray(Image.open(fundus_image).convert("RGB"))
    return make_dicom(rgb, sop_class=OPHTHALMIC_PHOTOGRAPHY_8BIT)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at DEBUG (root, the service's and pydicom's loggers) during the test."""
    caplog.set_level(logging.DEBUG)
    for name in ("backend", "retina", "pydicom", "uvicorn", "fastapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.clear()
    yield caplog


def _no_leak(r: httpx.Response, logs: pytest.LogCaptureFixture) -> None:
    assert leaked(r.content) == []
    assert leaked(" ".join(f"{k}: {v}" for k, v in r.headers.items())) == []
    assert leaked(logs.text) == []
    assert [m for m in (rec.getMessage() for rec in logs.records) if leaked(m)] == []


def _post(client: TestClient, url: str, data: bytes, name: str = "scan.dcm") -> httpx.Response:
    return client.post(url, files={"file": (name, data, "application/dicom")})


def test_sniff_says_dicom_even_with_another_magic_in_the_preamble(oct_dcm: bytes) -> None:
    assert "DICOM" in ACCEPTED_FORMATS
    assert sniff(oct_dcm) == "DICOM"
    assert sniff(b"II*\x00" + oct_dcm[4:]) == "DICOM"  # a TIFF/DICOM dual-personality preamble


def test_predict_dicom_equals_png_of_same_pixels(
    client: TestClient, oct_dcm: bytes, oct_pixels: np.ndarray, logs: pytest.LogCaptureFixture
) -> None:
    r = _post(client, "/predict?model=oct", oct_dcm)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in OCT_CLASSES
    _no_leak(r, logs)
    png = client.post("/predict?model=oct", files={"file": ("scan.png", encode(Image.fromarray(oct_pixels), "PNG"))})
    assert png.status_code == 200, png.text
    assert_probabilities_close(body["probabilities"], png.json()["probabilities"])


def test_gradcam_accepts_dicom(client: TestClient, oct_dcm: bytes, logs: pytest.LogCaptureFixture) -> None:
    r = _post(client, "/gradcam?model=oct", oct_dcm)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size[0] > 0
    _no_leak(r, logs)


def test_batch_accepts_dicom_beside_other_formats(
    client: TestClient, oct_dcm: bytes, oct_image: Path, logs: pytest.LogCaptureFixture
) -> None:
    files = [
        ("files", ("a.dcm", oct_dcm, "application/dicom")),
        ("files", ("b.jpeg", oct_image.read_bytes(), "image/jpeg")),
    ]
    r = client.post("/predict/batch?model=oct", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x.get("error") for x in results] == [None, None]
    assert all(x["label"] in OCT_CLASSES for x in results)
    _no_leak(r, logs)


def test_fundus_rgb_dicom_is_predicted(client: TestClient, fundus_dcm: bytes, logs: pytest.LogCaptureFixture) -> None:
    r = _post(client, "/predict?model=fundus", fundus_dcm)
    assert r.status_code == 200, r.text
    assert r.json()["label"] in DR_GRADES
    _no_leak(r, logs)


def _broken(kind: str, pixels: np.ndarray) -> bytes:
    if kind == "truncated":
        data = make_dicom(pixels)
        return data[: len(data) // 2]
    if kind == "multi_frame":
        return make_dicom(np.concatenate([pixels, pixels]), Rows=pixels.shape[0], NumberOfFrames=2)
    if kind == "no_pixels":
        return make_dicom(pixels, PixelData=None)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated", "multi_frame", "no_pixels"])
@pytest.mark.parametrize("url", ["/predict?model=oct", "/gradcam?model=oct"])
def test_broken_dicom_is_422_without_identifiers(
    client: TestClient, oct_pixels: np.ndarray, logs: pytest.LogCaptureFixture, kind: str, url: str
) -> None:
    r = _post(client, url, _broken(kind, oct_pixels))
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "invalid_image"
    assert isinstance(body["detail"], str) and body["detail"]
    _no_leak(r, logs)


def test_broken_dicom_in_a_batch_is_one_error_entry(
    client: TestClient, oct_pixels: np.ndarray, oct_dcm: bytes, logs: pytest.LogCaptureFixture
) -> None:
    files = [
        ("files", ("ok.dcm", oct_dcm, "application/dicom")),
        ("files", ("bad.dcm", _broken("multi_frame", oct_pixels), "application/dicom")),
    ]
    r = client.post("/predict/batch?model=oct", files=files)
    assert r.status_code == 200, r.text
    ok, bad = r.json()["results"]
    assert ok["label"] in OCT_CLASSES
    assert bad["error"] == "invalid_image" and "multi-frame" in bad["detail"]
    _no_leak(r, logs)


def test_dicom_header_bomb_is_422_image_too_large(
    client: TestClient, oct_pixels: np.ndarray, logs: pytest.LogCaptureFixture
) -> None:
    r = _post(client, "/predict?model=oct", make_dicom(oct_pixels, Rows=60000, Columns=60000))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "image_too_large"
    _no_leak(r, logs)


def test_identifier_in_a_technical_field_is_not_echoed_or_logged(
    client: TestClient, oct_pixels: np.ndarray, logs: pytest.LogCaptureFixture
) -> None:
    # pydicom warns (and logs) "Invalid value for VR CS: 'DOE^JANE'" when it reads this value.
    data = make_dicom(oct_pixels, photometric="DOE^JANE")
    logs.clear()
    r = _post(client, "/predict?model=oct", data)
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media_type"
    _no_leak(r, logs)
