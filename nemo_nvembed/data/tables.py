"""Rows of a table file (``.jsonl``, ``.csv``, ``.tsv`` or ``.parquet``) by column name, streamed,
with typed accessors; a bad row names the file, the line (row for parquet) and the column.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterator

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.jsonl_io import iter_objects

FORMATS = (".jsonl", ".csv", ".tsv", ".parquet")


class ConvertError(UserError):
    """Invalid input; the message names the file, the line (or row) and the column."""


def iter_rows(path: str | Path, columns: list[str]) -> Iterator[tuple[str, dict]]:
    """Yield ("FILE:line N" or "FILE:row N", {column: value}) for the named columns, streaming.

    Missing columns fail before any row is yielded (CSV header, parquet schema) or at the first
    JSONL line that lacks one. Blank JSONL lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path, columns)
    elif suffix in (".csv", ".tsv"):
        yield from _iter_csv(path, columns, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        yield from _iter_parquet(path, columns)
    else:
        raise ConvertError(f"{path}: unsupported format {suffix!r}; use one of {', '.join(FORMATS)}")


def _iter_jsonl(path: Path, columns: list[str]):
    for where, obj in iter_objects(path, ConvertError, where="{path}:line {line}"):
        missing = [c for c in columns if c not in obj]
        if missing:
            raise ConvertError(f"{where}: no field {missing[0]!r} (fields on this line: {', '.join(obj)})")
        yield where, {c: obj[c] for c in columns}


def _iter_csv(path: Path, columns: list[str], delimiter: str):
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise ConvertError(f"{path}: no column {missing[0]!r} in the header (columns: {', '.join(header)})")
        last = reader.line_num
        for row in reader:
            where = f"{path}:line {last + 1}"  # a record may span lines (quoted newlines): its first
            last = reader.line_num
            short = [c for c in columns if row.get(c) is None]
            if short:
                raise ConvertError(f"{where}: column {short[0]!r} missing (the row has fewer fields than the header)")
            yield where, {c: row[c] for c in columns}


def _iter_parquet(path: Path, columns: list[str]):
    import pyarrow.parquet as pq  # only for parquet input

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ConvertError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
    n = 0
    for batch in pf.iter_batches(batch_size=10000, columns=columns):
        for row in batch.to_pylist():
            n += 1
            yield f"{path}:row {n}", row


def as_text(where: str, column: str, value) -> str:
    if not isinstance(value, str):
        raise ConvertError(f"{where}: column {column!r}: expected text, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ConvertError(f"{where}: column {column!r}: empty text")
    return value


def as_label(where: str, column: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConvertError(f"{where}: column {column!r}: expected a label (text or integer), "
                           f"got {type(value).__name__} {value!r}")
    value = str(value)
    if not value.strip():
        raise ConvertError(f"{where}: column {column!r}: empty label")
    return value


def as_score(where: str, column: str, value) -> float:
    try:
        score = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise ConvertError(f"{where}: column {column!r}: expected a finite number, got {value!r}")
    return score
