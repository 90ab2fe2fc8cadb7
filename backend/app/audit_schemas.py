"""The audit log's contract: one audited answer (:class:`AuditRecord`, the one declaration of a row's fields) and
the ``GET /audit`` answer built from it (:data:`AuditEntry`, :class:`AuditResponse`)."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

# predict_exam: one row per image of an exam; exam: one row per exam (its patient referral), issue 29.
ENDPOINTS = ("predict", "predict_batch", "predict_volume", "gradcam", "report", "predict_exam", "exam")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class AuditRecord:
    """One audited answer. ``ts`` is filled by :meth:`AuditLog.record` (UTC, timezone-aware).

    Attributes:
        input_sha256: hex SHA-256 of the uploaded bytes (64 lowercase hex digits).
        outcome: ``ok``, ``ungradable`` or a refusal code (``not_retinal_image``, ``wrong_modality``).
        probabilities: class name -> probability in [0, 1], or ``None`` when nothing was scored.
        referral: the referral level (e.g. ``urgent``), when the answer carried one.
        modality: what the image gate saw (``oct`` / ``fundus``), when it ran.
    """

    # The one declaration of an audit row's fields; :data:`AuditEntry` (the /audit answer) is built
    # from it, descriptions included (``metadata["description"]``).
    request_id: str = field(metadata={"description": "The response's X-Request-ID."})
    endpoint: str = field(metadata={"description": "`predict`, `predict_batch`, `gradcam` or `report`."})
    model_id: str
    model_version: str
    task: str
    input_sha256: str = field(metadata={"description": "SHA-256 (hex) of the uploaded bytes."})
    outcome: str = field(default="ok", metadata={"description": "`ok`, `ungradable`, or the refusal code."})
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float | None] | None = None
    referral: str | None = field(
        default=None, metadata={"description": "Referral level of the answer, when it had one."}
    )
    modality: str | None = field(
        default=None, metadata={"description": "Modality seen by the image gate, when it ran."}
    )
    site: str | None = field(
        default=None,
        metadata={"description": "Which operating points decided the referral: a site profile's name or `default`."},
    )
    client: str | None = field(
        default=None, metadata={"description": "Name of the API key the answer was given to (never the key)."}
    )
    ts: datetime | None = field(default=None, metadata={"description": "When the answer was logged (UTC, ISO 8601)."})

    def __post_init__(self) -> None:
        # Cheap guards that keep anything but a digest out of the hash column (a filename,
        # say) and the endpoint names stable for whoever queries the table.
        if not _SHA256.match(self.input_sha256):
            raise ValueError("input_sha256 must be 64 lowercase hex digits")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {self.endpoint!r}")


def _audit_entry() -> type[BaseModel]:
    """``AuditEntry``: the database ``id`` plus every field of :class:`AuditRecord` (declared once, there)."""
    hints = typing.get_type_hints(AuditRecord)
    fields: dict[str, Any] = {"id": (int, ...)}
    for f in dataclasses.fields(AuditRecord):
        default = ... if f.default is dataclasses.MISSING else f.default
        fields[f.name] = (hints[f.name], Field(default, description=f.metadata.get("description")))
    ts = fields["ts"][1]
    fields["ts"] = (datetime, Field(description=ts.description))  # always set once logged
    return create_model(
        "AuditEntry",
        __doc__="One audited answer (never pixels, filenames or patient identifiers).",
        __config__=ConfigDict(protected_namespaces=()),
        **fields,
    )


AuditEntry = _audit_entry()


class AuditResponse(BaseModel):
    """A page of the audit log, oldest first."""

    entries: list[AuditEntry]
    next_since: datetime | None = Field(
        description="Pass as `since` (with the same `until`/`model`) for the next page; null on the last page."
    )
