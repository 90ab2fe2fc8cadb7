"""One image's assessment: gate -> which model answers -> calibrated probabilities -> referral -> label.

The domain step, without HTTP, threads or audit, in one call: :func:`assess_image` (a decoded
image, the served models, the gate -> the model that answered and a :class:`Refusal` or an
:class:`Assessment`). The batch scorer (``scoring/batch.py``) calls it once per file. The API's
pipeline (``backend/app/services/pipeline.py``) runs the same parts split across its pools and
micro-batcher: :func:`route` in the decode thread, :func:`forward_probabilities` in the
micro-batcher, :func:`grade` or :func:`ungradable` after. So the choice of model (``auto``: the
one that reads the gate's modality), the refusals, the probabilities, the label, the referral
and the derived figures are each decided in one place, and every reader (the JSON answer, the
PDF, the audit row, a batch row) reads the same frozen result:

* :class:`Refusal`: the gate saw no retinal image, or the other modality than the model reads;
* :class:`Assessment` with ``gradable`` False: the right kind of image, unusable (no diagnosis);
* :class:`Assessment` with ``gradable`` True: probabilities, label and referral advice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from retina.checkpoint import CheckpointMeta
from retina.gate import GateResult, ImageGate
from retina.intake import prepare_image
from retina.labels import DR_GRADES, derived_dr_probabilities
from retina.referral import Thresholds, consistent_label, referral_for, ungradable_referral
from retina.site_profile import DEFAULT_PROFILE

_KIND = {"oct": "an OCT B-scan", "fundus": "a colour fundus photo"}
_READS = {"oct": "OCT B-scans", "fundus": "colour fundus photos"}


@dataclass(frozen=True)
class Refusal:
    """The gate turned the image away: ``code`` is ``not_retinal_image`` or ``wrong_modality``."""

    code: str
    detail: str
    gate: GateResult


@dataclass(frozen=True)
class Assessment:
    """What one model made of one gradable (or ungradable) image.

    Attributes:
        model, model_version, task: the model that answered (aliases resolved).
        gradable: False: no diagnosis; ``referral.level`` is ``ungradable`` and ``gate.reasons`` say why.
        label, confidence: the likeliest class consistent with the referral and its probability in [0, 1].
        probabilities: class name -> calibrated probability in [0, 1], in model order.
        inference_ms: time of the forward pass that produced the probabilities.
        derived: 5-grade DR models: ``{"referable": P(grade >= 2), "any": P(grade >= 1)}``.
        referral: ``{level, advice, reason, probability, threshold, note}``; None without a policy.
        gate: the image gate's verdict; None when the gate is off.
    """

    model: str
    model_version: str
    task: str
    gradable: bool
    label: str | None
    confidence: float | None
    probabilities: Mapping[str, float] | None
    inference_ms: float
    derived: Mapping[str, float] | None
    referral: Mapping[str, Any] | None
    gate: GateResult | None

    @property
    def label_index(self) -> int | None:
        return None if self.label is None or self.probabilities is None else list(self.probabilities).index(self.label)

    def to_dict(self) -> dict[str, Any]:
        """Plain types: the ``PredictResponse`` body, and what the audit row reads."""
        return {
            "model": self.model,
            "model_version": self.model_version,
            "task": self.task,
            "gradable": self.gradable,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": None if self.probabilities is None else dict(self.probabilities),
            "inference_ms": self.inference_ms,
            "derived": None if self.derived is None else dict(self.derived),
            "referral": None if self.referral is None else dict(self.referral),
            "gate": self.gate.to_dict() if self.gate is not None else None,
        }


def not_retinal(verdict: GateResult) -> Refusal:
    """``not_retinal_image`` with the gate probabilities that decided it."""
    near = ", ".join(
        f"{m} {p:.3f}" + (f" (accepted from {verdict.thresholds[m]:.3f})" if m in verdict.thresholds else "")
        for m, p in verdict.probabilities.items()
    )
    extra = [r for r in verdict.reasons if not r.startswith("it does not look like")]
    return Refusal(
        "not_retinal_image",
        "this does not look like an OCT B-scan or a colour fundus photo"
        + (f" ({'; '.join(extra)})" if extra else "")
        + (f"; the image gate's probabilities: {near}" if near else "")
        + ". Nothing was predicted.",
        verdict,
    )


def refusal(verdict: GateResult | None, model_id: str, task: str, right: str | None = None) -> Refusal | None:
    """Why the gate turns the image away from model ``model_id`` (reading ``task``), or None to go on.

    ``right``: the id of the model that reads what the gate saw, named in ``wrong_modality``.
    """
    if verdict is None:
        return None
    if verdict.modality == "other":
        return not_retinal(verdict)
    if verdict.modality != task:
        return Refusal(
            "wrong_modality",
            f"this looks like {_KIND[verdict.modality]}, but model {model_id!r} reads {_READS[task]}: "
            f"send it with model={verdict.modality}" + (f" (model {right})" if right else "") + " or model=auto",
            verdict,
        )
    return None


def grade(
    model_id: str,
    meta: CheckpointMeta,
    probs: np.ndarray,
    inference_ms: float,
    thresholds: Thresholds,
    gate: GateResult | None = None,
    profile: str = DEFAULT_PROFILE,
) -> Assessment:
    """Calibrated probabilities ``(num_classes,)`` -> the referral at the model's operating points and a
    label consistent with it (see ``retina.referral``).

    ``profile``: which site profile chose ``thresholds`` (and the temperature of ``probs``), recorded in
    the referral; ``default`` for the model's own points (``retina.site_profile``).
    """
    names = list(meta.class_names)
    referral = referral_for(meta.task, names, probs, thresholds, meta)
    if referral is not None:
        referral = {**referral, "profile": profile}
    best = consistent_label(meta.task, names, probs, referral)
    derived = derived_dr_probabilities(probs) if meta.task == "fundus" and tuple(names) == tuple(DR_GRADES) else None
    return Assessment(
        model=model_id,
        model_version=meta.version,
        task=meta.task,
        gradable=True,
        label=names[best],
        confidence=float(probs[best]),
        probabilities={name: float(p) for name, p in zip(names, probs, strict=True)},
        inference_ms=round(inference_ms, 3),
        derived=derived,
        referral=referral,
        gate=gate,
    )


def ungradable(
    model_id: str,
    meta: CheckpointMeta,
    gate: GateResult | None,
    reasons: list[str] | None = None,
    inference_ms: float = 0.0,
    profile: str = DEFAULT_PROFILE,
) -> Assessment:
    """The assessment of an image (or volume) found ungradable: the reasons, no diagnosis.

    ``reasons`` default to the gate's; a volume passes its own (too few gradable B-scans) and no gate.
    """
    return Assessment(
        model=model_id,
        model_version=meta.version,
        task=meta.task,
        gradable=False,
        label=None,
        confidence=None,
        probabilities=None,
        inference_ms=round(inference_ms, 3),
        derived=None,
        referral={
            **ungradable_referral(reasons if reasons is not None else (gate.reasons if gate else [])),
            "profile": profile,
        },
        gate=gate,
    )


def forward_probabilities(
    model: nn.Module, to_input: Callable[[torch.Tensor], torch.Tensor], u8: torch.Tensor, temperature: float
) -> np.ndarray:
    """Prepared ``uint8 (N, C, S, S)`` (on the model's device) -> calibrated ``float64 (N, K)``, rows sum to 1.

    ``to_input`` is ``retina.preprocessing.tail(spec)`` of the checkpoint's spec; the softmax is
    of ``logits / temperature`` in float64. The service's micro-batcher and the batch scorer both
    call this, under ``torch.inference_mode``. Rows depend on the batch they were computed in to
    ~1e-7 (oneDNN picks other kernels for other batch sizes).
    """
    x = to_input(u8).contiguous(memory_format=torch.channels_last)
    logits = model(x)
    return torch.softmax(logits.double() / temperature, dim=1).cpu().numpy()


# ----------------------------------------------------------------------------- routing


class ScoringModel(Protocol):
    """What the domain step reads of a loaded model (``retina.loading.LoadedModel``, the service's ``ServedModel``)."""

    @property
    def id(self) -> str: ...

    @property
    def task(self) -> str: ...

    @property
    def meta(self) -> CheckpointMeta: ...


M = TypeVar("M", bound=ScoringModel)
M_co = TypeVar("M_co", bound=ScoringModel, covariant=True)


class ModelChoice(Protocol[M_co]):
    """The models a process serves, as routing needs them (the service's model store, a batch scorer)."""

    def for_modality(self, modality: str) -> M_co:
        """The model that reads ``modality`` (``oct`` or ``fundus``) when the request said ``auto``."""
        ...

    def default_id(self, modality: str) -> str | None:
        """The id of the default model for ``modality`` (named in ``wrong_modality``'s advice), None if none."""
        ...


@dataclass(frozen=True)
class Route(Generic[M]):
    """Which model answers an image, or why none does.

    Attributes:
        model: the requested model, or for ``auto`` the one that reads the gate's modality; None only
            for ``auto`` and an image the gate found not retinal.
        refusal: None to go on (the image may still be ungradable); else ``not_retinal_image`` or
            ``wrong_modality``, with the gate's verdict.
    """

    model: M | None
    refusal: Refusal | None


def route(verdict: GateResult | None, requested: M | None, models: ModelChoice[M]) -> Route[M]:
    """The one place where a model is chosen for an image the gate judged ``verdict``.

    ``requested``: the model the caller asked for, or None for ``auto`` (then ``verdict`` is required:
    callers refuse ``auto`` without a gate before any image is read). Pure look-ups: the service
    calls it in its decode thread, between the gate and the preparation for the chosen model.
    """
    if requested is None:
        if verdict is None:
            raise ValueError("model=auto needs the image gate's verdict")
        if verdict.modality == "other":
            return Route(None, not_retinal(verdict))
        requested = models.for_modality(verdict.modality)
    right = models.default_id(verdict.modality) if verdict is not None else None
    return Route(requested, refusal(verdict, requested.id, requested.task, right))


# A prepared ``uint8 (C, S, S)`` input of model ``M`` -> its calibrated probabilities ``float64 (K,)``.
Probabilities = Callable[[M, torch.Tensor], np.ndarray]


@torch.inference_mode()
def assess_image(
    img: Image.Image,
    requested: M | None,
    models: ModelChoice[M],
    gate: ImageGate | None,
    probabilities: Probabilities[M],
    thresholds: Thresholds,
) -> tuple[M | None, Assessment | Refusal]:
    """The whole domain step for one decoded image, in the caller's thread.

    ``img``: the decoded, EXIF-upright ``L``/``RGB`` image (``retina.intake.decode_and_check`` with no
    gate). The gate judges it, :func:`route` picks the model (``requested`` None: ``auto``), the image
    is prepared with that model's own spec (``retina.intake.prepare_image``, as the service) and
    ``probabilities`` scores it (e.g. :func:`forward_probabilities` on a batch of one). Returns the
    model that answered (None: ``auto`` and not retinal) and the refusal or assessment; ``inference_ms``
    is 0 (a caller that times its forwards records that itself).
    """
    verdict = gate.assess(img) if gate is not None else None
    chosen = route(verdict, requested, models)
    served = chosen.model
    if chosen.refusal is not None:
        return served, chosen.refusal
    assert served is not None  # route: only a refusal comes without a model
    if verdict is not None and not verdict.gradable:
        return served, ungradable(served.id, served.meta, verdict)
    probs = probabilities(served, prepare_image(img, served.meta.preprocess))
    return served, grade(served.id, served.meta, probs, 0.0, thresholds, verdict)
