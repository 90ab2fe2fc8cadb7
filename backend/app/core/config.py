"""Service settings from ``RETINA_*`` environment variables (pydantic-settings).

Every field can be set as ``RETINA_<FIELD>`` (e.g. ``RETINA_MODELS_DIR=/srv/models``).
Routes read them through :func:`get_settings` via ``Depends`` (FastAPI's own pattern), and
tests build ``Settings(...)`` directly and pass it to ``create_app``.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from retina.paths import DEFAULT_MODELS_DIR
from retina.runtime import usable_cores

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _threshold(rule: str) -> Any:
    """A referral threshold in (0, 1]; unset means the operating point stored in the checkpoint."""
    return Field(
        default=None,
        gt=0,
        le=1,
        description=f"{rule} Unset: the operating point stored in the model's checkpoint (else 0.5).",
    )


def _per_worker_threads() -> int:
    """Cores per uvicorn worker: ``WEB_CONCURRENCY`` (uvicorn's ``--workers`` env var) splits them."""
    try:
        workers = max(1, int(os.environ.get("WEB_CONCURRENCY", "1") or 1))
    except ValueError:
        workers = 1
    return max(1, usable_cores() // workers)


def _split_csv(value: object) -> object:
    """``"a,b"`` or ``'["a","b"]'`` -> list; lists pass through. Empty string -> ``[]``."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Typed configuration of the inference service; see the table in ``backend/README.md``."""

    # hide_input_in_errors: a validation error would otherwise echo the keys (RETINA_API_KEYS) into the log.
    model_config = SettingsConfigDict(
        env_prefix="RETINA_", extra="ignore", protected_namespaces=(), hide_input_in_errors=True
    )

    models_dir: Path = Field(default=DEFAULT_MODELS_DIR, description="Directory with the checkpoints (*.pt) to serve.")
    omp_wait_policy: Literal["PASSIVE", "ACTIVE"] = Field(
        default="PASSIVE",
        description="OMP_WAIT_POLICY for torch's OpenMP threads unless the environment sets it: PASSIVE threads "
        "sleep instead of spinning, which on a busy 2-core box cost up to 10x the CPU time of a forward pass. "
        "Applied by backend/main.py before torch loads.",
    )
    progress_bars: bool = Field(
        default=False,
        description="tqdm progress bars (ScoreCAM draws one per image; in a server they only flood stderr); "
        "false sets TQDM_DISABLE=1 unless the environment sets it.",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Registered model ids to serve (comma separated); empty = every registered model.",
    )
    default_oct: str | None = Field(default=None, description="Model id behind ?model=oct (default: registry's).")
    default_fundus: str | None = Field(default=None, description="Model id behind ?model=fundus (default: registry's).")
    max_upload_mb: float = Field(default=10.0, gt=0, description="Largest accepted upload per file, in MB (10^6 B).")
    max_image_pixels: int = Field(default=40_000_000, gt=0, description="Decompression-bomb guard: width*height.")
    max_batch_files: int = Field(default=16, ge=1, description="Most files accepted by /predict/batch.")
    max_volume_upload_mb: float = Field(
        default=100.0,
        gt=0,
        description="Largest multi-frame DICOM (OCT volume) accepted by /predict/volume, and by /gradcam and "
        "/report with frame=, in MB (10^6 B).",
    )
    max_volume_frames: int = Field(
        default=256, ge=1, description="Most frames (B-scans) in one volume; more is a 413 too_many_frames."
    )
    max_volume_pixels: int = Field(
        default=150_000_000,
        gt=0,
        description="Most pixels (rows x columns x frames) in one volume; more is a 422 image_too_large.",
    )
    volume_rule: Literal["mean", "top3_mean", "max", "noisy_or", "vote"] = Field(
        default="mean",
        description="How B-scan probabilities become volume probabilities (retina/volume.py; chosen on "
        "validation volumes by training/evaluate/volumes.py).",
    )
    volume_min_gradable_frames: int = Field(
        default=1, ge=1, description="A volume answer needs at least this many gradable B-scans ..."
    )
    volume_min_gradable_fraction: float = Field(
        default=0.5, ge=0, le=1, description="... and at least this share of its B-scans gradable; else ungradable."
    )
    max_decode_mb: float = Field(
        default=400.0,
        gt=0,
        description="Most memory one image (or one frame of a volume) may take to decode, in MB: pixels x bytes per "
        "pixel x working copies, estimated from the header before decoding (retina/memory.py); more is a 422 "
        "image_too_large. A 40 MP RGB JPEG needs ~200 MB, a 39 MP RGBA PNG ~350 MB.",
    )
    memory_budget_mb: float = Field(
        default=1200.0,
        gt=0,
        description="Decode memory one worker reserves for uploads in flight (upload bytes + decode estimate), in MB; "
        "an upload that does not fit is answered 503 overloaded with Retry-After. Size it to the container's memory "
        "limit / WEB_CONCURRENCY minus ~1.4 GB for the models at rest.",
    )
    max_in_flight: int = Field(
        default=32,
        ge=1,
        description="Most upload requests (POST) one worker holds at once; more are answered 503 overloaded before "
        "their body is read. Bounds the decode, batcher and audit queues behind it.",
    )
    inference_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Longest wait for a forward pass (micro-batcher) before a 503 inference_timeout.",
    )
    audit_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait for an audit row's commit before a 503 audit_unavailable; also PostgreSQL's "
        "statement_timeout, so a hung database cannot hang every prediction.",
    )
    batch_max_size: int = Field(default=16, ge=1, description="Micro-batcher: most requests in one forward pass.")
    batch_wait_ms: float = Field(
        default=5.0, ge=0, description="Micro-batcher: longest wait for more requests while others are being decoded."
    )
    torch_threads: int = Field(
        default_factory=_per_worker_threads,
        ge=1,
        description="torch intra-op threads for the forward passes (default: cores / WEB_CONCURRENCY).",
    )
    decode_threads: int = Field(
        default_factory=_per_worker_threads,
        ge=1,
        description="Threads that decode and preprocess uploads (default: cores / WEB_CONCURRENCY).",
    )
    engine: str = Field(
        default="auto",
        description="Classification forward pass: torch, onnxruntime, onnxruntime-int8 or openvino-int8 (both need "
        "models/<id>.int8.json), openvino, or auto (the fastest that builds and passes its checks: OpenVINO int8, "
        "ONNX Runtime int8, ONNX Runtime fp32, torch; an int8 engine only where its val figures held). "
        "A failing engine falls back to torch with an error in the log and in /models. Grad-CAM always runs on torch.",
    )
    engine_cache: Path | None = Field(
        default=None,
        description="Where engine exports are cached, keyed by the checkpoint's SHA-256 (default: "
        "$XDG_CACHE_HOME/retinascope/engines, else a temp dir when that is not writable).",
    )
    scorecam_batch_size: int = Field(default=32, ge=1, description="ScoreCAM: masked copies per forward pass.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed CORS origins (comma separated or JSON list); none by default."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="A client key (named `default` in the audit log); X-API-Key must carry a client or the "
        "operator key on all but /health, /ready, /metrics, /docs.",
    )
    api_keys: SecretStr | None = Field(
        default=None,
        description="Named client keys, `name:key,name:key` (names: letters, digits, . _ -); the audit log records "
        "the name of the key each answer was given to, never the key.",
    )
    operator_key: SecretStr | None = Field(
        default=None, description="The operator's key: GET /audit needs it (client keys get 403), and it may predict."
    )
    insecure_no_auth: bool = Field(
        default=False,
        description="Serve without any client key (requests are `anonymous`): only for a loopback-only run "
        "(scripts/run.sh sets it unless keys are given); refused with a non-loopback RETINA_BIND_ADDRESS. "
        "Without it and without keys the service refuses to start.",
    )
    gate_enabled: bool = Field(
        default=True,
        description="Image gate before every prediction: refuse non-retinal and wrong-modality images (422), "
        "answer ungradable ones without a diagnosis. Turn off only for experiments.",
    )
    gate_file: Path | None = Field(
        default=None,
        description="Image-gate checkpoint (gatenet CNN + thresholds + quality limits); default: "
        "models_dir/image-gate.pt, else the shipped one.",
    )
    referral_oct_urgent: float | None = _threshold("OCT: urgent referral when P(CNV) + P(DME) >= this.")
    referral_oct_routine: float | None = _threshold("OCT: routine referral when P(CNV) + P(DME) + P(DRUSEN) >= this.")
    referral_fundus_refer: float | None = _threshold("Fundus: refer when P(referable DR, grade >= 2) >= this.")
    referral_fundus_urgent: float | None = _threshold(
        "Fundus: urgent referral when P(proliferative DR, grade 4) >= this."
    )
    sites_dir: Path = Field(
        default=DEFAULT_MODELS_DIR / "sites",
        description="Site profiles (<name>.json from python -m training.site_profile): a clinic's own temperature "
        "and fundus operating points, chosen per request with site=<name>. May be empty or absent.",
    )
    default_site: str | None = Field(
        default=None,
        description="Site profile applied when a request names none (unset: the model's own points). A name "
        "that is not loaded makes /ready answer 503.",
    )
    audit_db: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the audit log (e.g. sqlite:////var/lib/retina/audit.sqlite or "
        "postgresql://...); default: SQLite file runs/audit.sqlite under the working directory.",
    )
    bind_address: str | None = Field(
        default=None,
        description="Where the service is published (compose and scripts/run.sh pass RETINA_BIND_ADDRESS): "
        "anything but a loopback address makes RETINA_API_KEY required, so a network never gets an open API.",
    )
    root_path: str = Field(
        default="",
        description="Path prefix a reverse proxy strips before forwarding (the tls profile's Caddy: /api); "
        "/docs and the OpenAPI servers list use it, so the docs page fetches /api/openapi.json.",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(default="auto", description="Where models run; auto = cuda if any.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        from retina.engine import ENGINES

        if v != "auto" and v not in ENGINES:
            raise ValueError(f"unknown engine {v!r}; one of auto, {', '.join(ENGINES)}")
        return v

    @field_validator("models", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_key", "api_keys", "operator_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        # RETINA_API_KEY= (empty) in a compose file means "no key", not "the empty key".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("root_path", mode="before")
    @classmethod
    def _no_trailing_slash(cls, value: object) -> object:
        # "/api/" and "/api" are the same prefix; FastAPI joins it with "/openapi.json".
        return value.strip().rstrip("/") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _key_when_published(self) -> Settings:
        # Fail at startup, not at the first stranger's request: a service published beyond this
        # machine without a key lets anyone who reaches it run (and read the audit of) predictions.
        self.client_keys()  # a malformed RETINA_API_KEYS fails here, at startup
        published = bool(self.bind_address and self.bind_address.strip() not in LOOPBACK)
        if published and self.insecure_no_auth:
            raise ValueError(
                f"RETINA_INSECURE_NO_AUTH is for a loopback-only run, but RETINA_BIND_ADDRESS={self.bind_address}"
            )
        if not self.client_keys() and published:
            raise ValueError(
                f"RETINA_BIND_ADDRESS={self.bind_address} publishes the API beyond this machine: set RETINA_API_KEY "
                '(e.g. python3 -c "import secrets; print(secrets.token_urlsafe(32))"), or bind 127.0.0.1'
            )
        return self

    def client_keys(self) -> dict[str, str]:
        """Client key name -> key: ``RETINA_API_KEYS`` entries plus ``RETINA_API_KEY`` as ``default``."""
        keys: dict[str, str] = {}
        if self.api_key is not None:
            keys["default"] = self.api_key.get_secret_value()
        text = self.api_keys.get_secret_value() if self.api_keys is not None else ""
        for entry in (e.strip() for e in text.split(",") if e.strip()):
            name, sep, key = entry.partition(":")
            name, key = name.strip(), key.strip()
            # The message names the entry's position, never its text: it holds a secret.
            if not sep or not _KEY_NAME.match(name) or len(key) < 8 or name in keys or name == "operator":
                raise ValueError(
                    f"RETINA_API_KEYS entry {len(keys) + 1} is not name:key (name of letters, digits, . _ -, unique, "
                    "not `operator`; key of at least 8 characters)"
                )
            keys[name] = key
        return keys

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def max_decode_bytes(self) -> int:
        return int(self.max_decode_mb * 1_000_000)

    @property
    def max_volume_upload_bytes(self) -> int:
        return int(self.max_volume_upload_mb * 1_000_000)


def process_defaults(settings: Settings) -> dict[str, str]:
    """Environment variables the server wants set before torch and tqdm load (read once, at load)."""
    env = {"OMP_WAIT_POLICY": settings.omp_wait_policy}
    if not settings.progress_bars:
        env["TQDM_DISABLE"] = "1"
    return env


def apply_process_defaults(settings: Settings) -> None:
    """Set :func:`process_defaults` in ``os.environ``; an operator's own variable wins."""
    for key, value in process_defaults(settings).items():
        os.environ.setdefault(key, value)


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
