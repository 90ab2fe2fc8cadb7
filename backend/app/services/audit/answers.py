"""What of an answer is audited: :func:`audit_prediction` turns the body a client is about to receive into one
:class:`~backend.app.audit_schemas.AuditRecord` and waits for its commit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from backend.app.audit_schemas import AuditRecord
from backend.app.services.audit.writer import AuditLog
from backend.app.services.runtime import client_var, request_id_var

if TYPE_CHECKING:
    from backend.app.services.model_store import ServedModel


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a dict, ``obj.name`` for a pydantic model or dataclass, ``None`` when absent."""
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _finite(value: Any) -> float | None:
    """A float for the JSON columns, None for missing or non-finite values (NaN is not valid JSON)."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


async def audit_prediction(
    audit: AuditLog,
    endpoint: str,
    served: ServedModel | None,
    body: Mapping[str, Any] | None,
    sha256: str,
    *,
    outcome: str = "ok",
    request_id: str | None = None,
) -> None:
    """Record one answered image; returns once committed (raises 503 ``audit_unavailable``).

    ``body`` is the prediction the client is about to receive (``prediction()``'s dict, or
    ``None`` for a refusal); ``referral`` (``{"level": ...}``) and ``gate`` (``{"modality": ...}``),
    dicts or models, are read when present. The request id defaults to the current request's
    ``X-Request-ID`` (set by the request-context middleware).
    """
    body = body or {}
    referral = body.get("referral")
    gate = body.get("gate")
    probabilities = body.get("probabilities")
    confidence = body.get("confidence")
    rec = AuditRecord(
        request_id=request_id or request_id_var.get(),
        endpoint=endpoint,
        # None: model=auto refused before any model was chosen.
        model_id=served.id if served is not None else "auto",
        model_version=served.meta.version if served is not None else "-",
        task=served.task if served is not None else "-",
        input_sha256=sha256,
        outcome=outcome,
        label=body.get("label"),
        confidence=_finite(confidence),
        probabilities=None if probabilities is None else {str(k): _finite(v) for k, v in probabilities.items()},
        referral=referral if isinstance(referral, str) else _field(referral, "level"),
        modality=_field(gate, "modality"),
        # Answers built before site profiles existed (volumes) carry no profile: the model's own points decided.
        site=None if referral is None or isinstance(referral, str) else (_field(referral, "profile") or "default"),
        client=client_var.get(),
    )
    await audit.record(rec)
