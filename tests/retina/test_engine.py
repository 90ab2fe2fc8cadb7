"""Inference engines (``retina.engine``): parity with torch on real images, cache keys, stale calibrations.

The real-image parity tests are the contract of ``RETINA_ENGINE``: an fp32 engine gives the
top class torch gives on every dev image and probabilities within 1e-4; the int8 engine's
calibration file belongs to the shipped checkpoint and records validation metrics within
0.005 of torch, and on the dev images it agrees with torch on the top class (the tolerance
for reduced precision is stated in the test).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from retina import checkpoint
from retina.engine import (
    AUTO_ORDER,
    FP32_PROB_TOL,
    INT8_ENGINES,
    EngineError,
    OnnxRuntimeEngine,
    calibration_path,
    export_onnx,
    file_sha256,
    int8_validation,
    load_engine,
    probe_batch,
    probe_probabilities,
    quantize_int8,
)
from retina.paths import DEFAULT_MODELS_DIR
from retina.preprocessing import decode_image, pil_to_uint8_tensor, prepare, tail
from retina.registry import MODELS

SHIPPED = {spec.task: DEFAULT_MODELS_DIR / spec.checkpoint for spec in MODELS.values()}
# int8 (where served): the largest probability change accepted on a dev image (0.02 measured on val).
INT8_PROB_TOL = 0.05


def _dev_inputs(task: str, root: Path, spec) -> torch.Tensor:  # noqa: ANN001
    pattern = {"oct": "oct-dev/**/*.jpeg", "fundus": "fundus-dev/**/*.jpeg"}[task]
    files = sorted(root.glob(pattern))
    assert files, f"no {task} dev images under {root}"
    u8 = torch.stack([pil_to_uint8_tensor(prepare(decode_image(f.read_bytes()), spec)) for f in files])
    return tail(spec)(u8)


def _probs(engine, x: torch.Tensor, t: float) -> np.ndarray:  # noqa: ANN001
    outs = [engine(chunk) for chunk in x.split(16)]
    return torch.softmax(torch.cat(outs).double() / t, dim=1).numpy()


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("engine_name", ["onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8"])
@pytest.mark.parametrize("task", ["oct", "fundus"])
def test_engine_matches_torch_on_every_dev_image(
    task: str, engine_name: str, engine_cache: Path, oct_dev: Path, fundus_dev: Path
) -> None:
    if engine_name.startswith("openvino"):
        pytest.importorskip("openvino")
    path = SHIPPED[task]
    int8 = engine_name in INT8_ENGINES
    if int8:
        v = int8_validation(json.loads(calibration_path(path).read_text()), engine_name)
        if not v["within_tolerance"]:
            pytest.skip(f"{engine_name} is not served for {path.name} (outside tolerance on val: {v['summary']})")
    model, meta = checkpoint.load(path)
    engine, info = load_engine(engine_name, model, meta, path, threads=2, cache_dir=engine_cache, fallback=False)
    assert info.name == engine_name, info
    x = _dev_inputs(task, oct_dev.parent, meta.preprocess)
    with torch.inference_mode():
        ref = torch.softmax(model(x).double() / meta.temperature, dim=1).numpy()
    got = _probs(engine, x, meta.temperature)
    diff = np.abs(got - ref).max(axis=1)
    agree = got.argmax(1) == ref.argmax(1)
    if int8:
        assert agree.all(), f"int8 top class differs on {int((~agree).sum())} of {len(agree)} dev images"
        assert diff.max() <= INT8_PROB_TOL, f"int8 probability change {diff.max():.3f} > {INT8_PROB_TOL}"
    else:
        assert agree.all(), f"top class differs on {int((~agree).sum())} of {len(agree)} dev images"
        assert diff.max() <= FP32_PROB_TOL, f"max probability difference {diff.max():.2e}"


@pytest.mark.parametrize("task", ["oct", "fundus"])
def test_shipped_int8_calibration_belongs_to_the_checkpoint_and_states_its_effect(task: str) -> None:
    """The int8 file is bound to the checkpoint, calibrated on train images, and honest about val."""
    path = SHIPPED[task]
    doc = json.loads(calibration_path(path).read_text())
    assert doc["checkpoint_sha256"] == file_sha256(path), "re-run python -m training.ship.quantize"
    v = doc["validation"]
    assert v["split"] == "val" and v["n"] > 0 and doc["calibration_split"].startswith("train")
    assert set(v["engines"]) == set(INT8_ENGINES), "both int8 engines re-measured"
    for engine_name in INT8_ENGINES:
        e = int8_validation(doc, engine_name)
        for name, delta in e["delta"].items():
            assert abs(e["int8"][name] - v["torch_fp32"][name] - delta) < 1e-9
        # AUC, balanced accuracy and sensitivity / specificity at every served operating point.
        assert {"macro_auc", "balanced_accuracy"} <= set(e["delta"]) == set(v["torch_fp32"])
        assert any(k.endswith("_sensitivity") for k in e["delta"])
        assert any(k.endswith("_specificity") for k in e["delta"])
        assert e["within_tolerance"] == all(abs(d) <= v["tolerance"] for d in e["delta"].values())


@pytest.mark.slow
def test_auto_serves_int8_only_where_it_kept_every_validated_figure(tmp_path: Path) -> None:
    for task, path in SHIPPED.items():
        doc = json.loads(calibration_path(path).read_text())
        ok = [e for e in INT8_ENGINES if int8_validation(doc, e)["within_tolerance"]]
        model, meta = checkpoint.load(path)
        _, info = load_engine("auto", model, meta, path, cache_dir=tmp_path)
        # The first int8 engine (INT8_ENGINES is AUTO_ORDER's int8 part) that kept every figure, else fp32.
        assert AUTO_ORDER[: len(INT8_ENGINES)] == INT8_ENGINES
        assert info.name == (ok[0] if ok else "onnxruntime"), (task, info)


def _small_checkpoint(dirpath: Path, seed: int, make_checkpoint) -> Path:  # noqa: ANN001
    return make_checkpoint(MODELS["oct-resnet18"], dirpath / "oct-resnet18.pt", seed)


@pytest.mark.slow
def test_exports_are_cached_by_checkpoint_hash(tmp_path: Path, make_checkpoint) -> None:  # noqa: ANN001
    cache = tmp_path / "cache"
    a = _small_checkpoint(tmp_path / "a", 0, make_checkpoint)
    b = _small_checkpoint(tmp_path / "b", 1, make_checkpoint)
    outs = []
    for path in (a, b, a):
        model, meta = checkpoint.load(path)
        engine, info = load_engine("onnxruntime", model, meta, path, cache_dir=cache, fallback=False)
        assert info.name == "onnxruntime"
        x = probe_batch(meta)
        with torch.inference_mode():
            np.testing.assert_allclose(engine(x).numpy(), model(x).numpy(), atol=1e-3, rtol=1e-3)
        outs.append(engine(x).numpy())
    assert len(list(cache.glob("onnx-*.onnx"))) == 2, "one export per distinct checkpoint"
    assert not np.allclose(outs[0], outs[1]), "a different checkpoint must not reuse the other's export"
    np.testing.assert_array_equal(outs[0], outs[2])


def test_stale_or_missing_calibration_falls_back_to_torch(tmp_path: Path, make_checkpoint) -> None:  # noqa: ANN001
    path = _small_checkpoint(tmp_path, 0, make_checkpoint)
    model, meta = checkpoint.load(path)
    engine, info = load_engine("onnxruntime-int8", model, meta, path, cache_dir=tmp_path / "c")
    assert info.name == "torch" and "no int8 calibration" in info.fallbacks[0]
    # A calibration made for another checkpoint (the shipped OCT one) is refused by hash.
    shutil.copy(calibration_path(SHIPPED["oct"]), calibration_path(path))
    _, info = load_engine("onnxruntime-int8", model, meta, path, cache_dir=tmp_path / "c")
    assert info.name == "torch" and "calibrated for checkpoint sha256" in info.fallbacks[0]
    with pytest.raises(EngineError, match="calibrated for checkpoint"):
        load_engine("onnxruntime-int8", model, meta, path, cache_dir=tmp_path / "c", fallback=False)
    with pytest.raises(EngineError, match="unknown engine"):
        load_engine("tensorrt", model, meta, path)
    x = probe_batch(meta)
    with torch.inference_mode():
        np.testing.assert_allclose(engine(x).numpy(), model(x).numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["onnxruntime", "openvino"])
def test_engines_are_safe_to_call_from_several_threads(engine_name: str, tmp_path: Path) -> None:
    """The gate's engine is called from every decode thread at once: each call gets its own answer."""
    if engine_name == "openvino":
        pytest.importorskip("openvino")
    from concurrent.futures import ThreadPoolExecutor

    from retina.gate import GATE_FILE, ImageGate

    path = DEFAULT_MODELS_DIR / GATE_FILE
    gate = ImageGate.load(path)
    assert gate.use_engine(engine_name, path, tmp_path) == engine_name
    views = torch.randint(0, 255, (24, 3, gate.spec.size, gate.spec.size), dtype=torch.uint8)
    alone = [gate.probabilities(v[None]) for v in views]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda v: gate.probabilities(v[None]), views))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_auto_takes_the_next_int8_engine_and_rechecks_its_numbers_at_load(tmp_path: Path, make_checkpoint) -> None:  # noqa: ANN001
    """openvino-int8 outside tolerance -> onnxruntime-int8; its probe probabilities are re-checked at load."""
    path = _small_checkpoint(tmp_path, 0, make_checkpoint)
    model, meta = checkpoint.load(path)
    # Same architecture as the shipped OCT model: its activation ranges name the same tensors.
    shipped = json.loads(calibration_path(SHIPPED["oct"]).read_text())
    fp32, q = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(model, meta, fp32)
    quantize_int8(fp32, q, shipped["ranges"], keep_fp32=shipped["fp32_layers"])
    probe = probe_probabilities(OnnxRuntimeEngine(q, 1, "onnxruntime-int8"), meta)

    def write(ort_probe: list, validation: dict | None = None) -> None:  # noqa: ANN001
        engines = {
            "openvino-int8": {"within_tolerance": False, "summary": "moved a figure"},
            "onnxruntime-int8": {"within_tolerance": True, "summary": "kept", "probe_probabilities": ort_probe},
        }
        doc = {**shipped, "checkpoint_sha256": file_sha256(path), "validation": validation or {"engines": engines}}
        calibration_path(path).write_text(json.dumps(doc))

    write(probe.tolist())
    _, info = load_engine("auto", model, meta, path, cache_dir=tmp_path / "c")
    assert info.name == "onnxruntime-int8", info
    assert any(f.startswith("openvino-int8:") and "outside tolerance" in f for f in info.fallbacks)
    write((probe + 0.1).tolist())  # as if measured with other int8 kernels
    _, info = load_engine("auto", model, meta, path, cache_dir=tmp_path / "c")
    assert info.name == "onnxruntime" and any("other int8 numbers" in f for f in info.fallbacks), info
    write([])
    _, info = load_engine("auto", model, meta, path, cache_dir=tmp_path / "c")
    assert info.name == "onnxruntime" and any("no probe probabilities" in f for f in info.fallbacks), info
    write([], {"within_tolerance": True, "summary": "one engine"})
    with pytest.raises(EngineError, match="older format"):
        load_engine("onnxruntime-int8", model, meta, path, cache_dir=tmp_path / "c", fallback=False)
