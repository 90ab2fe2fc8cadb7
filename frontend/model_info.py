"""What the backend serves, as typed, frozen objects: ``GET /ready`` and each entry of ``GET /models``.

Like ``answers.py``, each class mirrors a schema of the backend's OpenAPI under the same field names
(checked by ``tests/frontend/test_openapi_contract.py``); no HTTP and no Streamlit here. A model's
``disclaimer`` and ``operating_point_text`` are the backend's words, printed as they come.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# ``?model=auto``: the backend picks the task from the image (OCT B-scan or fundus photo). The UI offers it
# as a stand-in model of that id and task.
AUTO_MODEL = "auto"


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class ReadyStatus:
    """Outcome of ``GET /ready``; :attr:`text` is the sidebar line (other tests key on its wording).

    Attributes:
        max_upload_mb: the backend's per-file upload limit in MB (10^6 B), its ``limits.max_upload_mb``;
            ``None`` when it did not say.
    """

    state: Literal["ready", "not_ready", "unreachable"]
    detail: str = ""
    max_upload_mb: float | None = None

    @property
    def text(self) -> str:
        if self.state == "ready":
            return "Backend ready"
        if self.state == "not_ready":
            return f"Backend not ready: {self.detail}"
        return f"Backend unreachable: {self.detail}"

    @property
    def reachable(self) -> bool:
        return self.state != "unreachable"


@dataclass(frozen=True)
class ModelInfo:
    """One entry of ``GET /models`` (backend ``ModelInfo``).

    Attributes:
        classes: output class names in logit order.
        input_size: side of the square model input in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        metrics: the training run's own record as the checkpoint stores it (nested dict, may be empty);
            shown only when the backend sends no ``figures`` (an older backend).
        figures: the shipped file's headline figures, one entry per evaluation set in the model card's
            order: ``{name, kind, title, heading, n, n_patients, figures: [{key, label, value, ci95, text}]}``
            (``text`` is how the card and the PDF print the figure: ``0.921 [0.900, 0.940]``).
        card: model card, markdown text or a dict of fields, or ``None``.
        temperature: softmax calibration temperature (``None``: not reported).
        calibration: how the temperature was fitted (``method``, ``fitted_on``) and the expected
            calibration error before and after it (``ece_before``, ``ece_after``, in [0, 1]); may be empty.
        operating_points: the referral operating points stored in the checkpoint, by name (``refer``,
            ``urgent``, ``routine``): ``{threshold, score, positive, target_sensitivity, fitted_on, fit,
            checks}``, where ``fit`` and each ``checks[name]`` hold ``sensitivity``, ``specificity``, their
            ``*_ci95`` intervals, ``n`` and ``n_positive``; empty when none was fitted.
        served_thresholds: the referral thresholds the backend applies, by point name (a
            ``RETINA_REFERRAL_*`` setting overrides the checkpoint's operating point); empty: no policy.
        operating_point_text: the backend's sentence for each served point, by point name (``Refer when
            P(grade >= 2) >= 0.108, chosen on validation: sensitivity ...``); empty from an older backend.
        disclaimer: the research-use disclaimer the pages show; empty from an older backend.
        informative: ``False`` when the model's validated balanced accuracy interval includes chance;
            its answers then carry the referral level ``not_informative``, never a referral.
        advice_note: why the model's answers carry no referral advice (not informative, or no referral
            policy for its classes), in the backend's words; None when they carry advice or from an older backend.
        loaded: ``False`` for a registered model the backend failed to load (``error`` says why).
        sites: site profiles fitted for this model (fundus): ``{name, loaded, default, error, profile}`` each.
    """

    id: str
    task: str
    arch: str = ""
    classes: tuple[str, ...] = ()
    input_size: int | None = None
    channels: int | None = None
    version: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: tuple[dict[str, Any], ...] = ()
    default: bool = False
    description: str = ""
    card: Any = None
    loaded: bool = True
    error: str | None = None
    temperature: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    operating_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    served_thresholds: dict[str, float] = field(default_factory=dict)
    operating_point_text: dict[str, str] = field(default_factory=dict)
    disclaimer: str = ""
    informative: bool = True
    advice_note: str | None = None
    sites: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelInfo:
        points = d.get("operating_points") or {}
        return cls(
            id=str(d["id"]),
            task=str(d["task"]),
            arch=str(d.get("arch") or ""),
            classes=tuple(str(c) for c in d.get("classes") or ()),
            input_size=d.get("input_size"),
            channels=d.get("channels"),
            version=str(d.get("version") or ""),
            metrics=dict(d.get("metrics") or {}),
            figures=tuple(dict(e) for e in d.get("figures") or () if isinstance(e, Mapping)),
            default=bool(d.get("default", False)),
            description=str(d.get("description") or ""),
            card=d.get("card"),
            loaded=bool(d.get("loaded", True)),
            error=None if d.get("error") is None else str(d["error"]),
            temperature=_opt_float(d.get("temperature")),
            calibration=dict(d.get("calibration") or {}),
            operating_points={str(k): dict(v) for k, v in points.items() if isinstance(v, Mapping)},
            served_thresholds={
                str(k): float(v) for k, v in (d.get("served_thresholds") or {}).items() if v is not None
            },
            operating_point_text={str(k): str(v) for k, v in (d.get("operating_point_text") or {}).items() if v},
            disclaimer=str(d.get("disclaimer") or ""),
            informative=bool(d.get("informative", True)),
            advice_note=str(d["advice_note"]) if d.get("advice_note") else None,
            sites=tuple(dict(s) for s in d.get("sites") or () if isinstance(s, Mapping) and "name" in s),
        )
