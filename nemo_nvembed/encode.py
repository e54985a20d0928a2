"""``python -m nemo_nvembed.encode --model model.nemo --input texts.jsonl --output emb.npy|emb.parquet``

Each input line is ``{"text": ..., "instruction": optional, "id": optional}``. Lines with an
instruction are embedded as queries (``Instruct: {instruction}\\nQuery: {text}``); lines without one
as documents.

Output, chosen by the suffix of --output:

* ``.npy``: float32 ``[n, d]``, row i = line i's embedding;
* ``.parquet``: one row per line, in input order, columns ``id`` and ``embedding`` (a fixed-size
  list of d float32). ``id`` is the line's "id" field as a string when the input has ids (then
  every line must have one, all distinct), otherwise the 1-based line number (int64).

Large inputs stream: a first pass validates every line (a bad line stops the run before the model
is loaded, naming file and line) and counts them; the second reads ``--chunk-size`` lines at a time,
embeds them (the model sorts each call by length, so batches carry little padding) and writes them
into the output, which is only renamed into place once complete.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np

from nemo_nvembed.checks import paths as checks
from nemo_nvembed.checks.errors import exit_on_user_error

FIELDS = ("text", "instruction", "id")
SUFFIXES = (".npy", ".parquet")


def parse_line(path: str, lineno: int, raw: bytes) -> tuple[str, str | None, str | None]:
    """One input line -> (text, instruction or None, id or None); SystemExit naming file:line."""
    where = f"{path}:{lineno}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SystemExit(f"{where}: not UTF-8 (byte {e.start})") from None
    if not line.strip():
        raise SystemExit(f"{where}: empty line (every line must be a JSON object)")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(obj, dict):
        raise SystemExit(f"{where}: expected a JSON object")
    unknown = set(obj) - set(FIELDS)
    if unknown:
        raise SystemExit(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {', '.join(FIELDS)}")
    text, instr, id_ = obj.get("text"), obj.get("instruction"), obj.get("id")
    if not isinstance(text, str):
        raise SystemExit(f"{where}: field 'text' must be a string")
    if instr is not None and not isinstance(instr, str):
        raise SystemExit(f"{where}: field 'instruction' must be a string or absent")
    if "id" in obj:
        if isinstance(id_, bool) or not isinstance(id_, (str, int)) or not str(id_).strip():
            raise SystemExit(f"{where}: field 'id' must be a non-empty string or an integer")
        id_ = str(id_)
    return text, instr or None, id_


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            yield lineno, raw


def scan(path: str) -> tuple[int, bool]:
    """First pass: validate every line; -> (number of lines, whether lines carry ids)."""
    n, has_ids, seen = 0, None, {}
    for lineno, raw in _lines(path):
        _, _, id_ = parse_line(path, lineno, raw)
        if has_ids is None:
            has_ids = id_ is not None
        elif has_ids != (id_ is not None):
            raise SystemExit(f"{path}:{lineno}: field 'id' must be given on every line or on none "
                             f"(line 1 {'has' if has_ids else 'has none'})")
        if id_ is not None:
            if id_ in seen:
                raise SystemExit(f"{path}:{lineno}: id {id_!r} already used on line {seen[id_]}")
            seen[id_] = lineno
        n += 1
    if not n:
        raise SystemExit(f"{path}: no input lines")
    return n, bool(has_ids)


def iter_chunks(path: str, chunk_size: int) -> Iterator[tuple[int, list[tuple[str, str | None, str | None]]]]:
    """Second pass: (first line number, parsed lines) per chunk of chunk_size lines."""
    chunk, first = [], 1
    for lineno, raw in _lines(path):
        chunk.append(parse_line(path, lineno, raw))
        if len(chunk) == chunk_size:
            yield first, chunk
            chunk, first = [], lineno + 1
    if chunk:
        yield first, chunk


def read_inputs(path: str) -> tuple[list[str], list[str | None]]:
    """Whole file in memory: (texts, instructions). For small inputs and callers of the old API."""
    scan(path)
    rows = [r for _, chunk in iter_chunks(path, 10000) for r in chunk]
    return [r[0] for r in rows], [r[1] for r in rows]


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
        import pyarrow as pa
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


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.encode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".nemo file")
    p.add_argument("--input", required=True, help="JSONL: {'text': ..., 'instruction': optional, 'id': optional}")
    p.add_argument("--output", required=True, help=".npy ([n, d] float32) or .parquet (id, embedding)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None, help="default: the model's max_length")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=10000, help="lines read and embedded at a time")
    args = p.parse_args(argv)
    suffix = Path(args.output).suffix.lower()
    if suffix not in SUFFIXES:
        raise SystemExit(f"{args.output}: output must end in {' or '.join(SUFFIXES)}")
    for option in ("batch_size", "chunk_size", "tp") + (("max_length",) if args.max_length is not None else ()):
        checks.positive("--" + option.replace("_", "-"), getattr(args, option))
    checks.input_file(args.model, "--model")
    checks.input_file(args.input, "--input")
    checks.output_file(args.output, "--output")
    n, has_ids = scan(args.input)  # every line valid before the model loads

    from tqdm.auto import tqdm

    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.nvembed import NVEmbedModel

    model = NVEmbedModel.load(args.model, tp=args.tp)
    dim = model.cfg.backbone.hidden_size
    writer = None
    if distributed.is_global_rank_zero():
        writer = (NpyWriter if suffix == ".npy" else ParquetWriter)(args.output, n, dim, has_ids)
    bar = tqdm(total=n, desc="encode", unit="text", disable=not distributed.is_global_rank_zero())
    try:
        _encode_chunks(args, model, writer, bar, dim, has_ids)
    except BaseException:
        if writer is not None:  # no partial output: the temporary goes
            writer.abort()
        raise
    bar.close()
    if writer is not None:
        writer.close()
        print(f"wrote {args.output}: {n} x {dim} float32")


def _encode_chunks(args, model, writer, bar, dim: int, has_ids: bool) -> None:
    for first, chunk in iter_chunks(args.input, args.chunk_size):
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, (_, instr, _) in enumerate(chunk):
            groups[instr].append(i)
        out = np.zeros((len(chunk), dim), dtype=np.float32)  # [c, d]
        for instr, idx in groups.items():
            emb = model.encode([chunk[i][0] for i in idx], instruction=instr, batch_size=args.batch_size,
                               max_length=args.max_length, precision=args.precision)
            out[idx] = emb.numpy()
            bar.update(len(idx))
        if writer is not None:
            ids = [r[2] for r in chunk] if has_ids else list(range(first, first + len(chunk)))
            writer.write(first - 1, ids, out)


if __name__ == "__main__":
    sys.exit(main())
