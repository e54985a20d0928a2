"""``python -m nemo_nvembed.encode --model model.nemo --input texts.jsonl --output emb.npy``

Each input line is ``{"text": ..., "instruction": optional}``. Row i of the output (float32,
[n, d]) is line i's embedding. Lines with an instruction are embedded as queries
(``Instruct: {instruction}\\nQuery: {text}``); lines without one as documents.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np


def read_inputs(path: str) -> tuple[list[str], list[str | None]]:
    texts, instructions = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
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
            unknown = set(obj) - {"text", "instruction"}
            if unknown:
                raise SystemExit(f"{where}: unknown field(s) {sorted(unknown)}; allowed: text, instruction")
            text, instr = obj.get("text"), obj.get("instruction")
            if not isinstance(text, str):
                raise SystemExit(f"{where}: field 'text' must be a string")
            if instr is not None and not isinstance(instr, str):
                raise SystemExit(f"{where}: field 'instruction' must be a string or absent")
            texts.append(text)
            instructions.append(instr or None)
    if not texts:
        raise SystemExit(f"{path}: no input lines")
    return texts, instructions


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.encode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".nemo file")
    p.add_argument("--input", required=True, help="JSONL: {'text': ..., 'instruction': optional}")
    p.add_argument("--output", required=True, help=".npy file for the [n, d] float32 embeddings")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None, help="default: the model's max_length")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--tp", type=int, default=1)
    args = p.parse_args(argv)
    texts, instructions = read_inputs(args.input)

    from nemo_nvembed import distributed
    from nemo_nvembed.model import NVEmbedModel

    model = NVEmbedModel.load(args.model, tp=args.tp)
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, instr in enumerate(instructions):
        groups[instr].append(i)
    out = np.zeros((len(texts), model.cfg.backbone.hidden_size), dtype=np.float32)
    for instr, idx in groups.items():
        emb = model.encode([texts[i] for i in idx], instruction=instr, batch_size=args.batch_size,
                           max_length=args.max_length, precision=args.precision, progress=True)
        out[idx] = emb.numpy()
    if distributed.is_global_rank_zero():
        np.save(args.output, out)
        print(f"wrote {args.output}: {out.shape[0]} x {out.shape[1]} float32")


if __name__ == "__main__":
    sys.exit(main())
