"""A DICOM file's non-pixel data measured before pydicom parses any of it: a budget on bytes and elements.

pydicom's reader walks every element and sequence item in Python, including ones that
``specific_tags`` later drops: a 3.2 MB file holding one private sequence of 200,000 empty
items cost 5-6 s of CPU and ~150 MB of memory inside ``dcmread`` (measured on the service's
2-core VM), before any of our own checks could run. :func:`check_budget` walks the same
tags and lengths with ``struct`` alone, stops as soon as either budget is spent, and raises
:class:`~retina.errors.ImageDecodeError` ``dicom_header_too_large``: the probe above is
refused after ~20,000 elements, in milliseconds.

What is counted (PS3.5 7.1, 7.5): every data element and every sequence item or delimiter,
at any depth, plus the bytes of every value except the top-level Pixel Data's (the image
itself is bounded by the pixel limits). The fragments of encapsulated pixel data count as
items (each is one more thing pydicom iterates per frame). Walking is linear: sequences,
defined length or not, are entered rather than skipped, so their items are counted too.

The walk is advisory about structure: a length running past the end of the file, or a
transfer syntax it does not walk (deflated), ends it without a verdict, and the reader that
follows reports the problem with its usual message. It never looks at a value's content
other than the transfer syntax UID, so nothing identifying is read.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from retina.errors import ImageDecodeError

logger = logging.getLogger(__name__)

# Non-pixel bytes and elements (+ items) a file may carry. An enhanced multi-frame OCT volume of
# 256 B-scans with per-frame functional groups needs ~10,000 elements and ~100 KB; a fundus
# photo's header a few hundred elements. Both limits are far above that and far below what
# makes dcmread slow (200,000 items: ~5 s).
DEFAULT_MAX_HEADER_BYTES = 2_000_000
DEFAULT_MAX_ELEMENTS = 50_000

_PIXEL_DATA = (0x7FE0, 0x0010)
_ITEM_GROUP = 0xFFFE
_UNDEFINED = 0xFFFFFFFF
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_IMPLICIT = {_IMPLICIT_LE}
# Syntaxes whose body the walk understands: the native ones, RLE and JPEG-family encapsulated (explicit VR LE).
_WALKED = {_IMPLICIT_LE, _EXPLICIT_LE, _EXPLICIT_BE, "1.2.840.10008.1.2.5"}
_ENCAPSULATED_PREFIX = "1.2.840.10008.1.2.4."


@dataclass(frozen=True)
class HeaderBudget:
    """Most non-pixel bytes and most data elements + items (any depth) one DICOM file may hold."""

    max_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_elements: int = DEFAULT_MAX_ELEMENTS


DEFAULT_BUDGET = HeaderBudget()


@dataclass(frozen=True)
class HeaderSize:
    """What the walk counted: non-pixel value bytes and elements + items, and whether it reached the end."""

    bytes: int
    elements: int
    complete: bool
    # (rows, columns, samples per pixel, bits allocated, frames) of the top-level Image Pixel module,
    # when the walk read Rows and Columns: what ``retina.memory`` sizes a decode by.
    image: tuple[int, int, int, int, int] | None = None


class _Spent(Exception):
    """Internal: the budget ran out at ``elements`` / ``size``."""


def _over(budget: HeaderBudget, size: int, elements: int) -> ImageDecodeError:
    return ImageDecodeError(
        f"DICOM file has more non-pixel data than this service parses (over {budget.max_elements} elements or "
        f"{budget.max_bytes / 1e6:g} MB; seen {elements} elements, {size / 1e6:.2f} MB)",
        code="dicom_header_too_large",
    )


def check_budget(data: bytes, budget: HeaderBudget = DEFAULT_BUDGET) -> HeaderSize:
    """Raise ``ImageDecodeError`` ``dicom_header_too_large`` when ``data`` exceeds ``budget``; else what was seen.

    ``data`` is a Part 10 file with its 128-byte preamble and ``DICM`` (``retina.dicom`` adds them to
    the preamble-less variant first). Cost: one ``struct.unpack_from`` per element, ~1 us each.
    """
    view = memoryview(data)
    end = len(data)
    # File Meta: always explicit VR little endian; it names the body's transfer syntax.
    pos, syntax, size, count = _walk_meta(view, 132, end)
    if syntax not in _WALKED and not (syntax or "").startswith(_ENCAPSULATED_PREFIX):
        # Deflated or unknown: the reader refuses it before parsing the body (nothing to walk here).
        return HeaderSize(size, count, complete=False)
    implicit = syntax in _IMPLICIT
    fmt = ">" if syntax == _EXPLICIT_BE else "<"
    try:
        size, count, complete, found = _walk_body(view, pos, end, implicit, fmt, budget, size, count)
    except _Spent as spent:
        size, count = spent.args
        logger.info("DICOM refused before parsing: over the header budget (%d elements, %d bytes)", count, size)
        raise _over(budget, size, count) from None
    image = None
    if found.get(0x0010) and found.get(0x0011):
        image = (found[0x0010], found[0x0011], found.get(0x0002, 1), found.get(0x0100, 8), found.get(0x0008, 1))
    return HeaderSize(size, count, complete, image)


def _walk_meta(view: memoryview, pos: int, end: int) -> tuple[int, str | None, int, int]:
    """Group 0002 from ``pos``: (offset after it, transfer syntax UID or None, bytes, elements)."""
    syntax: str | None = None
    size = count = 0
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", view, pos)
        if group != 0x0002:
            break
        vr = bytes(view[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > end:
                break
            (length,) = struct.unpack_from("<I", view, pos + 8)
            head = 12
        else:
            (length,) = struct.unpack_from("<H", view, pos + 6)
            head = 8
        if length == _UNDEFINED or pos + head + length > end:
            break
        if elem == 0x0010:
            syntax = bytes(view[pos + head : pos + head + length]).rstrip(b"\x00 ").decode("ascii", "replace")
        pos += head + length
        size += head + length
        count += 1
        if count > 1000:  # a meta group has ~10 elements; anything like this is not a real file
            break
    return pos, syntax, size, count


def _walk_body(
    view: memoryview,
    pos: int,
    end: int,
    implicit: bool,
    fmt: str,
    budget: HeaderBudget,
    size: int,
    count: int,
) -> tuple[int, int, bool, dict[int, int]]:
    """Every element and item of the data set from ``pos``; raises ``_Spent`` past the budget.

    Also returns the top-level Image Pixel values it passed (element number in group 0028 -> value):
    samples per pixel, number of frames, rows, columns, bits allocated.

    ``open_`` is the stack of containers the walk is inside: ``(kind, end offset or None)`` with kind
    ``seq`` (a sequence), ``item`` (a sequence item, a nested data set) or ``frag`` (encapsulated pixel
    data, whose items are opaque fragments). A defined-length container is left when ``pos`` reaches its
    end; an undefined-length one at its delimiter.
    """
    tag_fmt, l32, l16 = fmt + "HH", fmt + "I", fmt + "H"
    max_bytes, max_elements = budget.max_bytes, budget.max_elements
    open_: list[tuple[str, int | None]] = []
    found: dict[int, int] = {}
    while pos + 8 <= end:
        while open_ and open_[-1][1] is not None and pos >= open_[-1][1]:  # type: ignore[operator]
            open_.pop()
        group, elem = struct.unpack_from(tag_fmt, view, pos)
        count += 1
        if count > max_elements or size > max_bytes:
            raise _Spent(size, count)
        if group == _ITEM_GROUP:
            # Item (E000), item delimiter (E00D), sequence delimiter (E0DD): tag + 4-byte length in every
            # syntax, in its byte order.
            (length,) = struct.unpack_from(l32, view, pos + 4)
            pos += 8
            size += 8
            inside = open_[-1][0] if open_ else None
            if elem == 0xE000:
                if inside == "frag":
                    if length == _UNDEFINED or pos + length > end:
                        return size, count, False, found
                    pos += length  # a pixel fragment: bounded by the pixel checks, not this budget
                else:
                    open_.append(("item", None if length == _UNDEFINED else pos + length))
            elif open_ and ((elem == 0xE00D and inside == "item") or (elem == 0xE0DD and inside in ("seq", "frag"))):
                open_.pop()
            continue
        if implicit:
            vr = _implicit_vr(group, elem)
            (length,) = struct.unpack_from(l32, view, pos + 4)
            head = 8
        else:
            vr = bytes(view[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    return size, count, False, found
                (length,) = struct.unpack_from(l32, view, pos + 8)
                head = 12
            else:
                (length,) = struct.unpack_from(l16, view, pos + 6)
                head = 8
        pos += head
        size += head
        pixel = (group, elem) == _PIXEL_DATA and not open_
        if length == _UNDEFINED:
            # Encapsulated pixel data, or a sequence (SQ; UN / implicit with undefined length): walk into it.
            open_.append(("frag" if pixel else "seq", None))
            continue
        if pos + length > end:
            return size, count, False, found  # truncated: the reader reports it
        if vr == b"SQ":
            open_.append(("seq", pos + length))  # its items follow and are walked like any others
            continue
        if group == 0x0028 and elem in _PIXEL_MODULE and not open_:
            value = _pixel_module_value(view, pos, length, elem, l16)
            if value is not None:
                found[elem] = value
        pos += length
        if not pixel:  # native pixels are bounded by the pixel limits, not by this budget
            size += length
    return size, count, pos >= end, found


# Image Pixel module elements (group 0028) the memory estimate needs; NumberOfFrames (0008) is IS text.
_PIXEL_MODULE = frozenset({0x0002, 0x0008, 0x0010, 0x0011, 0x0100})


def _pixel_module_value(view: memoryview, pos: int, length: int, elem: int, l16: str) -> int | None:
    """An unsigned short (or, for NumberOfFrames, a decimal string) value; None when it is not one."""
    if elem == 0x0008:
        text = bytes(view[pos : pos + min(length, 16)]).strip(b"\x00 ")
        return int(text) if text.isdigit() else None
    if length < 2:
        return None
    return int(struct.unpack_from(l16, view, pos)[0])


def _implicit_vr(group: int, elem: int) -> bytes:
    """The dictionary VR of a standard tag (implicit VR files carry none): only ``SQ`` matters to the walk."""
    from pydicom.datadict import dictionary_VR

    if group % 2:  # private: opaque bytes to the walk, as to a reader that does not know them
        return b""
    try:
        return b"SQ" if dictionary_VR((group << 16) | elem) == "SQ" else b""
    except KeyError:
        return b""
