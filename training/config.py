"""Training configuration: one frozen, typed :class:`TrainConfig`, resolved once per run.

Precedence (nanoGPT style): the dataclass defaults < a YAML file under ``training/configs/``
< ``--set a.b=value`` (dotted keys, type-checked against the default's type, with a "did you
mean" for typos) < the explicit flags ``--data``, ``--out`` and ``--epochs``. :func:`resolve`
merges those layers as plain mappings and returns a :class:`TrainConfig`; every stage reads
attributes (``cfg.optim.lr``), never string keys. The resolved config is saved as
``config.yaml`` beside the checkpoint and, as plain types (:meth:`TrainConfig.to_dict`),
inside it, so a run can be repeated from the checkpoint alone.

Two sub-trees are free-form because their keys depend on other values:

* ``model.args``: keyword arguments of the architecture's builder (``retina.models``);
  ``in_channels`` and ``num_classes`` are filled in from the data and the preprocess spec.
* ``preprocess``: ``preset`` plus any :class:`retina.preprocessing.PreprocessSpec` field to
  override (``--set preprocess.size=32``), type-checked against the preset's value.

The ``simclr:`` section is ``null`` by default; a config that has one gets the
:class:`SimclrConfig` defaults filled in under it.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from retina.preprocessing import PreprocessSpec, get_preset

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """An unknown key, a value of the wrong type, or an unreadable config file."""


@dataclass(frozen=True)
class DataConfig:
    """``data:``: which dataset, how it is read and how it is split."""

    path: str | None = None  # dataset root or .npz file (several of one task: "a,b")
    format: str = "auto"  # auto | medmnist | oct2017 | csv | eyepacs | aptos
    label_scheme: str = "grade"  # fundus: grade | referable | any | binary-strict (ignored for OCT)
    val_frac: float = 0.15
    test_frac: float = 0.15
    seed: int = 0  # split seed (patient-disjoint, stratified)
    cache_dir: str | None = "runs/cache"  # prepared-image cache
    max_images: int | None = None  # total cap for quick runs, stratified by class, whole patients only
    patients: str = "shared"  # shared | per_dataset: are patient ids comparable across the --data folders?

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any] | None) -> DataConfig:
        """The ``data`` block of a checkpoint's saved config; keys it predates take today's defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (saved or {}).items() if k in known})


@dataclass(frozen=True)
class ModelConfig:
    """``model:``: the architecture and its builder's keyword arguments (free-form, see ``retina.models``)."""

    arch: str = "simplecnn"
    args: dict[str, Any] = field(default_factory=dict)  # read-only by convention: copy before changing


@dataclass(frozen=True)
class OptimConfig:
    """``optim:``: the optimiser (``adam`` | ``adamw`` | ``sgd``)."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """``early_stopping:``: which validation score picks the best epoch, and when to stop."""

    patience: int = 5
    metric: str = "val_balanced_accuracy"  # or val_loss, val_referable_auc, val_domain_referable_auc, last


@dataclass(frozen=True)
class SimclrConfig:
    """``simclr:``: contrastive pretraining, then one fine-tune per label fraction (``training.fit.simclr``)."""

    encoder: str = "resnet18"
    proj_dim: int = 128
    proj_hidden: int = 512
    epochs: int = 20  # contrastive pretraining epochs
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.5  # NT-Xent temperature
    crop_scale_min: float = 0.3  # RandomResizedCrop lower scale of the views
    blur_p: float = 0.5
    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])  # -> out/frac_<f>/best.pt
    linear_probe: bool = False  # True = freeze the backbone, train the linear head only
    backbone: str | None = None  # path to an exported backbone.pt: skip pretraining


@dataclass(frozen=True)
class TrainConfig:
    """One training run, fully resolved (:func:`resolve`); saved as ``config.yaml`` and in the checkpoint.

    Frozen: a stage that needs a variant (a CV fold's ``out``, a SimCLR fraction) makes one
    with :func:`dataclasses.replace`. :meth:`to_dict` gives the plain-typed mapping that is
    saved; :func:`resolve` of that mapping gives back an equal config.
    """

    name: str = ""  # run name; defaults to the config file's stem
    task: str = ""  # "oct" | "fundus"; "" = take it from the data table
    out: str = ""  # output dir; "" = runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: dict[str, Any] = field(default_factory=lambda: {"preset": "oct_28"})  # + PreprocessSpec overrides
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: str = "none"  # cosine | none (cosine anneals per epoch to 0 over `epochs`)
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    augment: str = "none"  # none | light | strong | camera (retina.preprocessing.augmentations)
    domain_balance: float | None = None  # p: draw each image domain (dataset x crop/raw photo) in proportion to n**p
    domain_prevalence: float | None = None  # with domain_balance: every domain drawn this share referable (grade >= 2)
    epoch_images: int | None = None  # images drawn per training epoch; null = the training split's size
    imbalance: str = "none"  # none | class_weights | weighted_sampler | smote
    class_weight_power: float = 1.0  # class_weights ** power; 0.5 tempers extreme imbalance
    label_smoothing: float = 0.0
    label_fraction: float | None = None  # in (0, 1]: keep this stratified fraction of train labels
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    seed: int = 0  # model init, shuffling, augmentation, SMOTE
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 = all cores torch sees
    num_workers: int = 0  # DataLoader workers (only used with augmentation)
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and tensor cores
    amp: bool = False  # bf16 autocast (CPU with AMX/avx512_bf16, or CUDA)
    half: bool = False  # store best.pt weights in float16
    calibrate: bool = True  # temperature scaling on val logits (kept only if it lowers val NLL)
    n_bootstrap: int = 1000  # bootstrap resamples for metric CIs
    progress: bool = True  # tqdm bars
    version: str = "0.1.0"  # model version written into the checkpoint
    simclr: SimclrConfig | None = None  # a config with this section runs SimCLR

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (what ``config.yaml`` and the checkpoint's ``config`` hold)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a *complete* mapping (:func:`resolve` output); use :func:`resolve` for partial ones."""
        d = copy.deepcopy(dict(d))
        sc = d.pop("simclr")
        return cls(
            data=DataConfig(**d.pop("data")),
            model=ModelConfig(**d.pop("model")),
            optim=OptimConfig(**d.pop("optim")),
            early_stopping=EarlyStoppingConfig(**d.pop("early_stopping")),
            simclr=None if sc is None else SimclrConfig(**sc),
            **d,
        )

    @property
    def out_dir(self) -> Path:
        """Where the run writes: ``out``, else ``runs/<name>`` (``runs/run`` without a name)."""
        return Path(self.out or Path("runs") / (self.name or "run"))


# Every key a config may set, with its default (the dataclasses above are the one definition).
DEFAULTS: dict[str, Any] = TrainConfig().to_dict()
SIMCLR_DEFAULTS: dict[str, Any] = asdict(SimclrConfig())

_SECTIONS: dict[str, dict[str, Any]] = {"simclr": SIMCLR_DEFAULTS}
_FREE_FORM = {("model", "args")}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Cast ``value`` to the type of ``default`` where that is lossless, else raise."""
    if default is None:
        return value
    if value is None:
        raise ConfigError(f"{key}: null is not allowed (default is {default!r})")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{key}: expected {type(default).__name__} like the default {default!r}, got {value!r}")


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _preprocess_fields() -> dict[str, Any]:
    return {k: f for k, f in PreprocessSpec.__dataclass_fields__.items() if k not in ("extra", "version")}


def _merge(base: dict[str, Any], over: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base``; unknown keys and bad types raise."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        here = (*path, str(k))
        dotted = ".".join(here)
        if path in _FREE_FORM or path == ("preprocess",) and k != "preset":
            if path == ("preprocess",) and k not in _preprocess_fields():
                raise _unknown(dotted, ["preset", *_preprocess_fields()])
            out[k] = copy.deepcopy(v)
            continue
        if k not in out:
            raise _unknown(dotted, list(out))
        default = out[k]
        if default is None and k in _SECTIONS and path == ():
            if v is None:
                continue
            if not isinstance(v, dict):
                raise ConfigError(f"{dotted}: expected a mapping")
            out[k] = _merge(_SECTIONS[k], v, here)
        elif k == "preprocess" and path == () and isinstance(v, str):
            out[k] = {"preset": v}  # shorthand: `preprocess: oct_128`
        elif isinstance(default, dict) and here in _FREE_FORM:
            out[k] = {**default, **copy.deepcopy(_coerce(v, default, dotted))}  # key-wise, unchecked
        elif isinstance(default, dict):
            out[k] = _merge(default, _coerce(v, default, dotted), here)
        else:
            out[k] = copy.deepcopy(_coerce(v, default, dotted))
    return out


def _set_value(cfg: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set one dotted ``key`` to ``value`` with the same checks as a config file."""
    nested: Any = value
    for p in reversed(key.split(".")):
        nested = {p: nested}
    return _merge(cfg, nested)


def _set_dotted(cfg: dict[str, Any], key: str, raw: str) -> dict[str, Any]:
    """Apply one ``--set a.b.c=raw``: parse ``raw`` as YAML, then merge with type checks."""
    return _set_value(cfg, key, yaml.safe_load(raw) if raw != "" else "")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file() and not path.suffix and (CONFIG_DIR / f"{path}.yaml").is_file():
        path = CONFIG_DIR / f"{path}.yaml"  # `--config oct_simplecnn` works too
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    data.setdefault("name", path.stem)
    return data


def resolve(
    config: str | Path | Mapping[str, Any] | None = None,
    sets: list[str] | None = None,
    explicit: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < ``config`` (file or mapping) < ``sets`` (``key=value``) < ``explicit`` (dotted keys).

    Returns a new, fully resolved and validated :class:`TrainConfig`. A saved config
    (``config.yaml``, a checkpoint's ``config``) resolves back to an equal one.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if config is not None:
        cfg = _merge(cfg, dict(config) if isinstance(config, Mapping) else load_yaml(config))
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        cfg = _set_dotted(cfg, key.strip(), raw.strip())
    for key, value in (explicit or {}).items():
        if value is not None:
            cfg = _set_value(cfg, key, value)
    resolved = TrainConfig.from_dict(cfg)
    validate(resolved)
    return resolved


_CHOICES = {
    "scheduler": ("none", "cosine"),
    "augment": ("none", "light", "strong", "camera"),
    "imbalance": ("none", "class_weights", "weighted_sampler", "smote"),
    "device": ("auto", "cpu", "cuda"),
}


EARLY_STOPPING_METRICS = (
    "val_balanced_accuracy",
    "val_loss",
    "val_referable_auc",
    "val_domain_referable_auc",  # mean over datasets of each one's referable AUC (see training.fit.epochs)
    "last",
)


def validate(cfg: TrainConfig) -> None:
    """Value checks that types alone cannot express."""
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key} must be one of {choices}, got {getattr(cfg, key)!r}")
    if cfg.early_stopping.metric not in EARLY_STOPPING_METRICS:
        raise ConfigError(f"early_stopping.metric must be one of {EARLY_STOPPING_METRICS}")
    if cfg.optim.name not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"optim.name must be adam, adamw or sgd, got {cfg.optim.name!r}")
    if cfg.epochs < 0 or cfg.batch_size < 1:
        raise ConfigError("epochs must be >= 0 and batch_size >= 1")
    db, ei = cfg.domain_balance, cfg.epoch_images
    if db is not None and not (isinstance(db, (int, float)) and 0 <= db <= 1):
        raise ConfigError(f"domain_balance must be in [0, 1] or null, got {db!r}")
    dp = cfg.domain_prevalence
    if dp is not None and (db is None or not (isinstance(dp, (int, float)) and 0 < dp < 1)):
        raise ConfigError(f"domain_prevalence must be in (0, 1) and needs domain_balance, got {dp!r}")
    if dp is not None and cfg.imbalance not in ("none", "class_weights"):
        # smote skips the draw weights, and a weighted_sampler's class factors would undo the one prevalence
        raise ConfigError(f"domain_prevalence works with imbalance none or class_weights, not {cfg.imbalance!r}")
    if ei is not None and not (isinstance(ei, int) and ei >= 1):
        raise ConfigError(f"epoch_images must be a positive integer or null, got {ei!r}")
    if (db is not None or ei is not None) and cfg.augment == "none":
        raise ConfigError("domain_balance and epoch_images draw augmented batches: set augment")
    lf = cfg.label_fraction
    if lf is not None and not (isinstance(lf, (int, float)) and 0 < lf <= 1):
        raise ConfigError(f"label_fraction must be in (0, 1], got {lf!r}")
    d = cfg.data
    if not (0 <= d.val_frac < 1 and 0 <= d.test_frac < 1 and d.val_frac + d.test_frac < 1):
        raise ConfigError("data.val_frac and data.test_frac must be in [0, 1) and sum to < 1")
    preprocess_spec(cfg)  # unknown preset or invalid field values raise here, not mid-run
    if cfg.simclr is not None:
        for f in cfg.simclr.label_fractions:
            if not (isinstance(f, (int, float)) and 0 < f <= 1):
                raise ConfigError(f"simclr.label_fractions must be floats in (0, 1], got {f!r}")


def preprocess_spec(cfg: TrainConfig) -> PreprocessSpec:
    """The :class:`PreprocessSpec` a config asks for: its preset with field overrides."""
    pre = dict(cfg.preprocess)
    try:
        base = get_preset(pre.pop("preset"))
    except KeyError as e:
        raise ConfigError(str(e)) from None
    if not pre:
        return base
    current = base.to_dict()
    for k, v in pre.items():
        pre[k] = list(v) if k in ("mean", "std") else _coerce(v, current[k], f"preprocess.{k}")
    try:
        return base.replace(**pre)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"preprocess: {e}") from e


def dump(cfg: TrainConfig) -> str:
    """``cfg`` as YAML text, in field order; :func:`resolve` of it gives back an equal config."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write :func:`dump` of ``cfg`` to ``path`` (``OUT/config.yaml``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump(cfg))
    return path
