"""BEIR-style retrieval evaluation: nDCG@10 and Recall@100 with ``ir_measures`` (pytrec_eval).

``python -m nemo_nvembed.evaluate --model X.nemo --beir DIR [--instruction S]`` reads
``DIR/corpus.jsonl`` ({"_id", "title"?, "text"}), ``DIR/queries.jsonl`` ({"_id", "text"}) and
``DIR/qrels/test.tsv`` (query-id, corpus-id, score; with a header), embeds queries with the
instruction (NV-Embed's query prefix) and documents without, ranks the corpus by cosine
similarity (exact search) and prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_nvembed.checks.errors import exit_on_user_error


@dataclass
class BEIRData:
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]


def _read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
            for field in fields:
                if not isinstance(obj.get(field), str):
                    raise ValueError(f"{path}:{lineno}: field {field!r} must be a string")
            rows.append(obj)
    return rows


def load_beir(folder: str | Path, split: str = "test") -> BEIRData:
    folder = Path(folder)
    corpus = _read_jsonl(folder / "corpus.jsonl", ("_id", "text"))
    queries = _read_jsonl(folder / "queries.jsonl", ("_id", "text"))
    qrels: dict[str, dict[str, int]] = {}
    qrels_path = folder / "qrels" / f"{split}.tsv"
    with open(qrels_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and parts[0] == "query-id":
                continue
            if len(parts) != 3:
                raise ValueError(f"{qrels_path}:{lineno}: expected 3 tab-separated fields")
            qrels.setdefault(parts[0], {})[parts[1]] = int(float(parts[2]))
    wanted = set(qrels)
    queries = [q for q in queries if q["_id"] in wanted]
    texts = [(d.get("title", "") + " " + d["text"]).strip() if d.get("title") else d["text"] for d in corpus]
    return BEIRData([d["_id"] for d in corpus], texts, [q["_id"] for q in queries], [q["text"] for q in queries], qrels)


def score(model, data: BEIRData, instruction: str | None, batch_size: int = 32, precision: str = "fp32",
          k: int = 100, progress: bool = False) -> dict[str, float]:
    import ir_measures
    from ir_measures import R, nDCG

    docs = model.encode(data.corpus_texts, batch_size=batch_size, precision=precision, progress=progress)
    qs = model.encode(data.query_texts, instruction=instruction, batch_size=batch_size, precision=precision, progress=progress)
    sims = torch.nn.functional.normalize(qs, dim=-1) @ torch.nn.functional.normalize(docs, dim=-1).T  # [q, n]
    top = sims.topk(min(k, sims.shape[1]), dim=1)
    run = {
        qid: {data.corpus_ids[j]: float(s) for s, j in zip(top.values[i].tolist(), top.indices[i].tolist())}
        for i, qid in enumerate(data.query_ids)
    }
    agg = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], data.qrels, run)
    return {"ndcg@10": float(agg[nDCG @ 10]), "recall@100": float(agg[R @ 100]),
            "queries": len(data.query_ids), "corpus": len(data.corpus_ids)}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".nemo file")
    p.add_argument("--beir", required=True, help="folder with corpus.jsonl, queries.jsonl, qrels/test.tsv")
    p.add_argument("--instruction", default=None, help="query instruction (Table 7); none = plain queries")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--tp", type=int, default=1)
    args = p.parse_args(argv)
    from nemo_nvembed.checks import paths as checks
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.nvembed import NVEmbedModel

    checks.positive("--batch-size", args.batch_size)
    checks.positive("--tp", args.tp)
    checks.input_file(args.model, "--model")
    data = load_beir(args.beir, args.split)
    model = NVEmbedModel.load(args.model, tp=args.tp)
    result = score(model, data, args.instruction, args.batch_size, args.precision, progress=True)
    if distributed.is_global_rank_zero():
        print(json.dumps({"model": args.model, "beir": args.beir, **result}))


if __name__ == "__main__":
    sys.exit(main())
