"""One image's assessment: the gate's verdict, then calibrated probabilities -> referral -> label.

The domain step of the service, without HTTP, threads or audit. The API's pipeline
(``backend/app/services/pipeline.py``) splits it across its pools and micro-batcher; the batch
scorer (``scoring/batch.py``) runs it in a loop per worker; :func:`assess_image` is the one-call
form for scripts. All go through :func:`refusal`, :func:`forward_probabilities` and :func:`grade`
(or :func:`ungradable`), so the probabilities, the label, the referral and the derived figures
are computed in one place and every reader (the JSON answer, the PDF, the audit row, a batch
row) reads the same frozen result:

* :class:`Refusal`: the gate saw no retinal image, or the other modality than the model reads;
* :class:`Assessment` with ``gradable`` False: the right kind of image, unusable (no diagnosis);
* :class:`Assessment` with ``gradable`` True: probabilities, label and referral advice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from retina.checkpoint import CheckpointMeta
from retina.gate import GateResult, ImageGate
from retina.labels import DR_GRADES, derived_dr_probabilities
from retina.preprocessing import pil_to_uint8_tensor, prepare, tail
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


@torch.inference_mode()
def assess_image(
    img: Image.Image,
    model: nn.Module,
    meta: CheckpointMeta,
    gate: ImageGate | None,
    thresholds: Thresholds,
    model_id: str = "model",
) -> Assessment | Refusal:
    """The whole domain step for one decoded image, in the caller's thread (a script's loop).

    ``model`` in eval mode; the input is ``prepare`` + ``tail`` of ``meta.preprocess`` (together
    ``eval_transform``), the same the service applies.
    """
    verdict = gate.assess(img) if gate is not None else None
    refused = refusal(verdict, model_id, meta.task)
    if refused is not None:
        return refused
    if verdict is not None and not verdict.gradable:
        return ungradable(model_id, meta, verdict)
    device = next(model.parameters()).device
    u8 = pil_to_uint8_tensor(prepare(img, meta.preprocess)).unsqueeze(0).to(device)
    probs = forward_probabilities(model, tail(meta.preprocess), u8, meta.temperature)[0]
    return grade(model_id, meta, probs, 0.0, thresholds, verdict)
