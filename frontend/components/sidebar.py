"""The sidebar shared by every page: backend status, task and model pickers, the site profile, and the
chosen model's facts. :func:`render_sidebar` returns the :class:`AppContext` the pages read."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from frontend import cache, catalog, text
from frontend.client import ClientSettings
from frontend.components.context import AppContext
from frontend.components.model_card import (
    render_metrics,
    render_model_card,
    render_not_informative,
    render_operating_points,
)
from frontend.components.sites import render_site_picker
from frontend.errors import BackendError
from frontend.model_info import AUTO_MODEL, ModelInfo, ReadyStatus


def render_status(status: ReadyStatus) -> None:
    # Exactly one of the three texts (other tests key on them).
    if status.state == "ready":
        st.success(status.text, icon=":material/check_circle:")
    elif status.state == "not_ready":
        st.warning(status.text, icon=":material/hourglass_top:")
    else:
        st.error(status.text, icon=":material/cloud_off:")


def load_context() -> AppContext:
    """Settings from the environment, the shared client, ``/ready`` and (when reachable) ``/models``."""
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
    return ctx


def pick_model(ctx: AppContext) -> ModelInfo:
    """Task radio (OCT / Fundus / auto-detect) and, for a task, its model select box."""
    known = [t for t in text.TASK_LABELS if any(m.task == t for m in ctx.models)]
    tasks = known + sorted({m.task for m in ctx.models} - set(known))
    # Auto-detect sits beside the tasks, not in a task's model list: the backend, not the
    # user, picks the task (and so the model) per image. It only knows OCT and fundus.
    choices = [*tasks, AUTO_MODEL] if known else tasks
    task = st.radio(
        "Task",
        choices,
        format_func=lambda t: text.AUTO_LABEL if t == AUTO_MODEL else text.TASK_LABELS.get(t, t),
        horizontal=True,
        key="task",
    )
    if task == AUTO_MODEL:
        return catalog.auto_model(ctx.models)
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
    return candidates.get(chosen) or candidates[ids[default]]


def render_sidebar() -> AppContext:
    """Backend status, task and model pickers with version, metrics and card; returns the context."""
    ctx = load_context()
    with st.sidebar:
        render_status(ctx.status)
        st.caption(f"API: `{ctx.settings.backend_url}`")
        if ctx.models_error:
            st.warning(f"Model list unavailable: {ctx.models_error}")
        if not ctx.models:
            return ctx
        ctx.model = pick_model(ctx)
        if ctx.model.id == AUTO_MODEL:
            render_auto_summary(ctx.model, catalog.task_defaults(ctx.models))
            ctx.site = render_site_picker(ctx.models, ctx.model)
        else:
            ctx.site = render_site_picker(ctx.models, ctx.model)
            render_model_summary(ctx.model)
    return ctx


def render_auto_summary(auto: ModelInfo, defaults: Sequence[ModelInfo]) -> None:
    st.caption(auto.description)
    if not auto.loaded:
        st.warning(f"Auto-detect unavailable: {auto.error}")
    for m in defaults:
        st.markdown(f"**{m.id}** · {text.TASK_LABELS.get(m.task, m.task)} · version `{m.version or '?'}`")
        st.caption(f"Calibration: {text.calibration_text(m)}")
        render_not_informative(m)


def render_model_summary(model: ModelInfo) -> None:
    default = f" · default {text.TASK_LABELS.get(model.task, model.task)} model" if model.default else ""
    st.markdown(f"**{model.id}** · version `{model.version or '?'}`{default}")
    st.caption(text.model_facts(model))
    if model.description:
        st.caption(model.description)
    if not model.loaded:
        st.warning(f"Not loaded by the backend: {model.error or 'unknown reason'}")
        return
    st.caption(f"Calibration: {text.calibration_text(model)}")
    render_operating_points(model)
    render_metrics(model)
    if model.card:
        with st.expander("Model card"):
            render_model_card(model.card)
