"""Batch scoring of image archives: the service's one pipeline, one row per file, locally or on Ray.

``python -m scoring`` (``scoring/cli.py``) is the command line; this module is the library
it, the tests and the benchmark import.

Every file goes through the same steps as an upload to ``POST /predict`` (the core functions
``backend/app/services/pipeline.py`` calls, not a copy of them):

    bytes -> retina.intake.decode_and_check (sniff, decode, image gate)
          -> model choice (``auto``: by the gate's modality) -> retina.assessment.refusal
          -> retina.intake.prepare_decoded -> retina.assessment.forward_probabilities
          -> retina.assessment.grade (calibrated probabilities -> referral -> label)   or .ungradable

and the models and gate are loaded with ``retina.loading`` exactly as the service's model store
loads them (same registry checks, same ``channels_last`` network). A row is written for every
file: a file that cannot be read or decoded, or that the gate refuses, is a row with ``error``
and ``error_detail`` (the API's codes: ``unsupported_media_type``, ``invalid_image``,
``not_retinal_image`` ...), never a crash.

Each image is scored in a forward pass of its own (batch of one), as the service scores a
request that arrives alone. Batched forwards give the same probabilities only to ~1e-7 (the
kernels differ by batch size), so with per-image passes a row never depends on which chunk,
worker or Ray batch its image landed in: the local pool, Ray and a resumed run give identical
rows. The cost, measured on 2 CPU cores with one torch thread: 8 OCT scans take 0.25 s of forward
passes one by one against 0.17 s as one batch of 8; the 10 fundus photos of samples/ took 1.46 s one by
one against 1.69 s batched (no gain).

Engines (both yield lists of rows; the caller writes them with a :class:`ResultSink`):

* :func:`score_local`: a process pool (spawned, one :class:`BatchScorer` per worker process,
  so the models load once per worker), or in-process for one worker;
* :func:`score_ray`: Ray Data, ``map_batches`` with :class:`RayScorer` (a callable class: the
  models load once per actor) on an actor pool of the given size.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from retina import intake, registry
from retina.assessment import Assessment, Refusal, forward_probabilities, grade, not_retinal, refusal, ungradable
from retina.engine import Engine, TorchEngine, load_engine
from retina.errors import ImageDecodeError, public_code
from retina.gate import ImageGate
from retina.loading import LoadedModel, gate_path, load_model, locate
from retina.paths import DEFAULT_MODELS_DIR
from retina.preprocessing import tail
from retina.referral import ReferralThresholds

logger = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # the service's RETINA_MAX_IMAGE_PIXELS default
# Files are read whole; past this they are an error row instead of a memory spike. Above the
# service's 10 MB upload limit: archives hold DICOMs of tens of MB that the service never sees.
DEFAULT_MAX_FILE_BYTES = 100_000_000

# One row per input file. Dict-valued fields (probabilities per class, the gate's probabilities,
# its reasons, the derived DR probabilities) are JSON text, so one fixed schema holds OCT and
# fundus rows alike, in Parquet and CSV the same way, and part files never need schema merging.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("path", "string"),  # absolute path of the input file
    ("sha256", "string"),  # of the file's bytes; null when it could not be read
    ("model", "string"),  # the model that answered (or was asked); null: auto and not retinal / no image
    ("model_version", "string"),
    ("task", "string"),  # oct | fundus
    ("gate_modality", "string"),  # oct | fundus | other
    ("gate_gradable", "bool"),
    ("gate_probabilities", "json"),  # {"oct": p, "fundus": p, "other": p}, rounded to 4 places as the API shows
    ("gate_reasons", "json"),  # why ungradable or not retinal (list of text)
    ("gradable", "bool"),  # null when no assessment was made (error rows)
    ("label", "string"),
    ("confidence", "double"),
    ("probabilities", "json"),  # {class: calibrated probability}, model order
    ("derived", "json"),  # 5-grade DR models: {"referable": P(grade >= 2), "any": P(grade >= 1)}
    ("referral_level", "string"),  # urgent | routine | observation | refer | rescreen_12_months | ungradable ...
    ("referral_probability", "double"),
    ("referral_threshold", "double"),  # the operating point the level was decided at
    ("referral_reason", "string"),
    ("error", "string"),  # the API's error code, e.g. unsupported_media_type, invalid_image, not_retinal_image
    ("error_detail", "string"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)


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
    """The models and gate of one worker, loaded once; :meth:`score_paths` turns files into rows.

    Raises ``retina.loading.ModelRejected`` (or ``KeyError`` for an unknown model name) at
    construction, never later: a model the service would refuse is refused here.
    """

    def __init__(self, config: ScoreConfig) -> None:
        self.config = config
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.device = torch.device(config.device)
        models_dir = Path(config.models_dir)
        gate_file = gate_path(models_dir, config.gate_file)
        self.gate = ImageGate.load(gate_file)
        cpu = self.device.type == "cpu"
        if cpu and config.engine != "torch":
            self.gate.use_engine(config.engine, gate_file)
        names = list(registry.TASKS) if config.model == AUTO else [config.model]
        self.models: dict[str, LoadedModel] = {}
        for name in names:
            key, path, spec = locate(name, models_dir)
            self.models[key] = load_model(key, path, spec, self.device)
        self.requested = None if config.model == AUTO else next(iter(self.models.values()))
        self.by_task = {m.task: m for m in self.models.values()}
        self._tails = {m.id: tail(m.meta.preprocess) for m in self.models.values()}
        # The same engine choice as the service's model store (a failing one falls back to torch, logged).
        self.engines: dict[str, Engine] = {}
        for m in self.models.values():
            if cpu:
                self.engines[m.id], _ = load_engine(
                    config.engine, m.model, m.meta, m.path, threads=config.torch_threads or 1
                )
            else:
                self.engines[m.id] = TorchEngine(m.model)

    def describe(self) -> str:
        return ", ".join(f"{m.id} v{m.meta.version} ({m.task})" for m in self.models.values())

    @torch.inference_mode()
    def score_paths(self, paths: Sequence[str]) -> list[dict[str, Any]]:
        """One row (see :data:`COLUMNS`) per path, in order."""
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
            return self._score_bytes(path, data)
        except ImageDecodeError as e:
            return error_row(path, sha, public_code(e), e.detail)
        except Exception as e:  # one odd file must not end a run over 100k; its row says what happened
            logger.warning("scoring %s failed", path, exc_info=True)
            return error_row(path, sha, "internal_error", f"{type(e).__name__}: {e}")

    def _score_bytes(self, path: str, data: bytes) -> dict[str, Any]:
        """One file's row: :meth:`assess` as the batch table writes it."""
        served, sha, result = self.assess(data)
        if isinstance(result, Refusal):
            return refusal_row(path, sha, served, result)
        return assessment_row(path, sha, result)

    def assess(self, data: bytes) -> tuple[LoadedModel | None, str, Assessment | Refusal]:
        """The service's ``Pipeline._intake`` + ``_serve`` for one file, minus audit and metrics.

        Returns the model that answered (None: ``auto`` and not retinal), the file's SHA-256 and the
        refusal or assessment. ``scoring.pacs`` scores a PACS study's images through this too.
        """
        decoded = intake.decode_and_check(data, self.config.max_image_pixels, self.gate)
        verdict = decoded.gate
        assert verdict is not None  # the scorer always gates
        served = self.requested
        if served is None:
            served = None if verdict.modality == "other" else self.by_task[verdict.modality]
        if served is None:  # auto and not retinal
            return None, decoded.sha256, not_retinal(verdict)
        refused = refusal(verdict, served.id, served.task, _default_id(verdict.modality))
        if refused is not None:
            return served, decoded.sha256, refused
        if not verdict.gradable:
            return served, decoded.sha256, ungradable(served.id, served.meta, verdict)
        prepared = intake.prepare_decoded(decoded, served.meta.preprocess)
        probs = self.probabilities(served, prepared.pixels)
        return served, decoded.sha256, grade(served.id, served.meta, probs, 0.0, self.config.thresholds, verdict)

    def probabilities(self, served: LoadedModel, pixels: torch.Tensor) -> Any:
        """Prepared ``uint8 (C, S, S)`` -> calibrated ``float64 (K,)``, a forward pass of its own (batch of one)."""
        u8 = pixels.unsqueeze(0).to(self.device)
        return forward_probabilities(self.engines[served.id], self._tails[served.id], u8, served.meta.temperature)[0]


def _default_id(modality: str) -> str | None:
    """The model named in ``wrong_modality``'s advice (the service names its default for that modality)."""
    try:
        return registry.default_for(modality).key
    except KeyError:
        return None


# ----------------------------------------------------------------------------- rows


def _empty(path: str, sha256: str | None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    row["path"], row["sha256"] = path, sha256
    return row


def _json(value: Any) -> str | None:
    # repr-exact floats; model order of the classes is kept (no sort_keys).
    return None if value is None else json.dumps(value)


def _gate_fields(row: dict[str, Any], gate: dict[str, Any] | None) -> None:
    if gate is None:
        return
    row["gate_modality"] = gate["modality"]
    row["gate_gradable"] = gate["gradable"]
    row["gate_probabilities"] = _json(gate["probabilities"])
    row["gate_reasons"] = _json(gate["reasons"])


def error_row(path: str, sha256: str | None, code: str, detail: str) -> dict[str, Any]:
    row = _empty(path, sha256)
    row["error"], row["error_detail"] = code, detail
    return row


def refusal_row(path: str, sha256: str, served: LoadedModel | None, refused: Refusal) -> dict[str, Any]:
    """The gate turned the file away: the API's 422 code and detail, the gate's verdict, no assessment."""
    row = error_row(path, sha256, refused.code, refused.detail)
    if served is not None:
        row["model"], row["model_version"], row["task"] = served.id, served.meta.version, served.task
    _gate_fields(row, refused.gate.to_dict())
    return row


def assessment_row(path: str, sha256: str, result: Assessment) -> dict[str, Any]:
    """Read off ``Assessment.to_dict()``, the body ``POST /predict`` answers: nothing is recomputed."""
    body = result.to_dict()
    row = _empty(path, sha256)
    for key in ("model", "model_version", "task", "gradable", "label", "confidence"):
        row[key] = body[key]
    row["probabilities"] = _json(body["probabilities"])
    row["derived"] = _json(body["derived"])
    _gate_fields(row, body["gate"])
    referral = body["referral"]
    if referral is not None:
        row["referral_level"] = referral["level"]
        row["referral_probability"] = referral["probability"]
        row["referral_threshold"] = referral["threshold"]
        row["referral_reason"] = referral["reason"]
    return row


# ----------------------------------------------------------------------------- inputs


def list_inputs(source: Path) -> list[str]:
    """Absolute paths of the files to score, in a stable order, each once.

    * a folder (recursively; DICOM folders too): every regular file, whatever its extension (DICOM
      files often have none, and a stray file should become an error row, not vanish), except
      hidden ones and ``DICOMDIR`` indexes;
    * a ``.csv``: the ``path`` column (or the first one when no header names ``path``); relative
      paths are taken from the CSV's folder;
    * any other file: itself.
    """
    source = Path(source)
    if source.is_dir():
        found = [
            p
            for p in source.rglob("*")
            if p.is_file()
            and p.name != "DICOMDIR"
            and not any(part.startswith(".") for part in p.relative_to(source).parts)
        ]
        paths = sorted(os.path.abspath(p) for p in found)
    elif source.is_file() and source.suffix.lower() == ".csv":
        paths = _csv_paths(source)
    elif source.is_file():
        paths = [os.path.abspath(source)]
    else:
        raise FileNotFoundError(f"input {source} does not exist")
    return list(dict.fromkeys(paths))


def _csv_paths(source: Path) -> list[str]:
    with source.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(cell.strip() for cell in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    col, body = (header.index("path"), rows[1:]) if "path" in header else (0, rows)
    base = source.parent
    return [os.path.abspath(base / r[col].strip()) for r in body if len(r) > col and r[col].strip()]


# ----------------------------------------------------------------------------- engines


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


def score_ray(
    paths: Sequence[str],
    config: ScoreConfig,
    address: str | None = "auto",
    actors: int = 2,
    batch_size: int = 32,
    cpus_per_actor: float = 1.0,
) -> Iterator[list[dict[str, Any]]]:
    """Rows of ``paths`` from a Ray cluster (``ray.init(address)`` unless Ray is initialised already).

    Ray Data streams the paths through an actor pool of ``actors`` :class:`RayScorer` actors, each
    reserving ``cpus_per_actor`` CPUs (its torch threads) and called with ``batch_size`` paths at a
    time; batches come back to this process as they finish, so the caller writes (and a rerun
    resumes) exactly as with :func:`score_local`. The workers read the files and the models by
    path: on a multi-node cluster both must be on storage every node mounts at the same path.
    """
    import ray

    if not ray.is_initialized():
        # A throwaway local instance ("local" / None) needs no dashboard (one process less to start).
        local = {"include_dashboard": False} if address in (None, "local") else {}
        logger.info("starting Ray (address %s)", address)
        ray.init(address=address, log_to_driver=False, **local)
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


# ----------------------------------------------------------------------------- output


def _arrow_schema() -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "json": pa.string(), "bool": pa.bool_(), "double": pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS])


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=_arrow_schema())


class ResultSink:
    """Where rows go, written as they come so that a killed run keeps what it finished.

    :meth:`done` is the set of input paths already written: a rerun with the same ``--out``
    scores only the others (a row is never written twice).
    """

    def done(self) -> set[str]:
        raise NotImplementedError

    def write(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @staticmethod
    def open(out: Path) -> ResultSink:
        suffix = Path(out).suffix.lower()
        if suffix == ".parquet":
            return ParquetParts(out)
        if suffix == ".csv":
            return CsvAppend(out)
        raise ValueError(f"--out must end in .parquet or .csv, not {Path(out).name!r}")


class ParquetParts(ResultSink):
    """``results.parquet`` as a folder of part files (a Parquet dataset: ``pandas.read_parquet`` reads the folder).

    Why not one file and a ``ParquetWriter``: a Parquet file is readable only once its footer is
    written at ``close()``, so a run killed mid-way would leave nothing to resume from. Here each
    write is a complete part file, written under a hidden ``.part-*.tmp`` name (pyarrow's dataset
    reader skips names starting with ``.``) and renamed into place, which is atomic: a kill leaves
    only whole parts plus at most one temporary, which the next run deletes. Fewer, larger parts:
    raise ``flush_rows`` in :func:`write_rows`.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"{self.out} is a file; batch results are a folder of part files (or pick a new --out)")
        self.out.mkdir(parents=True, exist_ok=True)
        for tmp in self.out.glob(".part-*.tmp"):  # a part being written when the last run was killed
            tmp.unlink()
        self._parts = sorted(self.out.glob("part-*.parquet"))

    def done(self) -> set[str]:
        import pyarrow.parquet as pq

        paths: set[str] = set()
        for part in self._parts:
            paths.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
        return paths

    def write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        if not rows:
            return
        name = f"part-{len(self._parts):06d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.out / f".{name}.tmp"
        pq.write_table(rows_to_table(rows), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it count as done
        os.replace(tmp, self.out / name)
        self._parts.append(self.out / name)


class CsvAppend(ResultSink):
    """One CSV file, appended to and fsync-ed at every write.

    A kill can interrupt only the last write, leaving a partial last line; opening the file again
    cuts it off (its rows are scored again), so every line kept is a whole row. Every text field
    is written on one line (newlines in details become spaces), which keeps "line" = "row".
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.out.exists():
            self._repair()
        fresh = not self.out.exists() or self.out.stat().st_size == 0
        self._file = self.out.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMN_NAMES)
        if fresh:
            self._writer.writeheader()
            self._sync()

    def _repair(self) -> None:
        data = self.out.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1  # 0 when even the header was cut
            cut = len(data) - keep
            logger.warning("%s ends in a partial row (an interrupted run): dropping its last %d bytes", self.out, cut)
            with self.out.open("r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        header = data.split(b"\n", 1)[0].decode("utf-8-sig").strip()
        if header and header.split(",") != list(COLUMN_NAMES):
            raise ValueError(f"{self.out} is not a results file of this scorer (its header differs)")

    def done(self) -> set[str]:
        with self.out.open(newline="", encoding="utf-8") as f:
            return {row["path"] for row in csv.DictReader(f)}

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._writer.writerows({k: _one_line(v) for k, v in row.items()} for row in rows)
        self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _one_line(value: Any) -> Any:
    return value.replace("\r", " ").replace("\n", " ") if isinstance(value, str) else value


def read_rows(out: Path) -> list[dict[str, Any]]:
    """Every row written to ``out`` (Parquet typed; CSV as text, empty = null), for checks and tests."""
    out = Path(out)
    if out.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        parts = sorted(out.glob("part-*.parquet"))
        return [row for part in parts for row in pq.read_table(part).to_pylist()]
    with out.open(newline="", encoding="utf-8") as f:
        return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]


def write_rows(batches: Iterable[list[dict[str, Any]]], sink: ResultSink, flush_rows: int = 256) -> Iterator[int]:
    """Write rows from ``batches`` to ``sink`` in writes of at least ``flush_rows`` rows; yields rows per batch.

    A kill loses at most the unwritten buffer (under ``flush_rows`` rows plus the batches in flight),
    which the rerun scores again.
    """
    buffer: list[dict[str, Any]] = []
    try:
        for rows in batches:
            buffer.extend(rows)
            if len(buffer) >= flush_rows:
                sink.write(buffer)
                buffer = []
            yield len(rows)
    finally:
        if buffer:
            sink.write(buffer)
