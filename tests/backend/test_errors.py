"""Every error code, with its status and the ``{"error", "detail"}`` body."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.app.main import create_app
from backend.app.services import pipeline as pipeline_module
from retina.registry import MODELS
from tests.backend.helpers import SMALL_ID, base_settings

KEY = "s3cret-key"
LIMIT_MB = 0.05  # 50 kB: real OCT JPEGs are bigger


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert set(body) == {"error", "detail"}
    return body


def test_text_file_is_415(client: TestClient) -> None:
    # The client even claims image/jpeg: the bytes decide.
    r = client.post("/predict", files={"file": ("scan.jpeg", b"just some text\n" * 20, "image/jpeg")})
    _error(r, 415, "unsupported_media_type")


def test_text_with_image_magic_is_415(client: TestClient) -> None:
    # Starts like a WebP (RIFF....WEBP), so it passes the byte sniffing; PIL then recognises
    # no image (retina's ImageDecodeError "unsupported_image" maps to 415 too).
    data = b"RIFF\x00\x00\x00\x00WEBP" + b"just some text\n" * 10
    r = client.post("/predict", files={"file": ("x.webp", data, "image/webp")})
    _error(r, 415, "unsupported_media_type")


def test_broken_image_after_valid_magic_is_422(client: TestClient) -> None:
    r = client.post("/predict", files={"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"x" * 50, "image/png")})
    _error(r, 422, "invalid_image")


def test_zero_byte_file_is_422_empty(client: TestClient) -> None:
    _error(client.post("/predict", files={"file": ("scan.jpeg", b"", "image/jpeg")}), 422, "empty_file")


def test_truncated_jpeg_is_422_invalid(client: TestClient, oct_image: Path) -> None:
    data = oct_image.read_bytes()
    r = client.post("/predict", files={"file": ("scan.jpeg", data[: len(data) // 2], "image/jpeg")})
    _error(r, 422, "invalid_image")


def test_png_bomb_is_422_image_too_large(client: TestClient, png_bomb: Path) -> None:
    assert png_bomb.stat().st_size < 2_000_000  # small on disk, 900 Mpixel decoded
    r = client.post("/predict", files={"file": ("bomb.png", png_bomb.read_bytes(), "image/png")})
    _error(r, 422, "image_too_large")


def test_png_bomb_is_refused_by_gradcam_too(client: TestClient, png_bomb: Path) -> None:
    r = client.post("/gradcam?model=fundus", files={"file": ("bomb.png", png_bomb.read_bytes(), "image/png")})
    _error(r, 422, "image_too_large")


def test_unknown_cam_method_is_404(client: TestClient, oct_image: Path) -> None:
    r = client.post("/gradcam?method=magic", files={"file": oct_image.read_bytes()})
    _error(r, 404, "unknown_method")


@pytest.mark.parametrize("alpha", ["1.5", "-0.1", "abc"])
def test_bad_alpha_is_422(client: TestClient, oct_image: Path, alpha: str) -> None:
    r = client.post(f"/gradcam?alpha={alpha}", files={"file": oct_image.read_bytes()})
    _error(r, 422, "invalid_parameter")


def test_bad_size_is_422(client: TestClient, oct_image: Path) -> None:
    _error(client.post("/gradcam?size=huge", files={"file": oct_image.read_bytes()}), 422, "invalid_parameter")


@pytest.mark.parametrize("target", ["GLAUCOMA", "7", "-1"])
def test_unknown_target_is_422(client: TestClient, oct_image: Path, target: str) -> None:
    r = client.post(f"/gradcam?model=oct&target={target}", files={"file": oct_image.read_bytes()})
    _error(r, 422, "invalid_parameter")


def test_unexpected_exception_is_500_without_traceback(
    client: TestClient, oct_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a, **_k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(pipeline_module, "grade", boom)
    r = client.post("/predict", files={"file": oct_image.read_bytes()})
    body = _error(r, 500, "internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text
    assert r.headers["X-Request-ID"] in body["detail"]


# ----------------------------------------------------------------------------- strict app


@pytest.fixture(scope="module")
def strict(small_only_dir: Path) -> Iterator[TestClient]:
    """API key, a 50 kB upload limit, 2 files per batch, CORS for one origin; only the extra model."""
    settings = base_settings(
        small_only_dir,
        api_key=KEY,
        operator_key=OPERATOR_KEY,
        max_upload_mb=LIMIT_MB,
        max_batch_files=2,
        cors_origins="http://ui.example",
    )
    with TestClient(create_app(settings)) as c:
        yield c


AUTH = {"X-API-Key": KEY}
OPERATOR_KEY = "operator-key-of-the-strict-app"


def test_missing_api_key_is_401(strict: TestClient, oct_image: Path) -> None:
    _error(strict.post(f"/predict?model={SMALL_ID}", files={"file": b"x"}), 401, "unauthorized")


def test_wrong_api_key_is_401(strict: TestClient) -> None:
    r = strict.post(f"/predict?model={SMALL_ID}", files={"file": b"x"}, headers={"X-API-Key": "wrong"})
    _error(r, 401, "unauthorized")


def test_api_key_protects_models_and_gradcam(strict: TestClient) -> None:
    _error(strict.get("/models"), 401, "unauthorized")
    _error(strict.post("/gradcam", files={"file": b"x"}), 401, "unauthorized")


def test_ops_routes_stay_open_with_api_key(strict: TestClient) -> None:
    assert strict.get("/health").status_code == 200
    assert strict.get("/metrics").status_code == 200
    assert strict.get("/docs").status_code == 200
    assert strict.get("/ready").status_code == 503  # registered checkpoints absent: see below


def test_right_api_key_is_accepted(strict: TestClient, png_bytes_small: bytes) -> None:
    r = strict.post(f"/predict?model={SMALL_ID}", files={"file": png_bytes_small}, headers=AUTH)
    assert r.status_code == 200, r.text


def test_upload_over_limit_is_413(strict: TestClient) -> None:
    # Body just over the per-file limit: refused while the handler reads it.
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * int(LIMIT_MB * 1e6)
    r = strict.post(f"/predict?model={SMALL_ID}", files={"file": ("big.png", data)}, headers=AUTH)
    body = _error(r, 413, "file_too_large")
    assert "'big.png' is over the limit of 0.05 MB" in body["detail"]


def test_upload_far_over_limit_is_refused_by_content_length(strict: TestClient) -> None:
    data = b"\x00" * int(LIMIT_MB * 1e6 * 4)
    r = strict.post(f"/predict?model={SMALL_ID}", files={"file": data}, headers=AUTH)
    _error(r, 413, "file_too_large")
    # Answered from Content-Length, before parsing; sizes in MB, the limit as configured (per file).
    assert re.fullmatch(
        rf"request body of 0\.2 MB is over the upload limit of {LIMIT_MB:g} MB per file \(RETINA_MAX_UPLOAD_MB\)",
        r.json()["detail"],
    ), r.json()["detail"]


def test_chunked_upload_over_limit_is_cut_off_413(strict: TestClient) -> None:
    boundary = "xyzBOUNDARY"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        yield head
        for _ in range(40):
            yield b"\x00" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = strict.post(
        f"/predict?model={SMALL_ID}",
        content=body(),
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    body = _error(r, 413, "file_too_large")
    # Cut off mid-stream (no Content-Length), in the words of the setting: MB per file, not bytes with slack.
    assert body["detail"] == f"request body is over the upload limit of {LIMIT_MB:g} MB per file (RETINA_MAX_UPLOAD_MB)"


def test_too_many_batch_files_is_413(strict: TestClient, png_bytes_small: bytes) -> None:
    files = [("files", (f"{i}.png", png_bytes_small, "image/png")) for i in range(3)]
    _error(strict.post(f"/predict/batch?model={SMALL_ID}", files=files, headers=AUTH), 413, "too_many_files")


def test_missing_registered_checkpoint_is_not_ready(strict: TestClient) -> None:
    r = strict.get("/ready", headers={"X-API-Key": OPERATOR_KEY})  # the reasons are the operator's to read
    assert r.status_code == 503
    body = r.json()
    assert body["error"] == "not_ready"
    assert "checkpoint not found" in body["detail"]
    public = strict.get("/ready").json()
    assert "checkpoint not found" not in public["detail"] and "/tmp" not in public["detail"]
    assert {m["id"] for m in body["models"] if not m["loaded"]} == set(MODELS)


def test_alias_of_missing_default_is_503(strict: TestClient, png_bytes_small: bytes) -> None:
    r = strict.post("/predict?model=oct", files={"file": png_bytes_small}, headers=AUTH)
    _error(r, 503, "not_ready")


def test_cors_preflight_allows_configured_origin(strict: TestClient) -> None:
    r = strict.options(
        "/predict",
        headers={"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://ui.example"


def test_cors_refuses_other_origin(strict: TestClient) -> None:
    r = strict.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
