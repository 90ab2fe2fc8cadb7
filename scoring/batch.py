"""Batch scoring of image archives: the service's domain step, one row per file, locally or on Ray.

``python -m scoring`` (``scoring/cli.py``) is the command line; this module is the library it,
the PACS tool, the tests and the benchmark import. ``scoring.inputs`` lists the files,
``scoring.rows`` says what a row holds, ``scoring.sinks`` writes them.

Every file goes through the same steps as an upload to ``POST /predict`` (the core functions the
service's pipeline calls, not a copy of them):

    bytes -> retina.intake.decode_and_check (sniff, decode)
          -> retina.assessment.assess_image: the image gate -> route (``auto``: the model of the
             gate's modality; refusals) -> retina.intake.prepare_image -> forward_probabilities
             -> grade (calibrated probabilities -> referral -> label)   or ungradable

and the models, their engines and the gate are loaded with ``retina.loading`` exactly as the
service's model store loads them (same registry checks, same ``channels_last`` network, same
engine choice). A row is written for every file: a file that cannot be read or decoded, or that
the gate refuses, is a row with ``error`` and ``error_detail`` (the API's codes:
``unsupported_media_type``, ``invalid_image``, ``not_retinal_image`` ...), never a crash.

Each image is scored in a forward pass of its own (batch of one), as the service scores a
request that arrives alone. Batched forwards give the same probabilities only to ~1e-7 (the
kernels differ by batch size), so with per-image passes a row never depends on which chunk,
worker or Ray batch its image landed in: the local pool, Ray and a resumed run give identical
rows. The cost, measured on 2 CPU cores with one torch thread: 8 OCT scans take 0.25 s of forward
passes one by one against 0.17 s as one batch of 8; the 10 fundus photos of samples/ took 1.46 s one by
one against 1.69 s batched (no gain).

Where the work runs (both yield lists of rows; the caller writes them with a ``scoring.sinks.ResultSink``):

* :func:`score_local`: a process pool (spawned, one :class:`BatchScorer` per worker process,
  so the models load once per worker), or in-process for one worker;
* :func:`score_ray`: Ray Data, ``map_batches`` with :class:`RayScorer` (a callable class: the
  models load once per actor) on an actor pool of the given size, on the cluster
  :func:`connect_ray` joins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retina import intake, registry
from retina.assessment import Assessment, Refusal, assess_image, forward_probabilities
from retina.engine import Engine
from retina.errors import ImageDecodeError, public_code
from retina.loading import LoadedModel, engine_for, gate_path, load_gate, load_model, locate
from retina.paths import DEFAULT_MODELS_DIR
from retina.preprocessing import tail
from retina.referral import ReferralThresholds
from scoring.rows import assessment_row, error_row, refusal_row, rows_to_table

logger = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # the service's RETINA_MAX_IMAGE_PIXELS default
# Files are read whole; past this they are an error row instead of a memory spike. Above the
# service's 10 MB upload limit: archives hold DICOMs of tens of MB that the service never sees.
DEFAULT_MAX_FILE_BYTES = 100_000_000


@dataclass(frozen=True)
class ScoreConfig:
    """What a scorer needs; plain values, so it pickles to pool workers and Ray actors.

    Attributes:
        models_dir: the checkpoints (the service's ``RETINA_MODELS_DIR``); must be readable by every worker.
        model: ``oct``, ``fundus`` (the registry's defaults), a model id, or ``auto`` (by the gate's modality).
        gate_file: the image gate; None: ``models_dir/image-gate.pt``, else the shipped one (as the service).
        max_image_pixels: decompression-bomb guard, width * height (the service's default).
        max_file_bytes: larger files are ``file_too_large`` error rows (not read).
        thresholds: referral overrides (the service's ``RETINA_REFERRAL_*``); None = the checkpoints' points.
        device: ``cpu`` or ``cuda``.
        torch_threads: intra-op threads of this worker; None leaves torch's default.
        engine: the forward pass (``retina.engine``: ``auto``, ``torch``, ``onnxruntime`` ...), as the
            service's ``RETINA_ENGINE``; the gate's CNN follows it as in the service.
    """

    models_dir: Path = DEFAULT_MODELS_DIR
    model: str = AUTO
    gate_file: Path | None = None
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    thresholds: ReferralThresholds = field(default_factory=ReferralThresholds)
    device: str = "cpu"
    torch_threads: int | None = None
    # The service's RETINA_ENGINE (its default too): the rows then equal /predict's answers.
    engine: str = field(default_factory=lambda: os.environ.get("RETINA_ENGINE", "auto"))


class BatchScorer:
    """The models, engines and gate of one worker, loaded once; :meth:`score_paths` turns files into rows.

    Raises ``retina.loading.ModelRejected`` (or ``KeyError`` for an unknown model name) at
    construction, never later: a model the service would refuse is refused here. It is the
    ``retina.assessment.ModelChoice`` that ``auto`` is routed by (:meth:`for_modality`).
    """

    def __init__(self, config: ScoreConfig) -> None:
        self.config = config
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.device = torch.device(config.device)
        models_dir = Path(config.models_dir)
        self.gate = load_gate(gate_path(models_dir, config.gate_file), config.engine)
        names = list(registry.TASKS) if config.model == AUTO else [config.model]
        self.models: dict[str, LoadedModel] = {}
        for name in names:
            key, path, spec = locate(name, models_dir)
            self.models[key] = load_model(key, path, spec, self.device)
        self.requested = None if config.model == AUTO else next(iter(self.models.values()))
        self.by_task = {m.task: m for m in self.models.values()}
        self._tails = {m.id: tail(m.meta.preprocess) for m in self.models.values()}
        # The service's engine choice (a failing engine falls back to torch, logged).
        threads = config.torch_threads or 1
        self.engines: dict[str, Engine] = {
            m.id: engine_for(config.engine, m, self.device, threads=threads)[0] for m in self.models.values()
        }

    def describe(self) -> str:
        return ", ".join(f"{m.id} v{m.meta.version} ({m.task})" for m in self.models.values())

    # ----------------------------------------------------------------- ModelChoice
    def for_modality(self, modality: str) -> LoadedModel:
        """``auto``: the loaded model of the gate's modality (both tasks' defaults are loaded for ``auto``)."""
        return self.by_task[modality]

    def default_id(self, modality: str) -> str | None:
        """The model named in ``wrong_modality``'s advice (the service names its default for that modality)."""
        try:
            return registry.default_for(modality).key
        except KeyError:
            return None

    # ----------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score_paths(self, paths: Sequence[str]) -> list[dict[str, Any]]:
        """One row (see ``scoring.rows.COLUMNS``) per path, in order."""
        return [self.score_path(p) for p in paths]

    def score_path(self, path: str) -> dict[str, Any]:
        limit = self.config.max_file_bytes
        try:
            size = os.stat(path).st_size
            if size > limit:
                return error_row(
                    path, None, "file_too_large", f"file is {size / 1e6:g} MB, over the limit of {limit / 1e6:g} MB"
                )
            data = Path(path).read_bytes()
        except OSError as e:
            return error_row(path, None, "unreadable_file", f"{type(e).__name__}: {e.strerror or e}")
        sha = hashlib.sha256(data).hexdigest()
        try:
            served, sha, result = self.assess(data)
        except ImageDecodeError as e:
            return error_row(path, sha, public_code(e), e.detail)
        except Exception as e:  # one odd file must not end a run over 100k; its row says what happened
            logger.warning("scoring %s failed", path, exc_info=True)
            return error_row(path, sha, "internal_error", f"{type(e).__name__}: {e}")
        if isinstance(result, Refusal):
            return refusal_row(path, sha, served, result)
        return assessment_row(path, sha, result)

    def assess(self, data: bytes) -> tuple[LoadedModel | None, str, Assessment | Refusal]:
        """One file through ``retina.assessment.assess_image``, the service's domain step, minus audit and metrics.

        Returns the model that answered (None: ``auto`` and not retinal), the file's SHA-256 and the
        refusal or assessment. ``scoring.exam_scoring`` scores a PACS study's images through this too.
        """
        decoded = intake.decode_and_check(data, self.config.max_image_pixels, None)  # the step gates
        served, result = assess_image(
            decoded.image, self.requested, self, self.gate, self.probabilities, self.config.thresholds
        )
        return served, decoded.sha256, result

    def probabilities(self, served: LoadedModel, pixels: torch.Tensor) -> np.ndarray:
        """Prepared ``uint8 (C, S, S)`` -> calibrated ``float64 (K,)``, a forward pass of its own (batch of one)."""
        u8 = pixels.unsqueeze(0).to(self.device)
        return forward_probabilities(self.engines[served.id], self._tails[served.id], u8, served.meta.temperature)[0]


# ----------------------------------------------------------------------------- where the work runs


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    size = max(1, int(size))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


_WORKER: BatchScorer | None = None


def _init_worker(config: ScoreConfig) -> None:
    global _WORKER
    _WORKER = BatchScorer(config)


def _score_chunk(paths: list[str]) -> list[dict[str, Any]]:
    assert _WORKER is not None, "pool worker not initialised"
    return _WORKER.score_paths(paths)


def score_local(
    paths: Sequence[str],
    config: ScoreConfig,
    workers: int = 1,
    chunk_size: int = 32,
    scorer: BatchScorer | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Rows of ``paths`` in chunks of ``chunk_size``, from ``workers`` processes (in this process for 1).

    Chunks come back as they finish (not in input order). Each worker loads the models once;
    with one worker, ``scorer`` (already loaded from ``config``) is used when given.
    Stopping early (the consumer breaks off, Ctrl-C) cancels the chunks not yet started.
    """
    parts = chunks(paths, chunk_size)
    if workers <= 1:
        scorer = scorer or BatchScorer(config)
        for part in parts:
            yield scorer.score_paths(part)
        return
    # spawn, not fork: forking a process whose torch has started its OpenMP threads can hang the
    # children; each worker imports torch afresh and loads the models once, in _init_worker.
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(config,)
    )
    try:
        futures = [pool.submit(_score_chunk, part) for part in parts]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class RayScorer:
    """``map_batches`` callable class: a :class:`BatchScorer` per actor, loaded once in ``__init__``."""

    def __init__(self, config: ScoreConfig) -> None:
        self.scorer = BatchScorer(config)

    def __call__(self, batch: dict[str, Any]) -> Any:
        return rows_to_table(self.scorer.score_paths([str(p) for p in batch["path"]]))


class RayUnavailable(RuntimeError):
    """``--ray``: Ray is not installed, or there is no cluster at the address; the message says what to do."""


def connect_ray(address: str | None = "auto") -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one ``ray start`` left running here; ``local`` or
    None: a throwaway instance in this process), unless Ray is initialised already.

    Raises :class:`RayUnavailable`, with a one-line remedy, when Ray is missing or no cluster answers.
    """
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(
            "--ray needs Ray (pip install --group scale -c requirements/constraints.txt); "
            "or drop --ray to score with local worker processes"
        ) from e
    if ray.is_initialized():
        return
    # A throwaway local instance ("local" / None) needs no dashboard (one process less to start).
    local = {"include_dashboard": False} if address in (None, "local") else {}
    logger.info("starting Ray (address %s)", address)
    try:
        ray.init(address=address, log_to_driver=False, **local)
    except ConnectionError as e:
        logger.debug("ray.init(address=%r) failed: %s", address, e)
        raise RayUnavailable(
            f"no Ray cluster answers at --ray {address}: start one with `ray start --head` (or use --ray local "
            "for a throwaway one on this machine), or drop --ray to score with local worker processes"
        ) from e


def score_ray(
    paths: Sequence[str],
    config: ScoreConfig,
    address: str | None = "auto",
    actors: int = 2,
    batch_size: int = 32,
    cpus_per_actor: float = 1.0,
) -> Iterator[list[dict[str, Any]]]:
    """Rows of ``paths`` from the Ray cluster at ``address`` (:func:`connect_ray`).

    Ray Data streams the paths through an actor pool of ``actors`` :class:`RayScorer` actors, each
    reserving ``cpus_per_actor`` CPUs (its torch threads) and called with ``batch_size`` paths at a
    time; batches come back to this process as they finish, so the caller writes (and a rerun
    resumes) exactly as with :func:`score_local`. The workers read the files and the models by
    path: on a multi-node cluster both must be on storage every node mounts at the same path.
    """
    import ray

    connect_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller's tqdm bar counts rows; Ray's would interleave with it
    threads = max(1, int(cpus_per_actor))
    config = dataclasses.replace(config, torch_threads=threads)
    ds = ray.data.from_items([{"path": p} for p in paths])
    scored = ds.map_batches(
        RayScorer,
        fn_constructor_kwargs={"config": config},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
    )
    for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield table.to_pylist()
