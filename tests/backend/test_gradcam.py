"""POST /gradcam: every CAM method, sizes, formats, targets; the heatmap explains the /predict tensor."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retina.cam import METHODS, Explainer, heatmap_rgb
from retina.labels import DR_GRADES
from retina.preprocessing import decode_image, eval_transform
from retina.registry import default_for
from tests.backend.helpers import SMALL_ID, assert_probabilities_close, encode, offline_probabilities


def _png(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


def _model_for(method: str) -> tuple[str, int]:
    # ScoreCAM runs one forward per CAM-layer channel: only on the small model (64 channels).
    if method == "scorecam":
        return SMALL_ID, 64
    spec = default_for("fundus")
    return spec.key, spec.preprocess.size


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_returns_a_png_with_a_real_heatmap(
    client: TestClient, fundus_image: Path, oct_image: Path, method: str
) -> None:
    model, side = _model_for(method)
    params = {"model": model, "method": method, "format": "json"}
    image = oct_image if model == SMALL_ID else fundus_image  # the gate refuses the other modality
    r = client.post("/gradcam", params=params, files={"file": image.read_bytes()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == method and body["model"] == model
    overlay = _png(base64.b64decode(body["overlay_png"]))
    heatmap = _png(base64.b64decode(body["heatmap_png"]))
    assert overlay.shape == heatmap.shape == (side, side, 3)
    assert (body["width"], body["height"]) == (side, side)
    assert heatmap.std() > 1.0  # not a constant map


def test_unencoded_plus_in_method_is_understood(client: TestClient, oct_image: Path) -> None:
    r = client.post("/gradcam?method=gradcam++", files={"file": oct_image.read_bytes()})
    assert r.status_code == 200
    assert r.headers["X-Method"] == "gradcam++"


def test_png_body_and_prediction_headers(client: TestClient, fundus_image: Path) -> None:
    data = fundus_image.read_bytes()
    r = client.post("/gradcam?model=fundus", files={"file": data})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    side = default_for("fundus").preprocess.size
    assert _png(r.content).shape == (side, side, 3)
    pred = client.post("/predict?model=fundus", files={"file": data}).json()
    assert r.headers["X-Label"] == pred["label"] in DR_GRADES
    assert float(r.headers["X-Confidence"]) == pytest.approx(pred["confidence"], abs=2e-6)
    assert r.headers["X-Target"] == pred["label"]  # default target: the predicted class
    assert r.headers["X-Model"] == default_for("fundus").key
    assert r.headers["X-Method"] == "gradcam"


def test_heatmap_explains_the_predict_tensor(client: TestClient, api_models_dir: Path, fundus_image: Path) -> None:
    """The service's heatmap equals an offline Grad-CAM of eval_transform(image) for the same target."""
    from retina import checkpoint

    spec = default_for("fundus")
    data = fundus_image.read_bytes()
    r = client.post("/gradcam?model=fundus&target=2&format=json", files={"file": data})
    served = _png(base64.b64decode(r.json()["heatmap_png"])).astype(int)
    model, meta = checkpoint.load(api_models_dir / spec.checkpoint)
    x = eval_transform(meta.preprocess)(decode_image(data)).unsqueeze(0)
    with Explainer(model, spec.cam_layer, "gradcam") as ex:
        want = heatmap_rgb(ex(x, target=2)[0]).astype(int)
    # Float noise moves a few pixels by a JET step or two; another target or tensor moves thousands a lot.
    assert np.abs(served - want).mean() < 0.1
    assert np.abs(served - want).max() <= 8


def test_json_prediction_equals_offline_model(client: TestClient, api_models_dir: Path, fundus_image: Path) -> None:
    spec = default_for("fundus")
    data = fundus_image.read_bytes()
    body = client.post("/gradcam?model=fundus&format=json", files={"file": data}).json()
    want = offline_probabilities(api_models_dir / spec.checkpoint, data)
    assert_probabilities_close(body["probabilities"], want)
    assert body["label"] == body["target"] == max(want, key=want.get)


def test_size_original_matches_upload(client: TestClient, fundus_image: Path) -> None:
    w, h = Image.open(fundus_image).size
    r = client.post("/gradcam?model=fundus&size=original", files={"file": fundus_image.read_bytes()})
    assert r.status_code == 200
    assert _png(r.content).shape == (h, w, 3)


def test_size_original_follows_exif_orientation(client: TestClient, oct_image: Path) -> None:
    img = Image.open(oct_image).convert("L")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; upright is the original orientation
    data = encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes())
    r = client.post("/gradcam?model=oct&size=original", files={"file": data})
    assert r.status_code == 200
    assert _png(r.content).shape[:2] == (img.height, img.width)


def test_target_by_name_and_index(client: TestClient, fundus_image: Path) -> None:
    data = fundus_image.read_bytes()
    by_name = client.post("/gradcam?model=fundus&target=severe", files={"file": data})
    by_index = client.post("/gradcam?model=fundus&target=3", files={"file": data})
    assert by_name.status_code == by_index.status_code == 200
    assert by_name.headers["X-Target"] == by_index.headers["X-Target"] == "Severe"
    assert by_name.content == by_index.content


def test_alpha_changes_the_overlay(client: TestClient, oct_image: Path) -> None:
    data = oct_image.read_bytes()
    a0 = _png(client.post("/gradcam?alpha=0", files={"file": data}).content).astype(int)
    a1 = _png(client.post("/gradcam?alpha=1", files={"file": data}).content).astype(int)
    assert np.abs(a0 - a1).mean() > 5
