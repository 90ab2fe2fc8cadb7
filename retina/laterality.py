"""Which eye an image shows: a form field, else the DICOM header, else the file name.

An exam is answered per eye, so every image must be assigned to one before it is scored. The
sources, first present wins:

1. what the operator said (the form field ``laterality``, one per file, in file order);
2. the DICOM header: ``ImageLaterality`` (Ophthalmic Photography / Tomography), else the series'
   ``Laterality``, else the first ``FrameLaterality`` of an enhanced multi-frame object;
3. the file name: ``_left`` / ``_right`` (EyePACS, ODIR), ``OD`` / ``OS`` as a separate token
   (``IMG_OD_1.jpg``, ``patient-os.png``).

Values are normalised to ``"right"`` or ``"left"``. ``B`` (both) and unknown values count as
absent: an image of both eyes cannot be answered per eye.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Literal

Eye = Literal["right", "left"]
EYES: tuple[Eye, ...] = ("right", "left")

# Accepted spellings (case-insensitive) -> eye. DICOM writes R / L.
_WORDS: dict[str, Eye] = {
    "right": "right",
    "r": "right",
    "od": "right",
    "oculus dexter": "right",
    "left": "left",
    "l": "left",
    "os": "left",
    "oculus sinister": "left",
}
# A file-name token: _left / -right / .OD. ... bounded by a separator or the ends (never inside a word:
# "cross" must not read as OS). Single letters are not trusted in names (IDRiD_001-L? too ambiguous).
_NAME_TOKEN = re.compile(r"(?:^|[^a-z0-9])(left|right|od|os)(?=$|[^a-z0-9])", re.IGNORECASE)


def normalise(value: str | None) -> Eye | None:
    """``left``/``right``/``OD``/``OS``/``L``/``R`` (any case, padded) -> ``"left"``/``"right"``; else None."""
    if value is None:
        return None
    return _WORDS.get(value.strip().lower())


def from_filename(name: str | None) -> Eye | None:
    """The eye named in a file name (its last path part, extension dropped), or None when none or both are named."""
    if not name:
        return None
    stem = re.split(r"[\\/]", name)[-1].rsplit(".", 1)[0]
    found = {_WORDS[m.lower()] for m in _NAME_TOKEN.findall(stem)}
    return found.pop() if len(found) == 1 else None


def from_dicom(data: bytes) -> Eye | None:
    """The eye in a DICOM file's header (only the laterality elements are parsed), or None."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    tags = ["ImageLaterality", "Laterality", "SharedFunctionalGroupsSequence"]
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=tags, force=False)
    except (InvalidDicomError, ValueError, OSError, EOFError, KeyError, TypeError):
        return None
    for keyword in ("ImageLaterality", "Laterality"):
        eye = normalise(str(ds.get(keyword) or "") or None)
        if eye is not None:
            return eye
    # Enhanced multi-frame (Ophthalmic Tomography): Frame Anatomy in the shared functional groups.
    for group in ds.get("SharedFunctionalGroupsSequence") or []:
        for anatomy in group.get("FrameAnatomySequence") or []:
            eye = normalise(str(anatomy.get("FrameLaterality") or "") or None)
            if eye is not None:
                return eye
    return None


def resolve(form: str | None, data: bytes, filename: str | None, dicom: bool) -> tuple[Eye | None, str | None]:
    """``(eye, source)``: the first of the form value, the DICOM header (when ``dicom``), the file name.

    ``source`` is ``"form"``, ``"dicom"`` or ``"filename"`` (None with no eye). A form value that is
    given but unreadable is not silently replaced by a guess: the caller reports it.
    """
    if form is not None and form.strip():
        eye = normalise(form)
        return (eye, "form") if eye else (None, None)
    if dicom:
        eye = from_dicom(data)
        if eye is not None:
            return eye, "dicom"
    eye = from_filename(filename)
    return (eye, "filename") if eye else (None, None)


def split_form(values: Sequence[str] | None, n_files: int) -> list[str | None]:
    """The repeated ``laterality`` form fields, one per file in order; missing trailing ones are None.

    A single comma-separated value (``right,left``) is accepted too, as HTML forms and curl users write it.
    """
    flat: list[str] = []
    for v in values or []:
        flat.extend(part.strip() for part in v.split(","))
    out: list[str | None] = [v or None for v in flat[:n_files]]
    return out + [None] * (n_files - len(out))
