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
import sys
from pathlib import Path

from nemo_nvembed.checks import path_checks as checks
from nemo_nvembed.checks.errors import UserError, exit_on_user_error
from nemo_nvembed.inference.encode_file import encode_file

SUFFIXES = (".npy", ".parquet")


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
        raise UserError(f"{args.output}: output must end in {' or '.join(SUFFIXES)}")
    for option in ("batch_size", "chunk_size", "tp") + (("max_length",) if args.max_length is not None else ()):
        checks.positive("--" + option.replace("_", "-"), getattr(args, option))
    checks.input_file(args.model, "--model")
    checks.input_file(args.input, "--input")
    checks.output_file(args.output, "--output")
    encode_file(args.model, args.input, args.output, suffix, args.batch_size, args.max_length, args.precision,
                args.tp, args.chunk_size)


if __name__ == "__main__":
    sys.exit(main())
