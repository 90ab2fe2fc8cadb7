"""Where the rows go: a Parquet dataset of part files or one CSV, written as rows come and resumable.

:meth:`ResultSink.open` picks the sink by the ``--out`` suffix; :meth:`ResultSink.done` lists the
input paths already written, so a rerun scores only the others and a row is never written twice.
"""

from __future__ import annotations

import csv
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from scoring.rows import COLUMN_NAMES, rows_to_table

logger = logging.getLogger(__name__)


class ResultSink:
    """Where rows go, written as they come so that a killed run keeps what it finished.

    :meth:`done` is the set of input paths already written: a rerun with the same ``--out``
    scores only the others (a row is never written twice).
    """

    def done(self) -> set[str]:
        raise NotImplementedError

    def write(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @staticmethod
    def open(out: Path) -> ResultSink:
        suffix = Path(out).suffix.lower()
        if suffix == ".parquet":
            return ParquetParts(out)
        if suffix == ".csv":
            return CsvAppend(out)
        raise ValueError(f"--out must end in .parquet or .csv, not {Path(out).name!r}")


class ParquetParts(ResultSink):
    """``results.parquet`` as a folder of part files (a Parquet dataset: ``pandas.read_parquet`` reads the folder).

    Why not one file and a ``ParquetWriter``: a Parquet file is readable only once its footer is
    written at ``close()``, so a run killed mid-way would leave nothing to resume from. Here each
    write is a complete part file, written under a hidden ``.part-*.tmp`` name (pyarrow's dataset
    reader skips names starting with ``.``) and renamed into place, which is atomic: a kill leaves
    only whole parts plus at most one temporary, which the next run deletes. Fewer, larger parts:
    raise ``flush_rows`` in :func:`write_rows`.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"{self.out} is a file; batch results are a folder of part files (or pick a new --out)")
        self.out.mkdir(parents=True, exist_ok=True)
        for tmp in self.out.glob(".part-*.tmp"):  # a part being written when the last run was killed
            tmp.unlink()
        self._parts = sorted(self.out.glob("part-*.parquet"))

    def done(self) -> set[str]:
        import pyarrow.parquet as pq

        paths: set[str] = set()
        for part in self._parts:
            paths.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
        return paths

    def write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        if not rows:
            return
        name = f"part-{len(self._parts):06d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.out / f".{name}.tmp"
        pq.write_table(rows_to_table(rows), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it count as done
        os.replace(tmp, self.out / name)
        self._parts.append(self.out / name)


class CsvAppend(ResultSink):
    """One CSV file, appended to and fsync-ed at every write.

    A kill can interrupt only the last write, leaving a partial last line; opening the file again
    cuts it off (its rows are scored again), so every line kept is a whole row. Every text field
    is written on one line (newlines in details become spaces), which keeps "line" = "row".
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.out.exists():
            self._repair()
        fresh = not self.out.exists() or self.out.stat().st_size == 0
        self._file = self.out.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMN_NAMES)
        if fresh:
            self._writer.writeheader()
            self._sync()

    def _repair(self) -> None:
        data = self.out.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1  # 0 when even the header was cut
            cut = len(data) - keep
            logger.warning("%s ends in a partial row (an interrupted run): dropping its last %d bytes", self.out, cut)
            with self.out.open("r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        header = data.split(b"\n", 1)[0].decode("utf-8-sig").strip()
        if header and header.split(",") != list(COLUMN_NAMES):
            raise ValueError(f"{self.out} is not a results file of this scorer (its header differs)")

    def done(self) -> set[str]:
        with self.out.open(newline="", encoding="utf-8") as f:
            return {row["path"] for row in csv.DictReader(f)}

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._writer.writerows({k: _one_line(v) for k, v in row.items()} for row in rows)
        self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _one_line(value: Any) -> Any:
    return value.replace("\r", " ").replace("\n", " ") if isinstance(value, str) else value


def read_rows(out: Path) -> list[dict[str, Any]]:
    """Every row written to ``out`` (Parquet typed; CSV as text, empty = null), for checks and tests."""
    out = Path(out)
    if out.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        parts = sorted(out.glob("part-*.parquet"))
        return [row for part in parts for row in pq.read_table(part).to_pylist()]
    with out.open(newline="", encoding="utf-8") as f:
        return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]


def write_rows(batches: Iterable[list[dict[str, Any]]], sink: ResultSink, flush_rows: int = 256) -> Iterator[int]:
    """Write rows from ``batches`` to ``sink`` in writes of at least ``flush_rows`` rows; yields rows per batch.

    A kill loses at most the unwritten buffer (under ``flush_rows`` rows plus the batches in flight),
    which the rerun scores again.
    """
    buffer: list[dict[str, Any]] = []
    try:
        for rows in batches:
            buffer.extend(rows)
            if len(buffer) >= flush_rows:
                sink.write(buffer)
                buffer = []
            yield len(rows)
    finally:
        if buffer:
            sink.write(buffer)
