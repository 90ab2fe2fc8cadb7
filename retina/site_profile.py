"""Site profiles: one clinic's own calibration and fundus operating points for the served model.

A clinic whose camera differs from the training data fits a profile on its own graded photos
(``python -m training.site_profile``); the service loads every ``RETINA_SITES_DIR/<name>.json``
and a request with ``site=<name>`` is decided by it. A profile changes two things, and only for
the fundus (5 DR grades) model it was fitted for:

* the softmax temperature: ``softmax(logits / T_site)`` replaces ``softmax(logits / T_model)``.
  The service holds the model-calibrated probabilities, so it re-tempers them
  (:func:`retemper`): ``p_site ∝ p_model ** (T_model / T_site)``, which is exactly the softmax
  of ``logits / T_site`` (the per-row constant of the log-softmax cancels);
* the referral thresholds ``refer`` (P(grade >= 2)) and ``urgent`` (P(grade 4)), with the rule of
  ``retina.referral`` unchanged.

OCT models ignore profiles. A profile names the model it was fitted for by id, version and a
fingerprint of the weights (:func:`model_fingerprint`); a profile of other weights is refused
(the temperature and thresholds of one network mean nothing for another). The fingerprint covers
the weights only, so refitting the checkpoint's own temperature or operating points (metadata)
keeps its profiles valid, while retraining invalidates them.

:class:`SiteProfile` is the one schema, written by the CLI and read by the backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from retina.labels import DR_GRADES

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_PROFILE = "default"  # the name of "no profile": the checkpoint's own calibration and operating points
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Rates(BaseModel):
    """Sensitivity and specificity at a threshold on the site's photos, with patient-grouped 95 % bootstrap CIs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensitivity: float = Field(ge=0, le=1)
    sensitivity_ci95: tuple[float, float]
    specificity: float = Field(ge=0, le=1)
    specificity_ci95: tuple[float, float]
    n: int = Field(ge=0, description="Photos.")
    n_positive: int = Field(ge=0, description="Photos whose grade makes them positive for this point.")


class SitePoint(BaseModel):
    """One operating point of a profile: the threshold the referral rule compares with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(gt=0, le=1)
    score: str = Field(description="What is compared: `P(grade >= 2)` (refer) or `P(grade 4)` (urgent).")
    fitted: bool = Field(description="False: too few positives at the site; the model's own point is kept.")
    source: str = Field(description="Where the threshold comes from, in words.")
    fit: Rates | None = Field(default=None, description="On the site's photos at this threshold.")


class ModelIdentity(BaseModel):
    """Which network a profile belongs to."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_id: str
    version: str
    arch: str
    fingerprint: str = Field(description="SHA-256 of the weights (retina.site_profile.model_fingerprint).")


class SiteProfile(BaseModel):
    """``SITES_DIR/<name>.json``: a site's temperature and fundus operating points for one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    model: ModelIdentity
    temperature: float = Field(gt=0, description="Softmax temperature fitted on the site's photos (5-class NLL).")
    calibration: dict[str, float] = Field(
        default_factory=dict, description="NLL and ECE before (model temperature) and after (site temperature)."
    )
    target_sensitivity: float = Field(gt=0, le=1)
    refer: SitePoint
    urgent: SitePoint
    n_images: int = Field(ge=1)
    n_referable: int = Field(ge=0, description="Grade >= 2.")
    n_proliferative: int = Field(ge=0, description="Grade 4.")
    n_patients: int = Field(ge=1)
    data: str = Field(default="", description="The folder the site's photos came from (for the record).")
    created: datetime
    software: dict[str, str] = Field(default_factory=dict)

    def points(self) -> dict[str, dict[str, Any]]:
        """The profile's points in the checkpoint's ``operating_points`` shape (what the PDF prints)."""
        where = f"site profile {self.name!r} ({self.n_images} photos, {self.n_referable} referable)"
        out = {}
        for key, point in (("refer", self.refer), ("urgent", self.urgent)):
            out[key] = {
                "threshold": point.threshold,
                "fitted_on": where if point.fitted else f"{point.source}; site profile {self.name!r}",
                "fit": point.fit.model_dump() if point.fit else None,
            }
        return out


class SiteProfileError(ValueError):
    """A profile file that cannot be used; the message says why."""


def model_fingerprint(model: nn.Module) -> str:
    """``sha256:<hex>`` of the network's weights and buffers (names, dtypes, shapes, values in float32).

    Read from the loaded model, so fp16 / int8 storage in the file and ``channels_last`` in
    memory give the same fingerprint as the plain float32 network.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu")
        t = t.float() if t.is_floating_point() else t
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def retemper(probs: np.ndarray, model_temperature: float, site_temperature: float) -> np.ndarray:
    """``(..., K)`` probabilities at ``T_model`` -> the same logits' softmax at ``T_site``, float64.

    ``log p = z / T_model - c``, so ``softmax(log p * T_model / T_site) = softmax(z / T_site)``.
    Probabilities that underflowed to 0 stay ~0 (clipped at 1e-300 before the log).
    """
    p = np.asarray(probs, dtype=np.float64)
    z = np.log(np.clip(p, 1e-300, 1.0)) * (float(model_temperature) / float(site_temperature))
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class SiteThresholds:
    """A ``retina.referral.Thresholds`` whose fundus points are a profile's; OCT keeps the operator's settings."""

    referral_oct_urgent: float | None
    referral_oct_routine: float | None
    referral_fundus_refer: float | None
    referral_fundus_urgent: float | None


def site_thresholds(profile: SiteProfile, settings: Any) -> SiteThresholds:
    """The profile's fundus thresholds (they win over ``RETINA_REFERRAL_FUNDUS_*``: the request chose the site)."""
    return SiteThresholds(
        referral_oct_urgent=getattr(settings, "referral_oct_urgent", None),
        referral_oct_routine=getattr(settings, "referral_oct_routine", None),
        referral_fundus_refer=profile.refer.threshold,
        referral_fundus_urgent=profile.urgent.threshold,
    )


def applies_to(task: str, class_names: list[str] | tuple[str, ...]) -> bool:
    """Profiles decide fundus DR-grade models only; OCT (and custom class sets) ignore them."""
    return task == "fundus" and tuple(class_names) == tuple(DR_GRADES)


def read_profile(path: Path) -> SiteProfile:
    """Parse and validate one ``<name>.json``; :class:`SiteProfileError` says what is wrong."""
    try:
        profile = SiteProfile.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as e:
        raise SiteProfileError(f"{Path(path).name}: unreadable: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "profile"
        raise SiteProfileError(f"{Path(path).name}: invalid ({where}: {first['msg']})") from e
    if profile.schema_version > SCHEMA_VERSION:
        raise SiteProfileError(f"{Path(path).name}: schema version {profile.schema_version} is newer than this service")
    if profile.name != Path(path).stem:
        raise SiteProfileError(f"{Path(path).name}: its name {profile.name!r} differs from the file name")
    return profile


def identity_problem(profile: SiteProfile, model_id: str, version: str, fingerprint: str) -> str | None:
    """Why ``profile`` must not decide answers of the served model (None: it may)."""
    m = profile.model
    if m.model_id != model_id:
        return f"fitted for model {m.model_id!r}, not {model_id!r}"
    if m.fingerprint != fingerprint:
        return (
            f"fitted for other weights of {m.model_id} (v{m.version}, {m.fingerprint[:19]}); "
            f"the served one is v{version}, {fingerprint[:19]}: refit it with python -m training.site_profile"
        )
    return None


def write_profile(profile: SiteProfile, sites_dir: Path) -> Path:
    """``sites_dir/<name>.json`` (created atomically, so a half-written profile is never loaded)."""
    from retina.serialize import atomic_write

    sites_dir.mkdir(parents=True, exist_ok=True)
    path = sites_dir / f"{profile.name}.json"
    with atomic_write(path) as tmp:
        Path(tmp).write_text(profile.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def torch_version() -> str:
    return torch.__version__.split("+")[0]
