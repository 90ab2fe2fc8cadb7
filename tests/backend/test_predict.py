"""POST /predict and /predict/batch on real images: labels, equality with the offline model, formats."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retina.labels import DR_GRADES, OCT_CLASSES
from retina.registry import default_for
from tests.backend.helpers import SMALL_ID, assert_probabilities_close, encode, offline_probabilities
from tests.support import SAMPLES


def _ckpt(models_dir: Path, model_id: str) -> Path:
    return models_dir / f"{model_id}.pt"


def test_predict_oct_returns_an_oct_class(client: TestClient, oct_image: Path) -> None:
    r = client.post("/predict?model=oct", files={"file": (oct_image.name, oct_image.read_bytes(), "image/jpeg")})
    assert r.status_code == 200
    body = r.json()
    assert body["label"] in OCT_CLASSES
    assert body["model"] == default_for("oct").key and body["task"] == "oct"
    assert body["model_version"] == "0.0.0-test"
    assert body["confidence"] == max(body["probabilities"].values())
    assert body["probabilities"][body["label"]] == body["confidence"]
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-6
    assert body["inference_ms"] > 0
    assert body["derived"] is None


def test_predict_defaults_to_oct(client: TestClient, oct_image: Path) -> None:
    r = client.post("/predict", files={"file": oct_image.read_bytes()})
    assert r.status_code == 200
    assert r.json()["task"] == "oct"


def test_predict_equals_offline_model_oct(client: TestClient, api_models_dir: Path, oct_images: list[Path]) -> None:
    spec = default_for("oct")
    for path in oct_images[:4]:  # one image per class
        data = path.read_bytes()
        r = client.post(f"/predict?model={spec.key}", files={"file": data})
        assert r.status_code == 200
        want = offline_probabilities(api_models_dir / spec.checkpoint, data)
        assert_probabilities_close(r.json()["probabilities"], want)


def test_predict_equals_offline_model_fundus(client: TestClient, api_models_dir: Path, fundus_image: Path) -> None:
    spec = default_for("fundus")
    data = fundus_image.read_bytes()
    r = client.post("/predict?model=fundus", files={"file": data})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == spec.key and body["label"] in DR_GRADES
    assert_probabilities_close(body["probabilities"], offline_probabilities(api_models_dir / spec.checkpoint, data))


def test_predict_fundus_derives_referable_and_any(client: TestClient, fundus_image: Path) -> None:
    body = client.post("/predict?model=fundus", files={"file": fundus_image.read_bytes()}).json()
    p = [body["probabilities"][g] for g in DR_GRADES]
    assert body["derived"]["referable"] == pytest.approx(sum(p[2:]))
    assert body["derived"]["any"] == pytest.approx(sum(p[1:]))


def test_predict_applies_checkpoint_temperature(client: TestClient, api_models_dir: Path, oct_image: Path) -> None:
    data = oct_image.read_bytes()
    r = client.post(f"/predict?model={SMALL_ID}", files={"file": data})
    assert r.status_code == 200
    # offline_probabilities divides the logits by the checkpoint's T=2 too.
    assert_probabilities_close(r.json()["probabilities"], offline_probabilities(_ckpt(api_models_dir, SMALL_ID), data))


def test_predict_unknown_model_404(client: TestClient, oct_image: Path) -> None:
    r = client.post("/predict?model=nope", files={"file": oct_image.read_bytes()})
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_model"


def test_predict_missing_file_field_422(client: TestClient) -> None:
    r = client.post("/predict", data={"other": "x"})
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_parameter"


# ----------------------------------------------------------------------------- input formats


def _rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def _exif_rotated(path: Path) -> bytes:
    """Pixels stored rotated, with EXIF orientation 6 telling viewers to rotate back."""
    img = _rgb(path).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def _sixteen_bit(path: Path) -> bytes:
    a = np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(a), "PNG")


FORMATS: dict[str, tuple[str, Callable[[Path], bytes]]] = {
    "png16": ("oct", _sixteen_bit),
    "gray_png": ("oct", lambda p: encode(Image.open(p).convert("L"), "PNG")),
    "rgba_png": ("fundus", lambda p: encode(_rgb(p).convert("RGBA"), "PNG")),
    "palette_png": ("fundus", lambda p: encode(_rgb(p).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")),
    "cmyk_jpeg": ("fundus", lambda p: encode(_rgb(p).convert("CMYK"), "JPEG", quality=95)),
    "exif_rotated_jpeg": ("fundus", _exif_rotated),
    "bmp": ("fundus", lambda p: encode(_rgb(p), "BMP")),
    "tiff": ("fundus", lambda p: encode(_rgb(p), "TIFF")),
    "webp": ("fundus", lambda p: encode(_rgb(p), "WEBP", quality=90)),
    "gif": ("oct", lambda p: encode(Image.open(p).convert("L"), "GIF")),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_input_format_accepted_and_converted_like_training(
    client: TestClient, api_models_dir: Path, oct_image: Path, fundus_image: Path, fmt: str
) -> None:
    task, make = FORMATS[fmt]
    data = make(oct_image if task == "oct" else fundus_image)
    r = client.post(f"/predict?model={task}", files={"file": ("upload.bin", data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    # Same decode (retina.preprocessing.decode_image) as training's load_image: same numbers.
    want = offline_probabilities(api_models_dir / default_for(task).checkpoint, data)
    assert_probabilities_close(r.json()["probabilities"], want)


def test_exif_orientation_is_applied(client: TestClient, fundus_image: Path) -> None:
    with_exif = _exif_rotated(fundus_image)
    img = Image.open(io.BytesIO(with_exif))
    without_exif = encode(img, "JPEG", quality=95)  # same pixels, orientation tag dropped
    a = client.post("/predict?model=fundus", files={"file": with_exif}).json()["probabilities"]
    b = client.post("/predict?model=fundus", files={"file": without_exif}).json()["probabilities"]
    # Were the tag ignored, both would be scored on the same (rotated) pixels.
    assert np.abs(np.subtract(list(a.values()), list(b.values()))).max() > 1e-5


@pytest.mark.parametrize("task", ["oct", "fundus"])
def test_test_models_are_input_sensitive(
    client: TestClient, task: str, oct_images: list[Path], fundus_image: Path
) -> None:
    """Guard: with random weights a model could answer the same for every image, which would
    make the equality tests above pass vacuously; these must differ far beyond their 1e-5."""
    files = oct_images[:2] if task == "oct" else [fundus_image, SAMPLES / "fundus" / "IDRiD_138-grade0.jpeg"]
    a, b = (client.post(f"/predict?model={task}", files={"file": f.read_bytes()}).json() for f in files)
    diff = np.abs(np.subtract(list(a["probabilities"].values()), list(b["probabilities"].values()))).max()
    assert diff > 1e-4


# ----------------------------------------------------------------------------- batch


def test_batch_answers_in_order_with_one_bad_file(
    client: TestClient, api_models_dir: Path, oct_images: list[Path]
) -> None:
    good = [p.read_bytes() for p in oct_images[:3]]
    files = [
        ("files", ("a.jpeg", good[0], "image/jpeg")),
        ("files", ("notes.txt", b"hello, not an image", "text/plain")),
        ("files", ("b.jpeg", good[1], "image/jpeg")),
        ("files", ("empty.jpeg", b"", "image/jpeg")),
        ("files", ("c.jpeg", good[2], "image/jpeg")),
    ]
    r = client.post("/predict/batch?model=oct", files=files)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["a.jpeg", "notes.txt", "b.jpeg", "empty.jpeg", "c.jpeg"]
    assert results[1]["error"] == "unsupported_media_type"
    assert results[3]["error"] == "empty_file"
    ckpt = api_models_dir / default_for("oct").checkpoint
    for i, data in zip((0, 2, 4), good, strict=True):
        assert results[i]["label"] in OCT_CLASSES
        assert_probabilities_close(results[i]["probabilities"], offline_probabilities(ckpt, data))


def test_batch_unknown_model_404(client: TestClient, oct_image: Path) -> None:
    r = client.post("/predict/batch?model=nope", files=[("files", ("a.jpeg", oct_image.read_bytes()))])
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_model"
