"""One row per input file: the columns, and a row made from an assessment, a refusal or an error.

A row is read off the same frozen result ``POST /predict`` answers from (``Assessment.to_dict()``,
``Refusal``): nothing is recomputed, so the rows equal the API's answers (``tests/scoring/test_score_parity.py``).
"""

from __future__ import annotations

import json
from typing import Any

from retina.assessment import Assessment, Refusal, ScoringModel

# One row per input file. Dict-valued fields (probabilities per class, the gate's probabilities,
# its reasons, the derived DR probabilities) are JSON text, so one fixed schema holds OCT and
# fundus rows alike, in Parquet and CSV the same way, and part files never need schema merging.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("path", "string"),  # absolute path of the input file
    ("sha256", "string"),  # of the file's bytes; null when it could not be read
    ("model", "string"),  # the model that answered (or was asked); null: auto and not retinal / no image
    ("model_version", "string"),
    ("task", "string"),  # oct | fundus
    ("gate_modality", "string"),  # oct | fundus | other
    ("gate_gradable", "bool"),
    ("gate_probabilities", "json"),  # {"oct": p, "fundus": p, "other": p}, rounded to 4 places as the API shows
    ("gate_reasons", "json"),  # why ungradable or not retinal (list of text)
    ("gradable", "bool"),  # null when no assessment was made (error rows)
    ("label", "string"),
    ("confidence", "double"),
    ("probabilities", "json"),  # {class: calibrated probability}, model order
    ("derived", "json"),  # 5-grade DR models: {"referable": P(grade >= 2), "any": P(grade >= 1)}
    ("referral_level", "string"),  # urgent | routine | observation | refer | rescreen_12_months | ungradable ...
    ("referral_probability", "double"),
    ("referral_threshold", "double"),  # the operating point the level was decided at
    ("referral_reason", "string"),
    ("error", "string"),  # the API's error code, e.g. unsupported_media_type, invalid_image, not_retinal_image
    ("error_detail", "string"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)


def _empty(path: str, sha256: str | None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    row["path"], row["sha256"] = path, sha256
    return row


def _json(value: Any) -> str | None:
    # repr-exact floats; model order of the classes is kept (no sort_keys).
    return None if value is None else json.dumps(value)


def _gate_fields(row: dict[str, Any], gate: dict[str, Any] | None) -> None:
    if gate is None:
        return
    row["gate_modality"] = gate["modality"]
    row["gate_gradable"] = gate["gradable"]
    row["gate_probabilities"] = _json(gate["probabilities"])
    row["gate_reasons"] = _json(gate["reasons"])


def error_row(path: str, sha256: str | None, code: str, detail: str) -> dict[str, Any]:
    row = _empty(path, sha256)
    row["error"], row["error_detail"] = code, detail
    return row


def refusal_row(path: str, sha256: str, served: ScoringModel | None, refused: Refusal) -> dict[str, Any]:
    """The gate turned the file away: the API's 422 code and detail, the gate's verdict, no assessment."""
    row = error_row(path, sha256, refused.code, refused.detail)
    if served is not None:
        row["model"], row["model_version"], row["task"] = served.id, served.meta.version, served.task
    _gate_fields(row, refused.gate.to_dict())
    return row


def assessment_row(path: str, sha256: str, result: Assessment) -> dict[str, Any]:
    """Read off ``Assessment.to_dict()``, the body ``POST /predict`` answers: nothing is recomputed."""
    body = result.to_dict()
    row = _empty(path, sha256)
    for key in ("model", "model_version", "task", "gradable", "label", "confidence"):
        row[key] = body[key]
    row["probabilities"] = _json(body["probabilities"])
    row["derived"] = _json(body["derived"])
    _gate_fields(row, body["gate"])
    referral = body["referral"]
    if referral is not None:
        row["referral_level"] = referral["level"]
        row["referral_probability"] = referral["probability"]
        row["referral_threshold"] = referral["threshold"]
        row["referral_reason"] = referral["reason"]
    return row


def _arrow_schema() -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "json": pa.string(), "bool": pa.bool_(), "double": pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS])


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=_arrow_schema())
