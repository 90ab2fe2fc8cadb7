"""Loads, validates and holds the served models (one :class:`ModelStore` per app, on ``app.state``).

What gets served from ``settings.models_dir``:

* every model of ``retina.registry.MODELS`` (or the subset in ``RETINA_MODELS``), from its
  registered file name, loaded with ``retina.checkpoint.load`` and checked with
  ``registry.mismatches`` (arch, task, class names, preprocessing spec);
* every other ``*.pt`` file as an extra model whose id is the file stem, validated by its
  own metadata (loadable, known arch, head size = class names, CAM layer exists).

Loading, those checks and the choice of engine are ``retina.loading`` (``load_model``,
``engine_for``, ``load_gate``), which batch scoring uses too.

A missing, corrupt or mismatched checkpoint never stops the process and is never replaced
by random weights: it is logged loudly, recorded in :attr:`ModelStore.failed`, ``/ready``
answers 503 naming it, and requests for it get 503 ``not_ready``. The other models serve.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backend.app.core.config import Settings
from backend.app.services.batcher import MicroBatcher
from backend.app.services.errors import not_ready, unknown_model
from backend.app.services.metrics import ServiceMetrics
from backend.app.services.sites import SiteRegistry, load_sites
from retina import registry
from retina.checkpoint import CheckpointError, CheckpointMeta
from retina.engine import Engine, EngineError, EngineInfo
from retina.gate import GATE_FILE, ImageGate
from retina.loading import LoadedModel, ModelRejected, engine_for, gate_path, load_gate, load_model
from retina.preprocessing import PreprocessSpec, tail
from retina.runtime import resolve_device

logger = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """A loaded, validated model and everything needed to serve it.

    Attributes:
        id: model id used in ``?model=``.
        task: ``oct`` or ``fundus``.
        meta: checkpoint metadata (preprocess spec, class names, calibration, card ...).
        model: the torch network in eval mode on the serving device (the source of every engine).
        engine: what runs the classification forward (``retina.engine``; driven only by ``batcher``).
        engine_info: which engine that is, and why (fallbacks).
        cam_model: an independent copy for CAM, with a hook that makes the CAM layer's
            output a gradient leaf; hooks never touch ``model``, so CAM and the batcher run
            concurrently without mixing activations. Guarded by ``cam_lock``.
        cam_layer: submodule path of the CAM target layer.
        registered: True for models of ``retina.registry.MODELS``.
    """

    id: str
    task: str
    path: Path
    meta: CheckpointMeta
    model: nn.Module
    cam_model: nn.Module
    cam_layer: str
    device: torch.device
    batcher: MicroBatcher
    registered: bool
    engine: Engine
    engine_info: EngineInfo
    description: str = ""
    cam_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.meta.preprocess

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def temperature(self) -> float:
        return self.meta.temperature

    def to_input(self, u8: torch.Tensor) -> torch.Tensor:
        """Prepared ``uint8 (N, C, S, S)`` -> the model's float input, on the serving device.

        This is ``retina.preprocessing.tail(spec)`` from the checkpoint's own spec: the same
        function the micro-batcher applies, so /gradcam explains the tensor /predict scores.
        """
        return self.batcher.to_input(u8.to(self.device))


@dataclass(frozen=True)
class FailedModel:
    """A model that should be served but is not, and why."""

    id: str
    task: str | None
    path: Path
    error: str
    registered: bool
    spec: registry.ModelSpec | None = None


def _make_cam_copy(model: nn.Module, layer: str) -> nn.Module:
    """A frozen copy of ``model`` whose ``layer`` output starts the autograd graph.

    CAM needs gradients only from the logits back to ``layer``. Freezing the weights and
    turning the layer's output into a fresh leaf makes backward stop there, instead of
    also computing every weight gradient down to the input (about 2 extra forward passes).
    The clone keeps in-place ops after the layer (ReLU(inplace=True)) legal.
    """
    cam_model = copy.deepcopy(model).eval()
    for p in cam_model.parameters():
        p.requires_grad_(False)

    def _leaf(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and not output.requires_grad:
            return output.detach().requires_grad_(True).clone()
        return None

    cam_model.get_submodule(layer).register_forward_hook(_leaf)
    return cam_model


class ModelStore:
    """Every served model and every failure, plus task aliases (``oct``/``fundus``)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.served: dict[str, ServedModel] = {}
        self.failed: dict[str, FailedModel] = {}
        self.problems: list[str] = []  # service-level problems (e.g. a default that is not served)
        self.defaults: dict[str, str | None] = {}
        self.device = torch.device("cpu")
        self.gate: ImageGate | None = None
        self.sites = SiteRegistry()  # RETINA_SITES_DIR profiles, read against the served models in load()

    # ----------------------------------------------------------------- loading
    def load(self) -> None:
        """Load and validate every model; record failures instead of raising."""
        s = self.settings
        try:
            self.device = resolve_device(s.device, "RETINA_DEVICE")
        except RuntimeError as e:
            self.problems.append(str(e))
            logger.error("%s; serving on cpu instead is refused, no model will load", e)
            self._fail_all(str(e))
            return
        models_dir = Path(s.models_dir)
        logger.info("loading models from %s onto %s", models_dir, self.device)
        wanted = list(s.models) or list(registry.MODELS)
        for key in wanted:
            if key not in registry.MODELS:
                self._fail(key, None, models_dir, f"{key!r} is not a registered model (RETINA_MODELS)", False)
                continue
            spec = registry.MODELS[key]
            self._load_one(key, models_dir / spec.checkpoint, spec)
        registered_files = {spec.checkpoint for spec in registry.MODELS.values()}
        if models_dir.is_dir():
            for path in sorted(models_dir.glob("*.pt")):
                if path.name in registered_files or path.name == GATE_FILE:  # the gate is no /predict model
                    continue
                if path.stem in registry.MODELS:
                    self._fail(path.stem, None, path, "file name collides with a registered model id", False)
                    continue
                self._load_one(path.stem, path, None)
        else:
            self.problems.append(f"models directory {models_dir} does not exist")
            logger.error("models directory %s does not exist", models_dir)
        self._resolve_defaults()
        self._load_gate()
        self.sites, site_problems = load_sites(Path(s.sites_dir), self.served.values(), s.default_site)
        self.problems += site_problems
        for m in self.served.values():
            logger.info(
                "serving %s (%s, %s, v%s, T=%.3g) from %s",
                m.id,
                m.task,
                m.meta.arch,
                m.meta.version,
                m.temperature,
                m.path,
            )
        for f in self.failed.values():
            logger.error("MODEL NOT SERVED: %s: %s", f.id, f.error)
        for p in self.problems:
            logger.error("SERVICE NOT READY: %s", p)

    def _load_gate(self) -> None:
        """The image gate's fitted parameters; without them (when enabled) the service is not ready.

        Serving without the gate would label any photo as a retinal disease, so a missing or
        unreadable gate file is a readiness problem, never a silent pass-through.
        """
        if not self.settings.gate_enabled:
            logger.warning("image gate DISABLED (RETINA_GATE_ENABLED=false): any image will be classified")
            return
        # A custom models dir may bring its own gate; otherwise the shipped one applies.
        path = gate_path(Path(self.settings.models_dir), self.settings.gate_file)
        if not path.is_file():
            self.problems.append(f"image gate file {path} not found (train it with python -m training.fit_gate)")
            return
        try:
            self.gate = load_gate(path, self.settings.engine, self.settings.engine_cache)
        except (CheckpointError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            self.problems.append(f"image gate file {path} is invalid: {type(e).__name__}: {e}")
        else:
            logger.info(
                "image gate from %s (v%s, thresholds %s, engine %s)",
                path,
                self.gate.version,
                self.gate.thresholds,
                self.gate.engine,
            )

    def _fail_all(self, error: str) -> None:
        for key in self.settings.models or registry.MODELS:
            spec = registry.MODELS.get(key)
            self._fail(key, spec.task if spec else None, Path(self.settings.models_dir), error, spec is not None, spec)

    def _fail(
        self,
        key: str,
        task: str | None,
        path: Path,
        error: str,
        registered: bool,
        spec: registry.ModelSpec | None = None,
    ) -> None:
        self.failed[key] = FailedModel(key, task, path, error, registered, spec)
        if self.metrics is not None:
            self.metrics.model_loaded.labels(key).set(0)

    def _load_one(self, key: str, path: Path, spec: registry.ModelSpec | None) -> None:
        start = time.perf_counter()
        try:
            # The checks (registry match, CAM layer, temperature) are the core's, shared with batch scoring.
            loaded = load_model(key, path, spec, self.device)
            engine, engine_info = self._engine_for(loaded)
        except CheckpointError as e:
            task = e.task if isinstance(e, ModelRejected) else (spec.task if spec else None)
            self._fail(key, task, path, str(e), spec is not None, spec)
            return
        except Exception as e:  # anything else in a checkpoint must not take the service down either
            logger.exception("unexpected error loading %s", path)
            self._fail(key, spec.task if spec else None, path, f"{type(e).__name__}: {e}", spec is not None, spec)
            return
        model, meta, cam_layer = loaded.model, loaded.meta, loaded.cam_layer
        s = self.settings
        batcher = MicroBatcher(
            key,
            engine,
            tail(meta.preprocess),
            meta.temperature,
            self.device,
            max_batch=s.batch_max_size,
            wait_s=s.batch_wait_ms / 1000.0,
            metrics=self.metrics,
        )
        served = ServedModel(
            id=key,
            task=meta.task,
            path=path,
            meta=meta,
            model=model,
            cam_model=_make_cam_copy(model, cam_layer),
            cam_layer=cam_layer,
            device=self.device,
            batcher=batcher,
            registered=loaded.registered,
            engine=engine,
            engine_info=engine_info,
            description=loaded.description,
        )
        self._warm_up(served)
        self.served[key] = served
        if self.metrics is not None:
            self.metrics.model_loaded.labels(key).set(1)
        logger.debug("loaded %s in %.2f s", key, time.perf_counter() - start)

    def _engine_for(self, loaded: LoadedModel) -> tuple[Engine, EngineInfo]:
        """The forward-pass engine (``RETINA_ENGINE``, ``retina.loading.engine_for``); torch when no other builds."""
        s = self.settings
        try:
            engine, info = engine_for(s.engine, loaded, self.device, threads=s.torch_threads, cache_dir=s.engine_cache)
        except EngineError as e:  # not even torch: a broken model, which the loader reports
            raise CheckpointError(f"no inference engine for {loaded.id}: {e}") from e
        logger.info("%s: engine %s (%s)", loaded.id, info.name, info.detail)
        return engine, info

    def _warm_up(self, m: ServedModel) -> None:
        # First forwards allocate buffers / pick kernels; pay that at startup, not on request 1.
        spec = m.preprocess
        with torch.inference_mode():
            for n in sorted({1, min(4, self.settings.batch_max_size)}):
                x = torch.zeros(n, spec.channels, spec.size, spec.size, dtype=torch.uint8, device=self.device)
                m.engine(m.batcher.to_input(x))

    def _resolve_defaults(self) -> None:
        configured = {"oct": self.settings.default_oct, "fundus": self.settings.default_fundus}
        for task in registry.TASKS:
            key = configured.get(task)
            if key is None:
                try:
                    key = registry.default_for(task).key
                except KeyError:
                    key = next((m.id for m in self.served.values() if m.task == task), None)
            self.defaults[task] = key
            if key is None:
                self.problems.append(f"no model serves task {task!r}")
            elif key not in self.served and key not in self.failed:
                where = self.settings.models_dir
                self.problems.append(f"default model for {task!r} is {key!r}, which is not in {where}")
            elif key in self.served and self.served[key].task != task:
                self.problems.append(f"default model for {task!r} is {key!r}, a {self.served[key].task} model")

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for m in self.served.values():
            m.batcher.start()

    def stop(self) -> None:
        for m in self.served.values():
            m.batcher.stop()

    # ----------------------------------------------------------------- queries
    @property
    def ready(self) -> bool:
        return not self.failed and not self.problems and bool(self.served)

    def not_ready_reasons(self) -> list[str]:
        reasons = [f"model {f.id}: {f.error}" for f in self.failed.values()]
        reasons += self.problems
        if not self.served and not reasons:
            reasons.append(f"no model is served from {self.settings.models_dir}")
        return reasons

    def is_default(self, key: str) -> bool:
        return key in self.defaults.values()

    # ``retina.assessment.ModelChoice``: what the domain step's routing asks of the served models.
    def for_modality(self, modality: str) -> ServedModel:
        """``model=auto``: the default model of the gate's modality (503 when it is not served)."""
        return self.resolve(modality)

    def default_id(self, modality: str) -> str | None:
        """The default model id for ``modality`` (named in ``wrong_modality``'s advice)."""
        return self.defaults.get(modality)

    def resolve(self, name: str) -> ServedModel:
        """``?model=`` value (id or task alias) -> served model; 404 unknown, 503 not ready."""
        key: str | None = name
        if name in registry.TASKS:
            key = self.defaults.get(name)
            if key is None:
                raise not_ready(f"no model is configured for task {name!r}")
        assert key is not None
        if key in self.served:
            served = self.served[key]
            if name in registry.TASKS and served.task != name:
                raise not_ready(f"default model for {name!r} is {key!r}, a {served.task} model")
            return served
        if key in self.failed:
            raise not_ready(f"model {key} is not ready: {self.failed[key].error}")
        if name in registry.TASKS:
            raise not_ready(f"default model for {name!r} is {key!r}, which is not loaded")
        raise unknown_model(name, sorted(self.served) + list(registry.TASKS))
