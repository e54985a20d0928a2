"""Embed a JSONL file into ``.npy`` or ``.parquet`` (``python -m nemo_nvembed.encode``; formats in its help).

Two passes over the input: the first validates every line (a bad line stops the run before the
model loads, naming file and line) and counts them; the second embeds ``chunk_size`` lines at a
time and writes them into the output, which is renamed into place only once complete.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.jsonl_io import iter_objects

FIELDS = ("text", "instruction", "id")


class EncodeInputError(UserError):
    """A bad line of the file to embed; the message names the file and the line."""


def parse_object(where: str, obj: dict) -> tuple[str, str | None, str | None]:
    """One input object -> (text, instruction or None, id or None); EncodeInputError naming file:line."""
    unknown = set(obj) - set(FIELDS)
    if unknown:
        raise EncodeInputError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {', '.join(FIELDS)}")
    text, instr, id_ = obj.get("text"), obj.get("instruction"), obj.get("id")
    if not isinstance(text, str):
        raise EncodeInputError(f"{where}: field 'text' must be a string")
    if instr is not None and not isinstance(instr, str):
        raise EncodeInputError(f"{where}: field 'instruction' must be a string or absent")
    if "id" in obj:
        if isinstance(id_, bool) or not isinstance(id_, (str, int)) or not str(id_).strip():
            raise EncodeInputError(f"{where}: field 'id' must be a non-empty string or an integer")
        id_ = str(id_)
    return text, instr or None, id_


def _lines(path: str) -> Iterator[tuple[int, tuple[str, str | None, str | None]]]:
    """(line number, parsed line) per line; every line must be a JSON object."""
    for lineno, (where, obj) in enumerate(iter_objects(path, EncodeInputError, blank_lines="error"), 1):
        yield lineno, parse_object(where, obj)


def scan(path: str) -> tuple[int, bool]:
    """First pass: validate every line; -> (number of lines, whether lines carry ids)."""
    n, has_ids, seen = 0, None, {}
    for lineno, (_, _, id_) in _lines(path):
        if has_ids is None:
            has_ids = id_ is not None
        elif has_ids != (id_ is not None):
            raise EncodeInputError(f"{path}:{lineno}: field 'id' must be given on every line or on none "
                             f"(line 1 {'has' if has_ids else 'has none'})")
        if id_ is not None:
            if id_ in seen:
                raise EncodeInputError(f"{path}:{lineno}: id {id_!r} already used on line {seen[id_]}")
            seen[id_] = lineno
        n += 1
    if not n:
        raise EncodeInputError(f"{path}: no input lines")
    return n, bool(has_ids)


def iter_chunks(path: str, chunk_size: int) -> Iterator[tuple[int, list[tuple[str, str | None, str | None]]]]:
    """Second pass: (first line number, parsed lines) per chunk of chunk_size lines."""
    chunk, first = [], 1
    for lineno, row in _lines(path):
        chunk.append(row)
        if len(chunk) == chunk_size:
            yield first, chunk
            chunk, first = [], lineno + 1
    if chunk:
        yield first, chunk


class NpyWriter:
    def __init__(self, path: str, n: int, dim: int, has_ids: bool):
        self.path, self.tmp = path, path + ".tmp"
        self.out = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(n, dim))  # [n, d]

    def write(self, start: int, ids: list, emb: np.ndarray) -> None:
        self.out[start:start + len(emb)] = emb

    def close(self) -> None:
        self.out.flush()
        del self.out
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.__dict__.pop("out", None)
        Path(self.tmp).unlink(missing_ok=True)


class ParquetWriter:
    def __init__(self, path: str, n: int, dim: int, has_ids: bool):
        import pyarrow as pa  # only for .parquet output
        import pyarrow.parquet as pq

        self.pa, self.dim, self.path, self.tmp = pa, dim, path, path + ".tmp"
        self.schema = pa.schema([("id", pa.string() if has_ids else pa.int64()),
                                 ("embedding", pa.list_(pa.float32(), dim))])
        self.writer = pq.ParquetWriter(self.tmp, self.schema)

    def write(self, start: int, ids: list, emb: np.ndarray) -> None:
        pa = self.pa
        flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1))  # [c * d]
        col = pa.FixedSizeListArray.from_arrays(flat, self.dim)  # [c] x d
        self.writer.write_table(pa.Table.from_arrays([pa.array(ids, type=self.schema.field("id").type), col],
                                                     schema=self.schema))

    def close(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            Path(self.tmp).unlink(missing_ok=True)


def encode_file(model_path: str, path: str, output: str, suffix: str, batch_size: int, max_length: int | None,
                precision: str, tp: int, chunk_size: int) -> None:
    n, has_ids = scan(path)  # every line valid before the model loads

    # heavy (torch, megatron): imported after the input is checked, so a bad line fails in a second
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.network import NVEmbedNetwork

    model = NVEmbedNetwork.load(model_path, tp=tp)
    dim = model.cfg.backbone.hidden_size
    writer = None
    if distributed.is_global_rank_zero():
        writer = (NpyWriter if suffix == ".npy" else ParquetWriter)(output, n, dim, has_ids)
    bar = tqdm(total=n, desc="encode", unit="text", disable=not distributed.is_global_rank_zero())
    try:
        _encode_chunks(model, path, writer, bar, dim, has_ids, batch_size, max_length, precision, chunk_size)
    except BaseException:
        if writer is not None:  # no partial output: the temporary goes
            writer.abort()
        raise
    bar.close()
    if writer is not None:
        writer.close()
        print(f"wrote {output}: {n} x {dim} float32")


def _encode_chunks(model, path: str, writer, bar, dim: int, has_ids: bool, batch_size: int, max_length: int | None,
                   precision: str, chunk_size: int) -> None:
    for first, chunk in iter_chunks(path, chunk_size):
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, (_, instr, _) in enumerate(chunk):
            groups[instr].append(i)
        out = np.zeros((len(chunk), dim), dtype=np.float32)  # [c, d]
        for instr, idx in groups.items():
            emb = model.encode([chunk[i][0] for i in idx], instruction=instr, batch_size=batch_size,
                               max_length=max_length, precision=precision)
            out[idx] = emb.numpy()
            bar.update(len(idx))
        if writer is not None:
            ids = [r[2] for r in chunk] if has_ids else list(range(first, first + len(chunk)))
            writer.write(first - 1, ids, out)
