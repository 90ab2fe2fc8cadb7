"""Streamlit building blocks shared by the entrypoint and the pages.

No HTTP here: every call goes through ``frontend.cache`` to ``frontend.client``. Every backend
failure arrives as a ``BackendError`` and is shown with ``st.error(err.message)``, except the
image gate's refusals (not a retinal image, wrong modality, not gradable): those are a problem
with the picture, not the service, and are shown with ``st.warning``.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

import altair as alt
import pandas as pd
import streamlit as st
from PIL import Image, ImageOps

from frontend import cache, sites
from frontend.client import (
    AUTO_MODEL,
    CAM_METHODS,
    GATE_ERRORS,
    TASK_LABELS,
    BackendClient,
    BackendError,
    CamResult,
    ClientSettings,
    ModelInfo,
    Prediction,
    ReadyStatus,
    VolumeResult,
    is_volume_refusal,
)

log = logging.getLogger(__name__)

DISCLAIMER = "Research tool, not a diagnosis. Outputs must not be used for clinical decisions."
# "dcm": single-frame DICOM, decoded by the backend (the browser gets no preview of it).
UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "dcm"]
CTX_KEY = "retina_ctx"
AUTO_LABEL = "Auto-detect (OCT or fundus)"
# Readable names of the fundus model's derived binary outputs (``Prediction.derived``).
DERIVED_LABELS = {"referable": "Referable DR (grade ≥ 2)", "any": "Any DR (grade ≥ 1)"}
CamSize = Literal["input", "original"]
# Longest side of the preview sent to the browser: uploads can be large camera photos.
PREVIEW_MAX_PX = 1024

AlertStyle = Literal["error", "warning", "success", "info"]
# Referral level -> (headline, alert style): urgent red, refer/routine amber, observation and
# rescreen green, ungradable amber (retake), not informative amber (no advice: the model's
# validated accuracy is indistinguishable from chance). The headlines are those of the backend's PDF report.
REFERRAL_STYLES: dict[str, tuple[str, AlertStyle]] = {
    "urgent": ("Urgent referral", "error"),
    "refer": ("Refer to an ophthalmologist", "warning"),
    "routine": ("Routine referral", "warning"),
    "observation": ("Observation", "success"),
    "rescreen_12_months": ("Rescreen in 12 months", "success"),
    "ungradable": ("Ungradable image", "warning"),
    "not_informative": ("No advice (model not informative)", "warning"),
}
NOT_INFORMATIVE = (
    "**Not informative**: this model's validated balanced accuracy is not distinguishable from chance, "
    "so its answers carry no referral advice."
)
# (task, operating point) -> (action, the probability compared with the threshold), worded as the
# backend's referral reasons are (``P(grade >= 2) = 0.71 >= 0.23``).
POINT_WORDS: dict[tuple[str, str], tuple[str, str]] = {
    ("fundus", "refer"): ("Refer", "P(grade >= 2)"),
    ("fundus", "urgent"): ("Urgent referral", "P(proliferative)"),
    ("oct", "urgent"): ("Urgent referral", "P(CNV) + P(DME)"),
    ("oct", "routine"): ("Routine referral", "P(CNV) + P(DME) + P(DRUSEN)"),
}
ALERT_ICONS: dict[AlertStyle, str] = {
    "error": ":material/emergency:",
    "warning": ":material/warning:",
    "success": ":material/check_circle:",
    "info": ":material/info:",
}
# The image gate's 422 codes -> headline, and what the user can do about it.
GATE_TITLES: dict[str, tuple[str, str]] = {
    "not_retinal_image": ("Not a retinal image", "Upload an OCT B-scan or a colour fundus photo."),
    "wrong_modality": (
        "Wrong image type for this model",
        f"Pick the matching task in the sidebar, or {AUTO_LABEL}.",
    ),
    "ungradable_image": ("Image not gradable", "Retake the image."),
}
MODALITY_NAMES = {"oct": "OCT B-scan", "fundus": "colour fundus photo", "other": "not a retinal image"}
# What each task's models read, for the wrong-modality message in a clinician's words (the API's detail
# speaks of query parameters: "send it with model=oct (model oct-resnet18)").
TASK_IMAGES = {"oct": ("an OCT B-scan", "OCT B-scans"), "fundus": ("a colour fundus photo", "colour fundus photos")}
RETAKE = "Retake the image."
# results_table's referral cell of an image the backend refused (not a retinal image, wrong modality...).
REFUSED = "refused"


# ----------------------------------------------------------------------------- context (sidebar)


@dataclass
class AppContext:
    """What the sidebar resolved on this rerun; the pages read it from ``st.session_state``."""

    settings: ClientSettings
    client: BackendClient
    status: ReadyStatus
    models: list[ModelInfo] = field(default_factory=list)
    models_error: str | None = None
    model: ModelInfo | None = None
    site: str | None = None  # the site profile fundus answers are decided by (None: the backend's default)


def context() -> AppContext:
    """The context the entrypoint stored for this rerun."""
    return st.session_state[CTX_KEY]


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric dicts as ``{"val.accuracy": 0.91, ...}``; keeps scalars, drops lists (matrices, CIs)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, bool) or value is None:
            out[name] = str(value)
        elif isinstance(value, int | float | str):
            out[name] = value
    return out


def metrics_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Every scalar metric as two string columns (metric, value); numbers rounded to 3 decimals."""
    flat = flatten_metrics(metrics)
    values = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in flat.values()]
    return pd.DataFrame({"metric": list(flat), "value": values})


# The few numbers a reader wants first, looked up in each evaluation split of the checkpoint's
# metrics (training/metrics.py layout: {"val": {...}, "test": {...}}); dotted = nested.
HEADLINE_METRICS = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "Macro F1"),
    ("roc_auc.macro", "ROC AUC (macro)"),
    ("referable.roc_auc", "Referable DR AUC"),
    ("ece", "Calibration error (ECE)"),
)
SPLIT_NAMES = {
    "cv": "Cross-validation",
    "test": "Test",
    "val": "Validation",
    "validation": "Validation",
    "holdout": "Hold-out",
}


def _lookup(d: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def _format_metric(split: Mapping[str, Any], key: str) -> str | None:
    value = _lookup(split, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    text = f"{value:.3f}"
    ci = _lookup(split, f"{key}_ci95")
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(c, int | float) for c in ci):
        text += f" ({ci[0]:.2f}-{ci[1]:.2f})"
    return text


def headline_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """``[(split title, table of metric/value)]``: CV, then test, then validation; 95% CIs in brackets.

    Falls back to every scalar under one "Metrics" title when the layout is not recognised.
    """
    splits = [k for k in ("cv", "test", "val", "validation", "holdout") if isinstance(metrics.get(k), Mapping)]
    if "cv" in splits:
        # A cross-validated model's own validation split is the handful of images left over for the
        # final fit; its numbers are noise beside the out-of-fold ones.
        splits = [k for k in splits if k not in ("val", "validation")]
    out = []
    for key in splits or [""]:
        split = metrics[key] if key else metrics
        rows = [(label, text) for k, label in HEADLINE_METRICS if (text := _format_metric(split, k)) is not None]
        if not rows:
            continue
        title = SPLIT_NAMES.get(key, "Metrics")
        if isinstance(split.get("n"), int):
            patients = split.get("n_patients")
            title += f" (n={split['n']}" + (f", {patients} patients)" if isinstance(patients, int) else ")")
        out.append((title, pd.DataFrame(rows, columns=["metric", "value"])))
    if not out:
        frame = metrics_frame(metrics)
        if len(frame):
            out.append(("Metrics", frame))
    return out


def figure_tables(model: ModelInfo) -> list[tuple[str, str, str, pd.DataFrame]]:
    """``[(heading, kind, title, table of metric/value)]``, one per evaluation set, in the model card's order.

    The values are the backend's ``figures[].text``, printed as the model card and the PDF print them
    (``0.921 [0.900, 0.940]``), so the UI never rounds a figure differently. An older backend without
    ``figures``: the training-run ``metrics`` through :func:`headline_metrics` (kind ``""``).
    """
    out = []
    for ev in model.figures:
        rows = [
            (str(f.get("label") or f.get("key")), str(f.get("text")))
            for f in ev.get("figures") or ()
            if isinstance(f, Mapping) and f.get("text") is not None
        ]
        if rows:
            heading = str(ev.get("heading") or ev.get("name") or "Metrics")
            frame = pd.DataFrame(rows, columns=["metric", "value"])
            out.append((heading, str(ev.get("kind") or ""), str(ev.get("title") or ""), frame))
    if not out:
        out = [(title, "", "", frame) for title, frame in headline_metrics(model.metrics)]
    return out


def render_figure_table(heading: str, title: str, frame: pd.DataFrame) -> None:
    st.markdown(f"**{heading}**")
    if title:
        st.caption(title)
    # st.table, not st.dataframe: a narrow sidebar wraps a long value instead of cutting it
    # ("0.326 (0.17-0.5").
    st.table(frame, hide_index=True)


def render_metrics(model: ModelInfo, every_set: bool = False) -> None:
    """The model's headline figures, one table per evaluation set.

    The sidebar (``every_set=False``) shows the lead set (the card's first that is not a validation split,
    as the PDF does) and the others in an expander; the Models page shows every set.
    """
    tables = figure_tables(model)
    if not tables:
        st.caption("No evaluation figures recorded.")
        return
    if every_set:
        for heading, _kind, title, frame in tables:
            render_figure_table(heading, title, frame)
        return
    lead = next((t for t in tables if t[1] != "validation"), tables[0])
    render_figure_table(lead[0], lead[2], lead[3])
    others = [t for t in tables if t is not lead]
    if others:
        with st.expander(f"Other evaluation sets ({len(others)})"):
            for heading, _kind, title, frame in others:
                render_figure_table(heading, title, frame)


def render_model_card(card: Any) -> None:
    """A model card is markdown text or a dict of fields (data, split, metrics, limits...)."""
    if isinstance(card, str):
        st.markdown(card)
    elif isinstance(card, Mapping):
        for key, value in card.items():
            if isinstance(value, Mapping | list):
                st.markdown(f"**{key}**")
                st.json(value, expanded=False)
            else:
                st.markdown(f"**{key}**: {value}")
    else:
        st.caption("No model card.")


def model_facts(model: ModelInfo) -> str:
    """One line: architecture, input, classes."""
    colour = {1: "grayscale", 3: "RGB"}.get(model.channels or 0, f"{model.channels} ch")
    size = f"{model.input_size} px {colour}" if model.input_size else colour
    return f"{model.arch} · input {size} · {len(model.classes)} classes"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def calibration_text(model: ModelInfo) -> str:
    """One line on the probability calibration, e.g.
    ``Temperature scaling (T = 1.23, fitted on val): ECE 0.081 → 0.023``.

    ECE is the expected calibration error in [0, 1] (lower: probabilities closer to observed
    frequencies), measured before and after the temperature was applied.
    """
    cal = model.calibration or {}
    temperature = cal.get("temperature", model.temperature)
    before, after = cal.get("ece_before"), cal.get("ece_after")
    if not cal and (temperature is None or temperature == 1.0):
        return "Not calibrated (raw softmax probabilities)."
    method = cal.get("method")
    name = "Temperature scaling" if method in (None, "temperature") else str(method)
    facts = [f"T = {temperature:.2f}"] if _number(temperature) else []
    if cal.get("fitted_on"):
        facts.append(f"fitted on {cal['fitted_on']}")
    text = name + (f" ({', '.join(facts)})" if facts else "")
    if _number(before) and _number(after):
        text += f": ECE {before:.3f} → {after:.3f}"
    elif _number(after):
        text += f": ECE {after:.3f}"
    return text


def _interval(ci: Any) -> str:
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_number(c) for c in ci):
        return f" ({ci[0]:.2f}-{ci[1]:.2f})"
    return ""


def sens_spec_text(stats: Any) -> str | None:
    """``sensitivity 0.87 (0.80-0.92), specificity 0.55 (0.49-0.61)`` of one evaluation at a threshold.

    ``stats`` is an operating point's ``fit`` or one of its ``checks`` (95% intervals in brackets);
    ``None`` when it has neither number.
    """
    if not isinstance(stats, Mapping):
        return None
    parts = [
        f"{name} {stats[name]:.2f}{_interval(stats.get(f'{name}_ci95'))}"
        for name in ("sensitivity", "specificity")
        if _number(stats.get(name))
    ]
    return ", ".join(parts) or None


def _size(stats: Mapping[str, Any]) -> str:
    n, pos = stats.get("n"), stats.get("n_positive")
    if not _number(n):
        return ""
    return f"; n={n}" + (f", {pos} positive" if _number(pos) else "")


def operating_point_lines(model: ModelInfo) -> list[list[str]]:
    """Per referral threshold of ``model``, its lines: the rule with its validated figures, then each check set.

    E.g. ``["Refer at P(grade >= 2) >= 0.23: sensitivity 0.87 (0.80-0.92), specificity 0.55 (0.49-0.61)
    on the validation split; n=742, 160 positive", "check idrid: sensitivity 0.80 (...), ..."]`` (95%
    intervals in brackets). The threshold is the one the backend serves; when a ``RETINA_REFERRAL_*``
    setting overrides the checkpoint's operating point, the checkpoint's figures are given for its
    own threshold (the check lines then name it).
    """
    names = list(model.served_thresholds) + [p for p in model.operating_points if p not in model.served_thresholds]
    out = []
    for name in names:
        point = model.operating_points.get(name) or {}
        fitted = point.get("threshold")
        served = model.served_thresholds.get(name, fitted)
        if not _number(served):
            continue
        action, score = POINT_WORDS.get((model.task, name), (name.replace("_", " ").capitalize(), None))
        score = score or str(point.get("score") or "P")
        head = f"{action} at {score} >= {served:.2f}"
        figures = sens_spec_text(point.get("fit"))
        if not _number(fitted):
            out.append([f"{head} (not a validated operating point)"])
            continue
        where = f" on {point['fitted_on']}" if point.get("fitted_on") else ""
        where += _size(point["fit"]) if isinstance(point.get("fit"), Mapping) else ""
        overridden = abs(float(served) - float(fitted)) > 1e-9
        if overridden:
            head += f" (service setting; the checkpoint's operating point is {fitted:.2f}"
            head += f": {figures}{where})" if figures else ")"
        elif figures:
            head += f": {figures}{where}"
        else:
            head += f" (fitted{where})" if where else ""
        lines = [head]
        for check, stats in (point.get("checks") or {}).items():
            if text := sens_spec_text(stats):
                at = f" at {fitted:.2f}" if overridden else ""
                lines.append(f"check {check}{at}: {text}{_size(stats)}")
        out.append(lines)
    return out


def render_operating_points(model: ModelInfo, caption: bool = True) -> None:
    """The model's referral thresholds with their validated sensitivity / specificity, and the
    "not informative" warning when its validated accuracy is indistinguishable from chance."""
    if not model.informative:
        st.warning(NOT_INFORMATIVE, icon=ALERT_ICONS["warning"])
    points = operating_point_lines(model)
    if not points:
        return
    show = st.caption if caption else st.markdown
    st.markdown("**Referral thresholds**")
    for lines in points:
        show("  \n".join([lines[0], *(f"· {line}" for line in lines[1:])]))


def task_defaults(models: Sequence[ModelInfo]) -> list[ModelInfo]:
    """The default model of each known task (OCT, then fundus): where ``?model=auto`` sends an image."""
    found = (next((m for m in models if m.task == t and m.default), None) for t in TASK_LABELS)
    return [m for m in found if m is not None]


def auto_model(models: Sequence[ModelInfo]) -> ModelInfo:
    """A stand-in :class:`ModelInfo` for ``?model=auto``.

    Its ``version`` joins the task defaults' ids and versions, so the prediction cache (keyed on
    model id and version) asks again when either default model changes.
    """
    defaults = task_defaults(models)
    loaded = [m for m in defaults if m.loaded]
    served = ", ".join(f"`{m.id}` (v{m.version})" for m in loaded) or "none"
    return ModelInfo(
        id=AUTO_MODEL,
        task=AUTO_MODEL,
        version="+".join(f"{m.id}@{m.version}" for m in defaults),
        description="The backend detects per image whether it is an OCT B-scan or a fundus photo and "
        f"answers with that task's default model: {served}.",
        loaded=bool(loaded),
        error=None if loaded else "no default OCT or fundus model is loaded",
    )


def model_label(model: ModelInfo) -> str:
    """``oct-resnet18 v1.0.0``, or ``auto-detect`` for the auto choice."""
    return "auto-detect" if model.id == AUTO_MODEL else f"{model.id} v{model.version}"


def _render_status(status: ReadyStatus) -> None:
    # Exactly one of the three texts (other tests key on them).
    if status.state == "ready":
        st.success(status.text, icon=":material/check_circle:")
    elif status.state == "not_ready":
        st.warning(status.text, icon=":material/hourglass_top:")
    else:
        st.error(status.text, icon=":material/cloud_off:")


def render_sidebar() -> AppContext:
    """Backend status, task and model pickers with version, metrics and card; returns the context."""
    try:
        settings = ClientSettings.from_env()
    except ValueError as e:
        st.error(f"Configuration error: {e}")
        st.stop()
    client = cache.get_client(settings)
    ctx = AppContext(settings=settings, client=client, status=client.ready())
    if ctx.status.reachable:
        try:
            ctx.models = cache.list_models(settings.backend_url, client)
        except BackendError as e:
            ctx.models_error = e.message

    with st.sidebar:
        _render_status(ctx.status)
        st.caption(f"API: `{settings.backend_url}`")
        if ctx.models_error:
            st.warning(f"Model list unavailable: {ctx.models_error}")
        if not ctx.models:
            return ctx
        known = [t for t in TASK_LABELS if any(m.task == t for m in ctx.models)]
        tasks = known + sorted({m.task for m in ctx.models} - set(known))
        # Auto-detect sits beside the tasks, not in a task's model list: the backend, not the
        # user, picks the task (and so the model) per image. It only knows OCT and fundus.
        choices = [*tasks, AUTO_MODEL] if known else tasks
        task = st.radio(
            "Task",
            choices,
            format_func=lambda t: AUTO_LABEL if t == AUTO_MODEL else TASK_LABELS.get(t, t),
            horizontal=True,
            key="task",
        )
        if task == AUTO_MODEL:
            ctx.model = auto_model(ctx.models)
            _render_auto_summary(ctx.model, task_defaults(ctx.models))
            ctx.site = sites.render_site_picker(ctx.models, ctx.model)
            return ctx
        candidates = {m.id: m for m in ctx.models if m.task == task}
        ids = list(candidates)
        # The task's default model, or else the first that loaded.
        default = next((i for i, m in enumerate(candidates.values()) if m.default and m.loaded), None)
        if default is None:
            default = next((i for i, m in enumerate(candidates.values()) if m.loaded), 0)
        chosen = st.selectbox(
            "Model",
            ids,
            index=default,
            format_func=lambda i: f"{i} (v{candidates[i].version})" if candidates[i].loaded else f"{i} (not loaded)",
            key=f"model-{task}",
        )
        ctx.model = candidates.get(chosen) or candidates[ids[default]]
        ctx.site = sites.render_site_picker(ctx.models, ctx.model)
        _render_model_summary(ctx.model)
    return ctx


def _render_auto_summary(auto: ModelInfo, defaults: Sequence[ModelInfo]) -> None:
    st.caption(auto.description)
    if not auto.loaded:
        st.warning(f"Auto-detect unavailable: {auto.error}")
    for m in defaults:
        st.markdown(f"**{m.id}** · {TASK_LABELS.get(m.task, m.task)} · version `{m.version or '?'}`")
        st.caption(f"Calibration: {calibration_text(m)}")
        if m.loaded and not m.informative:
            st.warning(NOT_INFORMATIVE, icon=ALERT_ICONS["warning"])


def _render_model_summary(model: ModelInfo) -> None:
    default = f" · default {TASK_LABELS.get(model.task, model.task)} model" if model.default else ""
    st.markdown(f"**{model.id}** · version `{model.version or '?'}`{default}")
    st.caption(model_facts(model))
    if model.description:
        st.caption(model.description)
    if not model.loaded:
        st.warning(f"Not loaded by the backend: {model.error or 'unknown reason'}")
        return
    st.caption(f"Calibration: {calibration_text(model)}")
    render_operating_points(model)
    render_metrics(model)
    if model.card:
        with st.expander("Model card"):
            render_model_card(model.card)


# ----------------------------------------------------------------------------- per-image results


@dataclass(frozen=True)
class Upload:
    """One uploaded file: name, raw bytes, SHA-256 and a stable widget-key suffix."""

    name: str
    data: bytes
    digest: str
    key: str

    @classmethod
    def from_uploaded(cls, f: Any) -> Upload:
        data = f.getvalue()
        # file_id is unique per upload, so two uploads of the same bytes get separate widgets.
        return cls(name=f.name, data=data, digest=cache.file_digest(data), key=str(getattr(f, "file_id", f.name)))


def uploader_limit_mb(limit_mb: float | None) -> int | None:
    """The file uploader's whole-MB limit for the backend's ``limit_mb`` (``None``: Streamlit's default).

    Streamlit takes an int; rounding up keeps files the backend accepts, and :func:`screen_uploads`
    refuses the few bytes between the two with the backend's own figure.
    """
    if limit_mb is None:
        return None
    return max(1, math.ceil(limit_mb))


def screen_uploads(uploads: Sequence[Upload], limit_mb: float | None) -> tuple[list[Upload], list[str]]:
    """Uploads to send, and a message for each one left out: a type the backend cannot read, over the
    backend's size limit, or the same bytes as an earlier upload (which would be scored and audited twice).

    The uploader accepts every type on purpose: its own type filter refuses a file silently (the reason
    only in a tooltip), while these messages are shown on the page.
    """
    keep: list[Upload] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    allowed = ", ".join(f".{t}" for t in UPLOAD_TYPES)
    for up in uploads:
        suffix = PurePath(up.name).suffix.lower().lstrip(".")
        if suffix not in UPLOAD_TYPES:
            problems.append(f"{up.name}: not an image this service reads ({allowed}); it was not sent.")
        elif limit_mb is not None and len(up.data) > limit_mb * 1_000_000:
            size = len(up.data) / 1e6
            problems.append(f"{up.name} is {size:.1f} MB, over the limit of {limit_mb:g} MB per file; it was not sent.")
        elif up.digest in seen:
            problems.append(f"{up.name} is the same file as {seen[up.digest]}; it is shown once.")
        else:
            seen[up.digest] = up.name
            keep.append(up)
    return keep, problems


@st.cache_data(max_entries=64, show_spinner=False)
def preview_png(digest: str, _data: bytes) -> bytes | None:
    """A browser-displayable PNG of an upload (TIFF, 16-bit and CMYK are not), at most 1024 px.

    Returns ``None`` when Pillow cannot read it; the backend then explains why with its own error.
    """
    try:
        with Image.open(io.BytesIO(_data)) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grayscale: scale to 8 bits for display only.
                img = img.point(lambda v: v / 256).convert("L")
            elif img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            img.thumbnail((PREVIEW_MAX_PX, PREVIEW_MAX_PX))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()
    except Exception:  # untrusted upload: any decoder failure just means "no preview"
        log.info("no preview for upload %s", digest[:12], exc_info=True)
        return None


def probability_chart(model: ModelInfo, pred: Prediction) -> alt.Chart:
    """Horizontal bars of every class probability in the model's class order, predicted class highlighted."""
    classes = list(model.classes) or list(pred.probabilities)
    frame = pd.DataFrame(
        {
            "class": classes,
            "probability": [pred.probabilities.get(c, 0.0) for c in classes],
            "predicted": [c == pred.label for c in classes],
        }
    )
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title=None),
            y=alt.Y("class:N", sort=classes, title=None),
            color=alt.condition(alt.datum.predicted, alt.value("#d62728"), alt.value("#7f7f7f")),
            tooltip=["class", alt.Tooltip("probability:Q", format=".1%")],
        )
        .properties(height=28 * len(classes) + 20)
    )


def render_prediction(model: ModelInfo, pred: Prediction) -> None:
    """Label, confidence, the probability chart and, for fundus models, the derived DR probabilities."""
    left, right = st.columns(2)
    left.metric("Predicted class", pred.label)
    right.metric("Confidence", f"{pred.confidence:.1%}")
    st.altair_chart(probability_chart(model, pred), width="stretch")
    if pred.derived:
        cols = st.columns(len(pred.derived))
        for col, (name, p) in zip(cols, pred.derived.items(), strict=True):
            col.metric(DERIVED_LABELS.get(name, name), f"{p:.1%}")
    timing = f" · {pred.inference_ms:.0f} ms" if pred.inference_ms is not None else ""
    check = f" · {text}" if (text := gate_text(pred)) else ""
    st.caption(f"Model {pred.model} v{pred.model_version}{timing}{check}")


def gate_text(pred: Prediction) -> str | None:
    """``Image check: fundus photo, gradable, quality Good``; ``None`` when the backend's gate is off."""
    if pred.gate is None:
        return None
    what = MODALITY_NAMES.get(pred.gate.modality, pred.gate.modality)
    grade = f", quality {pred.gate.quality_grade}" if pred.gate.quality_grade else ""
    return f"Image check: {what}, " + ("gradable" if pred.gate.gradable else "not gradable") + grade


def referral_title(level: str) -> str:
    """Headline of a referral level (unknown levels: the code made readable)."""
    return REFERRAL_STYLES.get(level, (level.replace("_", " ").capitalize(), "info"))[0]


def _alert(style: AlertStyle, body: str) -> None:
    getattr(st, style)(body, icon=ALERT_ICONS[style])


def render_referral(pred: Prediction) -> None:
    """The referral, prominently: an alert coloured by level, the research-use note beside it.

    An ungradable image gets the gate's reasons and "retake", never a diagnosis. A model without
    a referral policy (``referral`` null) gets a one-line caption instead.
    """
    ref = pred.referral
    if pred.gradable and ref is None:
        st.caption("No referral advice: this model's classes have no referral policy.")
        return
    level = ref.level if (ref is not None and pred.gradable) else "ungradable"
    title, style = REFERRAL_STYLES.get(level, (referral_title(level), "info"))
    if pred.gradable and ref is not None:
        body = f"**{title}**  \n{ref.advice}" + (f"  \n{ref.reason}" if ref.reason else "")
    else:
        advice = ref.advice if ref is not None and ref.advice else "No assessment: the image is not gradable."
        reasons = list(pred.reasons) or ([ref.reason] if ref is not None and ref.reason else [])
        why = "".join(f"\n- {r}" for r in reasons)
        body = f"**{title}**  \n{advice}" + (f"\n\nWhy:{why}" if why else "") + f"\n\n**{RETAKE}**"
    note = ref.note if ref is not None and ref.note else DISCLAIMER
    if pred.gradable and ref is not None and (decided := sites.profile_text(ref.profile)):
        body += f"  \n{decided}"
    left, right = st.columns([4, 1], vertical_alignment="center")
    with left:
        _alert(style, body)
    right.caption(f":material/info: {note}")


def refusal_text(err: BackendError, model: ModelInfo | None = None) -> tuple[str, str]:
    """``(what happened, what to do)`` for a refused image, in the reader's words, not the API's.

    A wrong-modality refusal of the chosen ``model`` names the kind of image seen and the task to pick
    (there are two modalities, so the other one is what the gate saw); other refusals keep the
    backend's detail, with the gate's hint when it is one of its codes.
    """
    hint = GATE_TITLES.get(err.code, ("", ""))[1]
    if err.code == "wrong_modality" and model is not None and model.task in TASK_IMAGES:
        other = next(t for t in TASK_IMAGES if t != model.task)
        seen, reads = TASK_IMAGES[other][0], TASK_IMAGES[model.task][1]
        task, other_task = TASK_LABELS.get(model.task, model.task), TASK_LABELS.get(other, other)
        return (
            f"This looks like {seen}; the {task} model reads {reads} only, so nothing was predicted.",
            f"Choose **{other_task}** under Task in the sidebar, or {AUTO_LABEL}.",
        )
    return err.message, hint


def render_gate_error(err: BackendError, model: ModelInfo | None = None) -> None:
    """A refusal of the image gate as a warning with what to do; any other failure as an error."""
    if err.code not in GATE_ERRORS:
        st.error(err.message)
        return
    title = GATE_TITLES[err.code][0]
    text, hint = refusal_text(err, model)
    _alert("warning", f"**{title}**: {text}" + (f"  \n{hint}" if hint else ""))


def render_ungradable(pred: Prediction) -> None:
    """The result column of an ungradable image: what the gate saw, no probabilities."""
    st.markdown("**No diagnosis**: the image did not pass the quality check.")
    if text := gate_text(pred):
        st.caption(text)
    if pred.gate is not None and (pred.gate.quality or pred.gate.probabilities):
        with st.expander("Image check details"):
            st.json({"quality": pred.gate.quality, "probabilities": pred.gate.probabilities}, expanded=True)
    st.caption(f"Model {pred.model} v{pred.model_version}")


def render_cam(
    ctx: AppContext,
    model: ModelInfo,
    up: Upload,
    pred: Prediction,
    method: str,
    alpha: float,
    size: CamSize,
    *,
    frame: int | None = None,
    label: str | None = None,
) -> None:
    """Target-class picker (default: the predicted class), the CAM overlay and its PNG download.

    ``frame``: a volume's B-scan, whose own ``label`` is the default target.
    """
    classes = list(model.classes) or list(pred.probabilities or ())
    shown_label = label if frame is not None else pred.label
    target = st.selectbox(
        "Explain class",
        classes,
        index=classes.index(shown_label) if shown_label in classes else 0,
        format_func=lambda c: f"{c} (predicted)" if c == shown_label else c,
        key=f"target-{up.key}-{model.id}" + (f"-{frame}" if frame is not None else ""),
    )
    try:
        with st.spinner(f"Computing {method}..."):
            cam: CamResult = cache.gradcam(
                up.digest,
                model.id,
                model.version,
                method,
                target,
                alpha,
                size,
                ctx.settings.backend_url,
                up.data,
                up.name,
                ctx.client,
                frame,
                ctx.site,
            )
    except BackendError as e:
        (st.warning if e.code in GATE_ERRORS else st.error)(f"CAM unavailable: {e.message}")
        return
    where = f"B-scan {frame}: " if frame is not None else ""
    st.image(
        cam.overlay_png,
        caption=f"{where}{method} for {cam.target} (opacity {alpha:.2f}), "
        + ("upsampled to the upload" if size == "original" else "as the model sees the image"),
        width="stretch",
        alt=f"CAM overlay ({method}, {cam.target}) for {up.name}" + (f" B-scan {frame}" if frame is not None else ""),
    )
    stem = PurePath(up.name).stem + (f"_bscan{frame}" if frame is not None else "")
    st.download_button(
        "Download overlay PNG",
        cam.overlay_png,
        file_name=f"{stem}_{model.id}_{method}_{cam.target}_{size}.png",
        mime="image/png",
        key=f"dl-{up.key}-{model.id}" + (f"-{frame}" if frame is not None else ""),
        icon=":material/download:",
    )


def render_report(ctx: AppContext, model: ModelInfo, up: Upload, method: str, frame: int | None = None) -> None:
    """The "Download PDF report" button of one image; the PDF is made only when asked for.

    Why on demand: a report costs the backend a forward pass, a CAM and a page render, and a
    batch of uploads would pay that N times up front for PDFs nobody may download. A deferred
    ``st.download_button(data=callable)`` would also avoid that, but a failure inside the callable
    reaches the user only as a generic "failed to generate" message, without the backend's
    reason. So a first button asks for the PDF; it is cached (``cache.report``, keyed on image,
    model, version, CAM method and file name) and the request is remembered in the session, so
    later reruns show the download button at once and re-send nothing.
    """
    asked = f"pdf-{up.key}-{model.id}-{method}" + (f"-{frame}" if frame is not None else "")
    if not st.session_state.get(asked):
        if not st.button(
            "Create PDF report",
            key=f"make-{asked}",
            icon=":material/picture_as_pdf:",
            help="One page: image, CAM overlay, probabilities, referral, model metrics and the disclaimer.",
        ):
            return
        st.session_state[asked] = True
    try:
        with st.spinner("Creating the PDF report..."):
            pdf = cache.report(
                up.digest,
                model.id,
                model.version,
                method,
                up.name,
                ctx.settings.backend_url,
                up.data,
                ctx.client,
                frame,
                ctx.site,
            )
    except BackendError as e:
        st.session_state[asked] = False  # the "Create" button comes back, to try again
        (st.warning if e.code in GATE_ERRORS else st.error)(f"PDF report unavailable: {e.message}")
        return
    st.download_button(
        "Download PDF report",
        pdf,
        file_name=f"{PurePath(up.name).stem}{f'_bscan{frame}' if frame is not None else ''}_{model.id}_report.pdf",
        mime="application/pdf",
        key=f"dl-{asked}",
        icon=":material/picture_as_pdf:",
        on_click="ignore",
    )


def served_model(ctx: AppContext, model: ModelInfo, pred: Prediction) -> ModelInfo:
    """The model that answered ``pred``: the chosen one, or for ``auto`` the one the backend picked."""
    if pred.model == model.id:
        return model
    found = next((m for m in ctx.models if m.id == pred.model), None)
    if found is not None:
        return found
    # Not in the model list (renamed while the list was cached): enough to draw and explain it.
    return ModelInfo(id=pred.model, task=pred.task, version=pred.model_version, classes=tuple(pred.probabilities or ()))


def render_result(
    ctx: AppContext,
    model: ModelInfo,
    up: Upload,
    result: Prediction | VolumeResult | BackendError,
    method: str,
    alpha: float,
    size: CamSize,
) -> None:
    """The card of one image: referral on top, then preview, CAM overlay and prediction (or the error).
    An OCT volume gets :func:`render_volume` instead.

    ``model`` is the sidebar's choice (possibly ``auto``); CAM and report go to the model that
    actually answered, so they explain the very prediction shown.
    """
    if isinstance(result, VolumeResult):
        render_volume(ctx, model, up, result, method, alpha, size)
        return
    if isinstance(result, Prediction):
        # Keyed so the browser test can tell an urgent referral (st.error style) from a failure.
        with st.container(key=f"referral-{up.key}"):
            render_referral(result)
    col_img, col_cam, col_pred = st.columns([1, 1, 1.2], gap="medium")
    with col_img:
        png = preview_png(up.digest, up.data)
        if png is None:
            st.caption("No preview: the browser cannot show this file.")
        else:
            st.image(png, caption="Uploaded image", width="stretch")
    if isinstance(result, BackendError):
        with col_pred:
            render_gate_error(result, model)
        return
    served = served_model(ctx, model, result)
    with col_pred:
        if result.gradable:
            render_prediction(served, result)
        else:
            render_ungradable(result)
        render_report(ctx, served, up, method)
    with col_cam:
        if result.gradable:
            render_cam(ctx, served, up, result, method, alpha, size)
        else:
            st.caption("No CAM: there is no prediction to explain.")


def volume_strip_chart(vol: VolumeResult, classes: Sequence[str], shown: int) -> alt.LayerChart:
    """Per-B-scan probability of each class along the volume (graded B-scans), the shown B-scan marked by a
    dashed rule and the deciding B-scans by grey bands."""
    rows = [
        {"B-scan": f.index, "class": c, "probability": (f.probabilities or {}).get(c, 0.0)}
        for f in vol.frames
        if f.status == "graded"
        for c in classes
    ]
    lines = (
        alt.Chart(pd.DataFrame(rows, columns=["B-scan", "class", "probability"]))
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "B-scan:Q",
                scale=alt.Scale(domain=[-0.5, vol.n_frames - 0.5]),
                # Integer ticks only; a 128-B-scan volume gets about 16 of them.
                axis=alt.Axis(values=list(range(0, vol.n_frames, max(1, vol.n_frames // 16))), format="d"),
            ),
            y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title=None),
            color=alt.Color("class:N", sort=list(classes)),
            tooltip=["B-scan", "class", alt.Tooltip("probability:Q", format=".1%")],
        )
    )
    deciding = pd.DataFrame({"B-scan": list(vol.deciding_frames)})
    bands = alt.Chart(deciding).mark_rule(color="#bbbbbb", strokeWidth=10, opacity=0.5).encode(x="B-scan:Q")
    here = alt.Chart(pd.DataFrame({"B-scan": [shown]})).mark_rule(strokeDash=[4, 3], color="black").encode(x="B-scan:Q")
    return alt.layer(bands, lines, here).properties(height=200)


def frame_options(vol: VolumeResult) -> tuple[list[int], int]:
    """The slider's B-scans (every frame) and where it starts: the first deciding B-scan (else 0)."""
    return list(range(vol.n_frames)), (vol.deciding_frames[0] if vol.deciding_frames else 0)


def render_volume(
    ctx: AppContext, model: ModelInfo, up: Upload, vol: VolumeResult, method: str, alpha: float, size: CamSize
) -> None:
    """The card of an OCT volume: the volume's answer first, then the per-B-scan strip chart and a B-scan
    slider with the shown B-scan's own answer and CAM; the PDF report is of the shown B-scan."""
    pred = vol.prediction
    served = served_model(ctx, model, pred)
    with st.container(key=f"referral-{up.key}"):
        render_referral(pred)
    skipped = vol.n_ungradable + vol.n_not_oct
    deciding = ", ".join(str(i) for i in vol.deciding_frames) or "none"
    st.markdown(
        f"**OCT volume**: {vol.n_frames} B-scans, {vol.n_graded} graded"
        + (f", {skipped} skipped (ungradable or not OCT)" if skipped else "")
        + f". Deciding B-scans: {deciding}."
    )
    st.caption(f"Volume probabilities: {vol.rule_text} (rule `{vol.rule}`).")
    classes = list(served.classes) or list(pred.probabilities or ())
    options, start = frame_options(vol)
    left, right = st.columns([1, 1.4], gap="medium")
    with left:
        if pred.gradable:
            a, b = st.columns(2)
            a.metric("Volume class", pred.label)
            b.metric("Volume confidence", f"{pred.confidence or 0.0:.1%}")
            st.altair_chart(probability_chart(served, pred), width="stretch")
        else:
            st.markdown(
                f"**No diagnosis**: only {vol.n_graded} of {vol.n_frames} B-scans are gradable "
                f"({vol.needed_graded} needed)."
            )
    shown = (
        st.select_slider("B-scan", options=options, value=start, key=f"frame-{up.key}")
        if len(options) > 1
        else options[0]
    )
    with right:
        st.altair_chart(volume_strip_chart(vol, classes, int(shown)), width="stretch")
        st.caption("Per-B-scan probabilities along the volume; grey bands: deciding B-scans; dashed: shown B-scan.")
    frame = vol.frames[int(shown)]
    col_cam, col_frame = st.columns([1, 1.2], gap="medium")
    with col_frame:
        if frame.status == "graded" and frame.probabilities is not None:
            one = Prediction(pred.model, pred.model_version, pred.task, frame.label, None, frame.probabilities)
            p = frame.probabilities.get(frame.label or "", 0.0)
            st.markdown(f"**B-scan {frame.index}**: {frame.label} ({p:.1%})")
            st.altair_chart(probability_chart(served, one), width="stretch")
        else:
            why = "; ".join(frame.reasons) or frame.status
            st.markdown(f"**B-scan {frame.index}** was skipped ({frame.status}): {why}")
        render_report(ctx, served, up, method, frame=frame.index)
    with col_cam:
        if frame.status == "graded":
            render_cam(ctx, served, up, pred, method, alpha, size, frame=frame.index, label=frame.label)
        else:
            st.caption("No CAM: this B-scan was not graded.")


def result_summary(result: Prediction | VolumeResult | BackendError, model: ModelInfo | None = None) -> str:
    """One line per image for the collapsed cards: label and confidence, referral, or why it was refused
    (:func:`refusal_text` for the chosen ``model``)."""
    if isinstance(result, VolumeResult):
        return f"volume of {result.n_frames} B-scans: " + result_summary(result.prediction, model)
    if isinstance(result, BackendError):
        title = GATE_TITLES.get(result.code, ("",))[0]
        text = refusal_text(result, model)[0]
        return f"{title}: {text}" if title else text
    if not result.gradable:
        return f"{referral_title('ungradable')}, retake"
    text = f"{result.label} ({result.confidence or 0.0:.0%})"
    return text + (f" · {referral_title(result.referral.level)}" if result.referral else "")


def predict_all(
    ctx: AppContext, model: ModelInfo, uploads: Sequence[Upload]
) -> list[Prediction | VolumeResult | BackendError]:
    """Cached ``/predict`` of every upload, in order; a failure stays with its own image.

    A multi-frame DICOM (the backend refuses it on ``/predict``, naming ``/predict/volume``) goes to
    ``/predict/volume``: the UI does not parse DICOM itself, the backend decides what a volume is.
    """
    results: list[Prediction | VolumeResult | BackendError] = []
    args = (ctx.settings.backend_url,)
    for up in uploads:
        try:
            results.append(
                cache.predict(up.digest, model.id, model.version, *args, up.data, up.name, ctx.client, ctx.site)
            )
        except BackendError as e:
            if not is_volume_refusal(e):
                results.append(e)
                continue
            try:
                results.append(
                    cache.predict_volume(up.digest, model.id, model.version, *args, up.data, up.name, ctx.client)
                )
            except BackendError as e2:
                results.append(e2)
    return results


def results_table(
    model: ModelInfo, uploads: Sequence[Upload], results: Sequence[Prediction | VolumeResult | BackendError]
) -> pd.DataFrame:
    """One row per upload.

    Columns: filename, model (auto-detect only: which model answered), label, confidence,
    referral (level code; ``refused`` for an image the backend did not score), gradable, ``p_<class>``
    for every class then the derived ones, error (only when some image failed: why, in plain words).
    An ungradable image has no label and no probabilities. :func:`results_display_order` puts the
    error beside the file name on screen.
    """
    auto = model.id == AUTO_MODEL
    head = ["filename", *(["model"] if auto else []), "label", "confidence", "referral", "gradable"]
    probs: list[str] = [f"p_{c}" for c in model.classes]
    rows = []
    for up, res in zip(uploads, results, strict=True):
        row: dict[str, Any] = dict.fromkeys(head) | {"filename": up.name, "error": None}
        if isinstance(res, VolumeResult):
            res = res.prediction  # the volume's own answer
        if isinstance(res, BackendError):
            # Not scored: say so in the referral column and why in the error column (plain words), rather
            # than leave every cell empty ("None").
            row["referral"] = REFUSED
            row["error"] = refusal_text(res, model)[0]
        else:
            level = res.referral.level if res.referral else ("ungradable" if not res.gradable else None)
            row |= {"label": res.label, "confidence": res.confidence, "referral": level, "gradable": res.gradable}
            if auto:
                row["model"] = res.model
            p = {f"p_{c}": v for c, v in (res.probabilities or {}).items()}
            p |= {f"p_{k}": v for k, v in (res.derived or {}).items()}
            # Auto-detect mixes models: the union of their classes, in order of first appearance.
            probs += [c for c in p if c not in probs]
            row |= p
        rows.append(row)
    columns = head + probs + (["error"] if any(r["error"] is not None for r in rows) else [])
    return pd.DataFrame(rows, columns=columns)


def results_display_order(table: pd.DataFrame) -> list[str]:
    """The on-screen column order of :func:`results_table`: the refusal reason right after the file name,
    so a refused row reads "why" before a run of empty cells (the CSV keeps the documented order)."""
    cols = table.columns.tolist()
    if "error" not in cols:
        return cols
    rest = [c for c in cols if c not in ("filename", "error")]
    return ["filename", "error", *rest]


def cam_controls() -> tuple[str, float, CamSize]:
    """CAM method, overlay opacity and overlay resolution, shared by all images on the page."""
    c1, c2, c3 = st.columns([2, 3, 1.2], vertical_alignment="bottom")
    method = c1.selectbox("CAM method", CAM_METHODS, key="cam-method", help="pytorch-grad-cam method")
    alpha = c2.slider("Heatmap opacity", 0.0, 1.0, 0.5, step=0.05, key="cam-alpha")
    full = c3.toggle(
        "Full resolution",
        key="cam-full",
        help="Upsample the overlay to the uploaded image's size (also for the download). "
        "Off: the image exactly as the model saw it.",
    )
    return method, float(alpha), "original" if full else "input"
