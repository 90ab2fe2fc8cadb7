"""A small DICOMweb client (QIDO-RS search, WADO-RS retrieve, STOW-RS store) on the standard library.

Only what ``scoring.pacs`` needs, against any DICOMweb root (Orthanc's ``/dicom-web``, dcm4chee's
``/dcm4chee-arc/aets/DCM4CHEE/rs``, a cloud healthcare API): PS3.18 paths and media types, JSON
search results (``application/dicom+json``), ``multipart/related; type="application/dicom"``
bodies both ways. No dependency beyond ``urllib``: the PACS tool runs where the batch scorer
runs, and ``requests`` is not part of the core.

Errors are :class:`DicomWebError` with the HTTP status and the server's first 300 bytes: never
the request's identifiers, which the caller decides whether to show.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# A DICOM UID (dotted digits, three or more parts, as 2.25.<n>): blanked out of server error text before
# it can reach a log.
UID_LIKE = re.compile(r"\b\d+(?:\.\d+){2,}\b")


class DicomWebError(RuntimeError):
    """A DICOMweb request failed: ``status`` (0: no HTTP answer) and a short, technical ``detail``."""

    def __init__(self, what: str, status: int, detail: str) -> None:
        super().__init__(f"{what} failed: HTTP {status} {detail}".strip())
        self.status = status


def value(attrs: Mapping[str, Any], tag: str) -> Any:
    """The first value of ``tag`` (8 hex digits) in one DICOM JSON object, or None."""
    element = attrs.get(tag) or {}
    values = element.get("Value") or []
    return values[0] if values else None


@dataclass(frozen=True)
class InstanceRef:
    """Where one instance lives: study, series and SOP instance UIDs, its SOP class and modality."""

    study: str
    series: str
    sop_instance: str
    sop_class: str | None
    modality: str | None


@dataclass
class DicomWebClient:
    """``root``: the DICOMweb base URL; ``headers``: e.g. ``{"Authorization": "Bearer ..."}``; ``timeout`` in s."""

    root: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0

    def _request(
        self, what: str, method: str, path: str, accept: str, body: bytes | None = None, ctype: str | None = None
    ) -> Any:
        """``(status, content type, body)``; errors name ``what`` (QIDO-RS ...), never the path's UIDs."""
        url = self.root.rstrip("/") + path
        headers = {**self.headers, "Accept": accept}
        if ctype:
            headers["Content-Type"] = ctype
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - the operator's URL
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as e:
            # A server's error body may echo the request's URI, and so the study's UIDs: UID-shaped runs are
            # blanked before the text can reach a log.
            body = UID_LIKE.sub("<uid>", e.read()[:300].decode("latin-1"))
            raise DicomWebError(what, e.code, body) from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise DicomWebError(what, 0, f"{type(e).__name__}: {getattr(e, 'reason', '')}") from e

    def search(self, path: str, params: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """QIDO-RS: ``path`` (``/studies``, ``/studies/{uid}/instances``) -> DICOM JSON objects."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, _, data = self._request("QIDO-RS search", "GET", path + query, DICOM_JSON)
        if status == 204 or not data.strip():
            return []
        return list(json.loads(data))

    def study_instances(self, study: str) -> list[InstanceRef]:
        """Every instance of ``study`` (QIDO-RS ``/studies/{study}/instances``)."""
        found = self.search(f"/studies/{study}/instances", {"includefield": "00080060"})
        return [
            InstanceRef(
                study=str(value(a, "0020000D") or study),
                series=str(value(a, "0020000E")),
                sop_instance=str(value(a, "00080018")),
                sop_class=value(a, "00080016"),
                modality=value(a, "00080060"),
            )
            for a in found
        ]

    def retrieve(self, ref: InstanceRef) -> bytes:
        """WADO-RS: one instance as DICOM Part 10 bytes."""
        path = f"/studies/{ref.study}/series/{ref.series}/instances/{ref.sop_instance}"
        _, ctype, data = self._request("WADO-RS retrieve", "GET", path, f'multipart/related; type="{DICOM}"')
        parts = multipart_parts(ctype, data)
        if len(parts) != 1:
            raise DicomWebError("WADO-RS retrieve", 200, f"expected one part, got {len(parts)}")
        return parts[0]

    def store(self, instances: Iterable[bytes], study: str | None = None) -> dict[str, Any]:
        """STOW-RS: Part 10 instances into ``study`` (its path) or the server's choice; the response JSON."""
        body, ctype = multipart_body(instances)
        path = f"/studies/{study}" if study else "/studies"
        _, _, data = self._request("STOW-RS store", "POST", path, DICOM_JSON, body, ctype)
        return json.loads(data) if data.strip() else {}


def multipart_body(parts: Iterable[bytes], media_type: str = DICOM) -> tuple[bytes, str]:
    """``(body, Content-Type)`` of a ``multipart/related`` message with one part per item."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{media_type}"; boundary={boundary}'


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The part bodies of a ``multipart/related`` response (headers dropped)."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, val = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = val.strip().strip('"')
    if not boundary:
        raise DicomWebError("multipart parsing", 200, "no boundary in the response's Content-Type")
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts
