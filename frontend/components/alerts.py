"""Presentation of a referral level: which Streamlit alert (colour) and icon it gets. The words inside the
alert are the backend's; only the colour is chosen here."""

from __future__ import annotations

from typing import Literal

import streamlit as st

AlertStyle = Literal["error", "warning", "success", "info"]
# Referral level -> alert style: urgent red; refer and routine amber; observation and rescreen green;
# ungradable amber (retake); not informative amber (no advice). Unknown levels: info (blue).
LEVEL_STYLES: dict[str, AlertStyle] = {
    "urgent": "error",
    "refer": "warning",
    "routine": "warning",
    "observation": "success",
    "rescreen_12_months": "success",
    "ungradable": "warning",
    "not_informative": "warning",
}
ALERT_ICONS: dict[AlertStyle, str] = {
    "error": ":material/emergency:",
    "warning": ":material/warning:",
    "success": ":material/check_circle:",
    "info": ":material/info:",
}


def level_style(level: str | None) -> AlertStyle:
    """The alert style of a referral level (``info`` for a level the UI does not know)."""
    return LEVEL_STYLES.get(level or "", "info")


def alert(style: AlertStyle, body: str) -> None:
    """``st.error`` / ``st.warning`` / ``st.success`` / ``st.info`` with the style's icon."""
    getattr(st, style)(body, icon=ALERT_ICONS[style])
