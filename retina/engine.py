"""Inference engines for the classification forward pass: torch, ONNX Runtime (fp32 or int8), OpenVINO.

The checkpoint stays the single source of truth: an engine is derived from the loaded torch
model at load time (``torch.onnx.export`` / ``openvino.convert_model``) and cached on disk
under a key made of the checkpoint's SHA-256, the engine, its precision and the library
versions, so a changed checkpoint can never be served by a stale export.

* ``torch``: the model itself, channels-last (oneDNN's fast NHWC kernels).
* ``onnxruntime``: fp32 ONNX on ONNX Runtime's CPU provider; a parity probe against torch at load.
* ``onnxruntime-int8``: static int8 quantisation (QDQ, per-channel weights) of that ONNX file, with
  activation ranges read from a calibration file shipped beside the checkpoint
  (``models/<id>.int8.json``, made by ``python -m training.ship.quantize`` on training-split images and
  bound to the checkpoint by its SHA-256). This CPU has no bf16/AMX, so int8 is its reduced
  precision; the validation metrics re-measured through it are stored in that file.
* ``openvino``: fp32 OpenVINO IR compiled for the CPU (parity probe as for ONNX Runtime).
* ``openvino-int8``: the same int8 QDQ file as ``onnxruntime-int8``, compiled by OpenVINO. On
  this AVX2 CPU (no VNNI) OpenVINO's int8 kernels are both faster (fundus ResNet-18 at 384 px:
  68 ms against ONNX Runtime int8's 95 and fp32's 124, one thread) and closer to fp32: ONNX
  Runtime's u8s8 AVX2 kernels accumulate pairs in int16 and can saturate, which moved the fundus
  refer operating point, while OpenVINO's kept every validated figure (``models/*.int8.json``).
  Each int8 engine has its own re-measured validation block in that file and is served only
  where it is within tolerance.

Every engine is a callable ``float (N, C, S, S) -> logits float32 (N, K)`` (a torch tensor), so
the micro-batcher and the evaluation loops drive any of them the same way. Grad-CAM always uses
the torch model: it needs gradients.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retina.checkpoint import CheckpointMeta
from retina.preprocessing import tail
from retina.serialize import atomic_write

logger = logging.getLogger(__name__)

ENGINES = ("torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")
INT8_ENGINES = ("openvino-int8", "onnxruntime-int8")
# ``auto``: the fastest engine that loads and passes its checks, in this order (measured on the
# 2-core AVX2 box this project runs on; see benchmarks/serve_benchmark.py and backend/README.md).
AUTO_ORDER = ("openvino-int8", "onnxruntime-int8", "onnxruntime", "torch")
CALIBRATION_SUFFIX = ".int8.json"
# fp32 engines must reproduce torch: probabilities within this on the probe batch (measured ~1e-6).
FP32_PROB_TOL = 1e-4
# An int8 engine must reproduce, on the probe batch, the probabilities it gave when its val figures were
# measured (stored beside them): other CPUs (VNNI, AMX) or library versions run other int8 kernels, and
# a kernel difference is what moved ONNX Runtime's fundus refer point here.
INT8_PROBE_TOL = 5e-3

_INPUT, _OUTPUT = "input", "logits"


class EngineError(RuntimeError):
    """An engine could not be built for a checkpoint (missing library, stale calibration, failed parity)."""


@dataclass
class EngineInfo:
    """What serves a model's forward pass, for ``/models`` and the logs."""

    name: str
    requested: str
    detail: str = ""
    fallbacks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "requested": self.requested, "detail": self.detail, "fallbacks": self.fallbacks}


class TorchEngine:
    """The torch model, channels-last, under ``inference_mode``."""

    name = "torch"

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().to(memory_format=torch.channels_last)

    def eval(self) -> TorchEngine:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()


class OnnxRuntimeEngine:
    """An ONNX file on ONNX Runtime's CPU execution provider (``InferenceSession.run`` is thread-safe)."""

    def __init__(self, path: Path, threads: int, name: str) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Like OMP_WAIT_POLICY=PASSIVE for torch: idle pool threads sleep instead of spinning, so
        # the decode threads beside the forward pass on a 2-core box are not starved.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.name = name

    def eval(self) -> OnnxRuntimeEngine:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run([_OUTPUT], {_INPUT: arr})[0])


class OpenVinoEngine:
    """An OpenVINO IR (``.xml``) or ONNX file (the int8 QDQ one) compiled for the CPU.

    Non-quantised ops run in fp32 (this CPU has no bf16); a QDQ file's quantised ops in int8.
    """

    def __init__(self, xml: Path, threads: int, name: str = "openvino") -> None:
        import openvino as ov

        self.name = name

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": max(1, threads),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        # An InferRequest is not thread-safe, and the gate is called from every decode thread:
        # one request per calling thread.
        self._local = threading.local()

    def eval(self) -> OpenVinoEngine:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        out = request.infer({0: arr})
        return torch.from_numpy(np.array(out[self.compiled.output(0)], dtype=np.float32))


Engine = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- cache


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$RETINA_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/retinascope/engines``, else a temp dir."""
    env = os.environ.get("RETINA_ENGINE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "retinascope" / "engines"


class EngineCache:
    """Where exports are looked up (``preferred``, then the temp dir) and written (the first writable one).

    A read-only cache baked into an image (Dockerfile.backend) is used as it is; an export it
    lacks goes to the per-user temp dir instead of failing.
    """

    def __init__(self, preferred: Path) -> None:
        self.dirs = [preferred, Path(tempfile.gettempdir()) / "retinascope-engines"]
        self._write: Path | None = None

    def path(self, name: str) -> Path:
        """An existing cached file called ``name``, else where to write it."""
        for d in self.dirs:
            if (d / name).is_file():
                return d / name
        return self.write_dir() / name

    def write_dir(self) -> Path:
        if self._write is None:
            for d in self.dirs:
                try:
                    d.mkdir(parents=True, exist_ok=True)
                    probe = d / f".probe-{os.getpid()}"
                    probe.write_bytes(b"")
                    probe.unlink()
                except OSError:
                    continue
                self._write = d
                break
            else:
                raise EngineError(f"no writable engine cache directory ({', '.join(map(str, self.dirs))})")
        return self._write


def _atomic_path(final: Path) -> contextlib.AbstractContextManager[Path]:
    """``retina.serialize.atomic_write`` with this process's id in the temp name: several workers (uvicorn,
    the batch scorer's pool, Ray actors) may export the same checkpoint at once."""
    return atomic_write(final, suffix=f".{os.getpid()}.tmp{final.suffix}")


@lru_cache(maxsize=1)
def engine_versions() -> str:
    """The libraries behind the engines, e.g. ``torch2.9.1-onnxruntime1.23.2-openvino2025.3.0``."""
    parts = [f"torch{torch.__version__}"]
    for mod in ("onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            parts.append(f"{mod}{__import__(mod).__version__}")
    return "-".join(parts)


def _key(sha: str, engine: str, extra: str = "") -> str:
    digest = hashlib.sha256(f"{sha}|{engine}|{engine_versions()}|{extra}".encode()).hexdigest()[:20]
    return f"{engine}-{digest}"


# ----------------------------------------------------------------------------- export


def _example(meta: CheckpointMeta, n: int = 1) -> torch.Tensor:
    s = meta.preprocess
    return torch.zeros(n, s.channels, s.size, s.size)


def export_onnx(model: nn.Module, meta: CheckpointMeta, path: Path) -> Path:
    """fp32 ONNX of ``model`` with a dynamic batch axis: input ``(N, C, S, S)``, output ``(N, K)``."""
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, on every export
        with _atomic_path(path) as tmp:
            torch.onnx.export(
                model,
                (_example(meta),),
                str(tmp),
                input_names=[_INPUT],
                output_names=[_OUTPUT],
                dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    return path


def calibration_path(checkpoint_path: str | Path) -> Path:
    """``models/x.pt`` -> ``models/x.int8.json``."""
    p = Path(checkpoint_path)
    return p.with_name(p.stem + CALIBRATION_SUFFIX)


def int8_validation(doc: dict[str, Any], engine: str) -> dict[str, Any]:
    """The val re-measurement of one int8 engine in a calibration file (``{}`` if it was not measured)."""
    validation = doc.get("validation", {})
    if "engines" not in validation and "within_tolerance" in validation:
        raise EngineError("calibration file of an older format (one engine): re-run python -m training.ship.quantize")
    return dict(validation.get("engines", {}).get(engine, {}))


def probe_probabilities(engine: Engine, meta: CheckpointMeta) -> np.ndarray:
    """``float64 (4, K)``: the engine's probabilities on :func:`probe_batch` (stored with int8 val figures)."""
    return _probs(engine(probe_batch(meta)), meta.temperature)


def read_calibration(checkpoint_path: str | Path, sha: str) -> dict[str, Any]:
    """The int8 calibration file beside a checkpoint, checked to belong to it (by SHA-256)."""
    path = calibration_path(checkpoint_path)
    if not path.is_file():
        raise EngineError(f"no int8 calibration {path.name} beside {Path(checkpoint_path).name}")
    doc = json.loads(path.read_text())
    if doc.get("checkpoint_sha256") != sha:
        raise EngineError(
            f"{path.name} was calibrated for checkpoint sha256 {str(doc.get('checkpoint_sha256'))[:12]}..., "
            f"but {Path(checkpoint_path).name} is {sha[:12]}...: re-run python -m training.ship.quantize"
        )
    return doc


def conv_nodes(onnx_path: Path) -> list[str]:
    """Names of the Conv / Gemm / MatMul nodes of an ONNX graph, in graph order."""
    import onnx

    return [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def fp32_nodes(onnx_path: Path, keep: str) -> list[str]:
    """The nodes ``keep`` names (``none``, ``first``, ``last``, ``ends``) that int8 leaves in fp32."""
    nodes = conv_nodes(onnx_path)
    pick = {"none": [], "first": nodes[:1], "last": nodes[-1:], "ends": nodes[:1] + nodes[-1:]}
    if keep not in pick:
        raise EngineError(f"unknown fp32 layer choice {keep!r}; one of {', '.join(pick)}")
    return pick[keep]


def quantize_int8(
    fp32: Path, out: Path, ranges: dict[str, Any] | None, reader: Any = None, keep_fp32: str = "none"
) -> dict[str, Any]:
    """Static int8 QDQ quantisation of ``fp32`` into ``out``; returns the activation ranges used.

    ``ranges`` (ONNX Runtime's calibration-cache dict) skips calibration; otherwise ``reader``
    (an ``onnxruntime.quantization.CalibrationDataReader``) supplies the calibration images.
    Weights per channel int8, activations uint8, MinMax ranges: ONNX Runtime's defaults for CNNs.
    ``keep_fp32`` (see :func:`fp32_nodes`) leaves the first and/or last layer unquantised.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="retina-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        cache = Path(tmp) / "ranges.json"
        quant_pre_process(str(fp32), str(pre))
        if ranges is not None:
            cache.write_text(json.dumps(ranges))
        with _atomic_path(out) as dst:
            quantize_static(
                str(pre),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=fp32_nodes(pre, keep_fp32),
                calibration_cache_path=str(cache),
            )
        return json.loads(cache.read_text())


# ----------------------------------------------------------------------------- build


def probe_batch(meta: CheckpointMeta, n: int = 4, seed: int = 0) -> torch.Tensor:
    """A deterministic model input ``float (n, C, S, S)``: smooth random images through the spec's tail.

    Smooth (upsampled 8x8 noise), not white noise, so activations stay in a natural range.
    """
    s = meta.preprocess
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, s.channels, 8, 8, generator=g)
    u8 = (torch.nn.functional.interpolate(low, size=(s.size, s.size), mode="bilinear") * 255).to(torch.uint8)
    return tail(s)(u8)


def _probs(logits: torch.Tensor, t: float) -> np.ndarray:
    return torch.softmax(logits.double() / t, dim=1).numpy()


def _check_parity(engine: Engine, reference: nn.Module, meta: CheckpointMeta, tol: float) -> float:
    """Max |p_engine - p_torch| on the probe batch; raises :class:`EngineError` over ``tol``."""
    with torch.inference_mode():
        ref = _probs(reference(probe_batch(meta)), meta.temperature)
    got = probe_probabilities(engine, meta)
    diff = float(np.abs(got - ref).max())
    if not np.isfinite(diff) or diff > tol or (got.argmax(1) != ref.argmax(1)).any():
        raise EngineError(f"parity check failed: max probability difference {diff:.2e} (tolerance {tol:.0e})")
    return diff


def _build(
    name: str, model: nn.Module, meta: CheckpointMeta, checkpoint_path: Path, sha: str, threads: int, cache: EngineCache
) -> tuple[Engine, str]:
    if name == "torch":
        return TorchEngine(model), "channels-last eager"
    needs = {"openvino": ("openvino",), "openvino-int8": ("openvino", "onnxruntime")}.get(name, ("onnxruntime",))
    for lib in needs:  # the int8 file is made by ONNX Runtime's quantiser, whichever engine runs it
        try:
            __import__(lib)
        except ImportError as e:
            raise EngineError(f"{name} needs {lib}, which is not installed ({e})") from e
    if name in INT8_ENGINES:
        # The calibration is checked before anything is exported: a missing or stale one costs nothing.
        doc = read_calibration(checkpoint_path, sha)
        checked = int8_validation(doc, name)
        if not checked.get("within_tolerance"):
            raise EngineError(f"{name} metrics outside tolerance on val: {checked.get('summary', 'not measured')}")
    fp32 = cache.path(f"{_key(sha, 'onnx')}.onnx")
    if name in ("onnxruntime", *INT8_ENGINES) and not fp32.is_file():
        export_onnx(model, meta, fp32)
    if name == "onnxruntime":
        engine: Engine = OnnxRuntimeEngine(fp32, threads, name)
        diff = _check_parity(engine, model, meta, FP32_PROB_TOL)
        return engine, f"fp32, parity probe max |dp| {diff:.1e}"
    if name in INT8_ENGINES:
        keep = doc.get("fp32_layers", "none")
        q = cache.path(f"{_key(sha, 'onnx-int8', json.dumps([doc['ranges'], keep], sort_keys=True))}.onnx")
        if not q.is_file():
            quantize_int8(fp32, q, doc["ranges"], keep_fp32=keep)
        engine = OnnxRuntimeEngine(q, threads, name) if name == "onnxruntime-int8" else OpenVinoEngine(q, threads, name)
        got = probe_probabilities(engine, meta)
        want = np.asarray(checked.get("probe_probabilities", []), dtype=np.float64)
        if want.shape != got.shape:
            raise EngineError(
                f"{name}: no probe probabilities recorded with its val figures: re-run python -m training.ship.quantize"
            )
        diff = float(np.abs(got - want).max())
        if not np.isfinite(diff) or diff > INT8_PROBE_TOL:
            raise EngineError(
                f"{name} computes other int8 numbers here than when its val figures were measured (probe max "
                f"|dp| {diff:.1e} > {INT8_PROBE_TOL:.0e}; measured with {checked.get('software', '?')}, here "
                f"{engine_versions()}): re-run python -m training.ship.quantize on this machine"
            )
        calib = f"calibrated on {doc.get('calibration_images', '?')} training images"
        return engine, f"int8 ({calib}; probe max |dp| {diff:.1e}; {checked.get('summary', '')})"
    if name == "openvino":
        import openvino as ov

        xml = cache.path(f"{_key(sha, 'openvino')}.xml")
        if not xml.is_file():
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                s = meta.preprocess
                ovm = ov.convert_model(
                    model.eval(), example_input=_example(meta), input=[(-1, s.channels, s.size, s.size)]
                )
            tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.tmp.xml")
            ov.save_model(ovm, str(tmp), compress_to_fp16=False)
            os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
            os.replace(tmp, xml)
        engine = OpenVinoEngine(xml, threads)
        diff = _check_parity(engine, model, meta, FP32_PROB_TOL)
        return engine, f"fp32, parity probe max |dp| {diff:.1e}"
    raise EngineError(f"unknown engine {name!r}; known: {', '.join(ENGINES)} or auto")


def load_engine(
    requested: str,
    model: nn.Module,
    meta: CheckpointMeta,
    checkpoint_path: str | Path,
    *,
    threads: int = 1,
    cache_dir: str | Path | None = None,
    fallback: bool = True,
) -> tuple[Engine, EngineInfo]:
    """The engine for one checkpoint: ``requested`` (one of :data:`ENGINES` or ``auto``).

    ``auto`` tries :data:`AUTO_ORDER` and takes the first that builds and passes its checks. An
    explicitly requested engine that fails falls back to torch when ``fallback`` (the reason is
    logged as an error and kept in :class:`EngineInfo`), else raises :class:`EngineError`.
    ``model`` must not be an inference-mode tensor owner (export traces it); it is not modified.
    """
    checkpoint_path = Path(checkpoint_path)
    if requested != "auto" and requested not in ENGINES:
        raise EngineError(f"unknown engine {requested!r}; known: {', '.join(ENGINES)} or auto")
    order = AUTO_ORDER if requested == "auto" else ((requested, "torch") if fallback else (requested,))
    sha = file_sha256(checkpoint_path)
    cache = EngineCache(Path(cache_dir) if cache_dir else default_cache_dir())
    info = EngineInfo(name="", requested=requested)
    for name in dict.fromkeys(order):
        try:
            engine, detail = _build(name, model, meta, checkpoint_path, sha, threads, cache)
        except Exception as e:  # an engine problem must never take the model down: torch still serves
            if requested == name:
                logger.error("engine %s for %s failed: %s", name, checkpoint_path.name, e)
            else:
                logger.info("engine %s for %s skipped: %s", name, checkpoint_path.name, e)
            info.fallbacks.append(f"{name}: {e}")
            if not fallback and name == requested:
                raise EngineError(str(e)) from e
            continue
        info.name, info.detail = name, detail
        return engine, info
    raise EngineError(f"no engine could be built for {checkpoint_path.name}: {'; '.join(info.fallbacks)}")
