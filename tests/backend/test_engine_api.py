"""``RETINA_ENGINE`` through the API: /models names the engine, answers equal torch's, failures fall back visibly."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.app.core.config import Settings
from retina.registry import MODELS
from tests.backend.helpers import SMALL_ID, save_lively_checkpoint, save_small_model


def _predict(client, image: Path, model: str) -> dict:  # noqa: ANN001
    r = client.post(f"/predict?model={model}", files={"file": (image.name, image.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_onnxruntime_engine_serves_the_same_answers_as_torch(tmp_path: Path, make_client, oct_image: Path) -> None:  # noqa: ANN001
    models = tmp_path / "models"
    models.mkdir()
    save_lively_checkpoint(MODELS["oct-resnet18"], models / "oct-resnet18.pt")
    answers, engines = {}, {}
    for engine in ("onnxruntime", "torch"):
        with make_client(models, engine=engine, engine_cache=tmp_path / "cache", models=["oct-resnet18"]) as c:
            info = next(m for m in c.get("/models").json() if m["id"] == "oct-resnet18")
            engines[engine] = info["engine"]
            answers[engine] = _predict(c, oct_image, "oct-resnet18")
            # /gradcam draws on torch but explains the served engine's answer.
            r = c.post("/gradcam?model=oct-resnet18", files={"file": (oct_image.name, oct_image.read_bytes())})
            assert r.status_code == 200, r.text
            assert r.headers["X-Label"] == answers[engine]["label"]
            assert abs(float(r.headers["X-Confidence"]) - answers[engine]["confidence"]) < 1e-3
    assert engines["onnxruntime"]["name"] == "onnxruntime" and "parity" in engines["onnxruntime"]["detail"]
    assert engines["torch"]["name"] == "torch"
    a, b = answers["onnxruntime"], answers["torch"]
    assert a["label"] == b["label"]
    for name, p in a["probabilities"].items():
        assert abs(p - b["probabilities"][name]) < 1e-4, name
    assert a["gate"] == b["gate"], "the gate decides the same on either engine"


def test_an_engine_that_cannot_be_built_falls_back_to_torch_and_says_so(
    tmp_path: Path, make_client, oct_image: Path
) -> None:  # noqa: ANN001
    models = tmp_path / "models"
    models.mkdir()
    save_small_model(models / f"{SMALL_ID}.pt")  # no int8 calibration file beside it
    with make_client(models, engine="onnxruntime-int8", engine_cache=tmp_path / "cache", models=[]) as c:
        info = next(m for m in c.get("/models").json() if m["id"] == SMALL_ID)
        assert info["engine"]["name"] == "torch"
        assert info["engine"]["requested"] == "onnxruntime-int8"
        assert any("no int8 calibration" in f for f in info["engine"]["fallbacks"])
        assert _predict(c, oct_image, SMALL_ID)["probabilities"]


def test_unknown_engine_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        Settings(engine="tensorrt")
