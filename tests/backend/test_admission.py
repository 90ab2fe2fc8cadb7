"""Memory budgets and admission control: decode cost refused before decoding, frame= keeps the image limits,
503 overloaded with Retry-After past the in-flight limit or the memory budget, the DICOM probe refused early."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.app.main import create_app
from retina import dicom
from tests.backend.helpers import SMALL_ID, base_settings
from tests.dicom_helpers import make_dicom
from tests.retina.test_dicom_guard import _with_private_items


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tight(small_only_dir: Path) -> Iterator[TestClient]:
    """Image limit 250,000 pixels, decode limit 2 MB, a volume may have 10 MP."""
    settings = base_settings(
        small_only_dir, max_image_pixels=250_000, max_decode_mb=2.0, max_volume_pixels=10_000_000, max_in_flight=4
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def small_oct(oct_image: Path) -> bytes:
    """A real B-scan halved (~95,000 pixels): within the tight limits."""
    img = Image.open(oct_image)
    buf = io.BytesIO()
    img.resize((img.width // 2, img.height // 2)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _post(c: TestClient, data: bytes, route: str = "/predict", query: str = "") -> tuple[int, dict[str, str], str]:
    r = c.post(f"{route}?model={SMALL_ID}{query}", files={"file": ("x", data, "application/octet-stream")})
    return r.status_code, r.json() if r.headers["content-type"].startswith("application/json") else {}, r.headers


@pytest.mark.parametrize("route", ["/predict", "/gradcam"])
def test_frame_on_a_png_keeps_the_image_pixel_limit(tight: TestClient, route: str) -> None:
    big = _png(1000, 1000, "L")  # 1 MP: within the volume limits, over the image limit
    for query in ("", "&frame=0"):
        if route == "/predict" and query:
            continue
        status, body, _ = _post(tight, big, route, query)
        assert (status, body["error"]) == (422, "image_too_large"), query


def test_decode_memory_is_refused_from_the_header_and_named(tight: TestClient) -> None:
    rgba = _png(480, 480, "RGBA")  # 230,400 px: under the pixel limit; RGBA decodes to ~2 MB+
    status, body, _ = _post(tight, rgba)
    assert (status, body["error"]) == (422, "image_too_large")
    assert "RETINA_MAX_DECODE_MB" in body["detail"] and "MB" in body["detail"]


def test_each_frame_of_a_volume_is_capped_at_the_image_limit(tight: TestClient) -> None:
    frames = np.zeros((2, 600, 600), np.uint8)  # 360,000 px per frame, 720,000 in all: under the volume limit
    data = make_dicom(frames[0], NumberOfFrames=2, encoded=frames.tobytes())
    status, body, _ = _post(tight, data, "/gradcam", "&frame=0")
    assert (status, body["error"]) == (422, "image_too_large")
    assert "single-image limit" in body["detail"]


def test_the_dicom_probe_is_refused_before_pydicom(tight: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = _with_private_items(make_dicom(np.zeros((64, 64), np.uint8)), 200_000)

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pydicom was asked to parse the probe")

    monkeypatch.setattr(dicom, "_read_dataset", never)
    for route, query in (("/predict", ""), ("/gradcam", "&frame=0"), ("/predict/volume", "")):
        status, body, _ = _post(tight, probe, route, query)
        assert (status, body["error"]) == (413, "dicom_header_too_large"), route


def test_past_the_in_flight_limit_is_503_with_retry_after(tight: TestClient, small_oct: bytes) -> None:
    admission = tight.app.state.admission  # type: ignore[attr-defined]
    admission.in_flight = admission.max_in_flight  # as if that many uploads were being served
    try:
        status, body, headers = _post(tight, small_oct)
    finally:
        admission.in_flight = 0
    assert (status, body["error"]) == (503, "overloaded")
    assert int(headers["Retry-After"]) > 0
    assert _post(tight, small_oct)[0] == 200  # answered again once there is room


def test_past_the_memory_budget_is_503_with_retry_after(tight: TestClient, small_oct: bytes) -> None:
    admission = tight.app.state.admission  # type: ignore[attr-defined]
    admission.reserved = admission.budget_bytes  # another upload's decode holds the whole budget
    try:
        status, body, headers = _post(tight, small_oct)
    finally:
        admission.reserved = 0
    assert (status, body["error"]) == (503, "overloaded") and "RETINA_MEMORY_BUDGET_MB" in body["detail"]
    assert int(headers["Retry-After"]) > 0
    assert admission.reserved == 0 and admission.in_flight == 0  # nothing leaked by the refusals
