"""Site profiles in the service: which are loaded, which were rejected and why, and what one request uses.

``RETINA_SITES_DIR/<name>.json`` files (``retina.site_profile.SiteProfile``, written by
``python -m training.site_profile``) are read once, after the models load. A profile is loaded
only when the fundus model it names is served with the same weights (fingerprint); otherwise
it is rejected, logged, and listed as rejected with the reason under that model in ``/models``.
``RETINA_DEFAULT_SITE`` names the profile used when a request names none; a default that is not
loaded is a readiness problem (``/ready`` 503), never a silent fall-back to the model's points.

A request's ``site=``: a loaded name, ``default`` (the model's own points), or nothing (the
configured default). Anything else is 422 ``unknown_site``. Profiles decide fundus DR-grade
answers only; OCT answers ignore them and say ``profile: default``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.app.services.errors import ServiceError, invalid_parameter, not_ready
from retina.referral import Thresholds
from retina.site_profile import (
    DEFAULT_PROFILE,
    SiteProfile,
    SiteProfileError,
    applies_to,
    identity_problem,
    model_fingerprint,
    read_profile,
    retemper,
    site_thresholds,
)

logger = logging.getLogger(__name__)


def unknown_site(name: str, known: Iterable[str]) -> ServiceError:
    names = ", ".join([DEFAULT_PROFILE, *sorted(known)])
    return ServiceError(422, "unknown_site", f"unknown site {name!r}; loaded site profiles: {names}")


@dataclass(frozen=True)
class SiteEntry:
    """One ``<name>.json`` as the service saw it: ``profile`` when loaded, else ``error``."""

    name: str
    path: Path
    model_id: str | None
    profile: SiteProfile | None = None
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return self.profile is not None


@dataclass(frozen=True)
class Decision:
    """How one answer is decided: by ``profile`` (a site's) or, when None, by the model's own points."""

    profile: SiteProfile | None = None

    @property
    def name(self) -> str:
        return self.profile.name if self.profile is not None else DEFAULT_PROFILE

    def probabilities(self, model_temperature: float, probs: np.ndarray) -> np.ndarray:
        """The model-calibrated ``(K,)`` (or ``(N, K)``) probabilities at the site's temperature."""
        if self.profile is None:
            return probs
        return retemper(probs, model_temperature, self.profile.temperature)

    def thresholds(self, settings: Thresholds) -> Thresholds:
        return settings if self.profile is None else site_thresholds(self.profile, settings)

    def points(self, meta_points: dict[str, Any]) -> dict[str, Any]:
        """The operating points the PDF prints: the profile's, else the checkpoint's."""
        return self.profile.points() if self.profile is not None else meta_points


@dataclass
class SiteRegistry:
    """Loaded and rejected profiles, and the configured default."""

    entries: dict[str, SiteEntry] = field(default_factory=dict)
    default: str | None = None

    @property
    def loaded(self) -> dict[str, SiteProfile]:
        return {n: e.profile for n, e in self.entries.items() if e.profile is not None}

    def for_model(self, model_id: str, fallback: bool = False) -> list[SiteEntry]:
        """Entries naming ``model_id``; with ``fallback`` also those naming no served model (shown somewhere)."""
        return [e for e in self.entries.values() if e.model_id == model_id or (fallback and e.model_id is None)]

    def resolve(self, site: str | None) -> SiteProfile | None:
        """``site=`` -> the profile to apply (None: the model's own points); 422 ``unknown_site`` otherwise."""
        name = self.default if site is None else site
        if name is None or name == DEFAULT_PROFILE:
            return None
        entry = self.entries.get(name)
        if site is None and (entry is None or entry.profile is None):
            raise not_ready(f"the default site profile {name!r} is not loaded; see GET /ready")
        if entry is None or entry.profile is None:
            if entry is not None:
                raise ServiceError(422, "unknown_site", f"site {name!r} was not loaded: {entry.error}")
            raise unknown_site(name, self.loaded)
        return entry.profile


def decision_for(task: str, model_id: str, class_names: list[str], profile: SiteProfile | None) -> Decision:
    """The decision for an answer of this model: the profile for its fundus model, else the model's points.

    A profile fitted for another fundus model is a 422: its thresholds mean nothing for this one.
    """
    if profile is None or not applies_to(task, class_names):
        return Decision()  # OCT (and custom class sets) ignore site profiles
    if profile.model.model_id != model_id:
        raise invalid_parameter(
            f"site {profile.name!r} was fitted for model {profile.model.model_id!r}, not {model_id!r}"
        )
    return Decision(profile)


def load_sites(sites_dir: Path, served: Iterable[Any], default: str | None) -> tuple[SiteRegistry, list[str]]:
    """Read every ``sites_dir/*.json`` against the served models; ``(registry, readiness problems)``.

    ``served``: the store's served models (``id``, ``task``, ``class_names``, ``meta.version``, ``model``).
    """
    registry = SiteRegistry(default=default if default not in (None, "", DEFAULT_PROFILE) else None)
    files = sorted(Path(sites_dir).glob("*.json")) if Path(sites_dir).is_dir() else []
    fundus = {m.id: m for m in served if applies_to(m.task, m.class_names)}
    fingerprints: dict[str, str] = {}
    for path in files:
        try:
            profile = read_profile(path)
        except SiteProfileError as e:
            registry.entries[path.stem] = SiteEntry(path.stem, path, None, error=str(e))
            continue
        model_id = profile.model.model_id
        m = fundus.get(model_id)
        if m is None:
            error = f"fitted for model {model_id!r}, which is not served here as a fundus DR-grade model"
            registry.entries[profile.name] = SiteEntry(profile.name, path, None, error=error)
            continue
        if model_id not in fingerprints:  # hashing the weights costs ~0.1 s a model: only when a profile needs it
            fingerprints[model_id] = model_fingerprint(m.model)
        problem = identity_problem(profile, m.id, m.meta.version, fingerprints[model_id])
        registry.entries[profile.name] = SiteEntry(
            profile.name, path, model_id, profile if problem is None else None, problem
        )
    problems = []
    for e in registry.entries.values():
        if e.loaded:
            logger.info("site profile %s loaded for %s (T=%.3f)", e.name, e.model_id, e.profile.temperature)
        else:
            logger.error("SITE PROFILE REJECTED: %s (%s): %s", e.name, e.path, e.error)
    if registry.default is not None and registry.default not in registry.loaded:
        entry = registry.entries.get(registry.default)
        why = f"it was rejected: {entry.error}" if entry else f"there is no {registry.default}.json in {sites_dir}"
        problems.append(f"RETINA_DEFAULT_SITE={registry.default} is not loaded: {why}")
    return registry, problems
