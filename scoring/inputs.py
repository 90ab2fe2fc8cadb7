"""The files an input names: a folder (recursively), a CSV of paths, or one file."""

from __future__ import annotations

import csv
import os
from pathlib import Path


def list_inputs(source: Path) -> list[str]:
    """Absolute paths of the files to score, in a stable order, each once.

    * a folder (recursively; DICOM folders too): every regular file, whatever its extension (DICOM
      files often have none, and a stray file should become an error row, not vanish), except
      hidden ones and ``DICOMDIR`` indexes;
    * a ``.csv``: the ``path`` column (or the first one when no header names ``path``); relative
      paths are taken from the CSV's folder;
    * any other file: itself.
    """
    source = Path(source)
    if source.is_dir():
        found = [
            p
            for p in source.rglob("*")
            if p.is_file()
            and p.name != "DICOMDIR"
            and not any(part.startswith(".") for part in p.relative_to(source).parts)
        ]
        paths = sorted(os.path.abspath(p) for p in found)
    elif source.is_file() and source.suffix.lower() == ".csv":
        paths = _csv_paths(source)
    elif source.is_file():
        paths = [os.path.abspath(source)]
    else:
        raise FileNotFoundError(f"input {source} does not exist")
    return list(dict.fromkeys(paths))


def _csv_paths(source: Path) -> list[str]:
    with source.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(cell.strip() for cell in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    col, body = (header.index("path"), rows[1:]) if "path" in header else (0, rows)
    base = source.parent
    return [os.path.abspath(base / r[col].strip()) for r in body if len(r) > col and r[col].strip()]
