"""JSONL reading and writing: the one line reader every JSONL input goes through, and the one writer.

Callers check fields themselves (training examples, BEIR files, encode inputs, tables); this module
owns decoding and the ``FILE:LINE`` in every message.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator


def iter_lines(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line_number, file_offset, raw_bytes) per line; '\\n' stripped, '\\r' kept."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            yield number, offset, raw.rstrip(b"\n")
            offset += len(raw)


def iter_objects(path: str | Path, error: type[Exception] = ValueError, where: str = "{path}:{line}",
                 blank_lines: str = "skip") -> Iterator[tuple[str, dict]]:
    """Yield (``where`` of the line, JSON object) per line; `error` naming file and line otherwise.

    ``blank_lines``: ``skip`` or ``error``. A UTF-8 byte-order mark on the first line is ignored."""
    for line, _, raw in iter_lines(path):
        at = where.format(path=path, line=line)
        try:
            text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{at}: not UTF-8 (byte {e.start})") from None
        if not text.strip():
            if blank_lines == "skip":
                continue
            raise error(f"{at}: empty line (every line must be a JSON object)")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise error(f"{at}: malformed JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise error(f"{at}: expected a JSON object")
        yield at, obj


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write one JSON object per line atomically (temporary file renamed into place); -> lines."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
