"""BEIR-style retrieval scoring: nDCG@10 and Recall@100 with ``ir_measures`` (pytrec_eval).

Queries are embedded with the instruction (NV-Embed's query prefix), documents without; the corpus
is ranked by cosine similarity (exact search). The ranking can be kept as a TREC run file (``qid Q0
docid rank score tag``, the format trec_eval and ``ir_measures`` read) for a paired comparison
(:mod:`nemo_nvembed.eval.paired`).
"""
from __future__ import annotations

import ir_measures
import torch
from ir_measures import R, nDCG

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.beir_folder import RetrievalSet


def score(model, data: RetrievalSet, instruction: str | None, batch_size: int = 32, precision: str = "fp32",
          k: int = 100, progress: bool = False, run_path: str | None = None, run_tag: str = "run",
          doc_max_length: int | None = None) -> dict[str, float]:
    """``doc_max_length``: documents cut at this many tokens (None: the model's own max_length)."""
    cut = {} if doc_max_length is None else {"max_length": doc_max_length}
    docs = model.encode(data.doc_texts, batch_size=batch_size, precision=precision, progress=progress, **cut)
    qs = model.encode(data.query_texts, instruction=instruction, batch_size=batch_size, precision=precision, progress=progress)
    sims = torch.nn.functional.normalize(qs, dim=-1) @ torch.nn.functional.normalize(docs, dim=-1).T  # [q, n]
    top = sims.topk(min(k, sims.shape[1]), dim=1)
    run = {
        qid: {data.doc_ids[j]: float(s) for s, j in zip(top.values[i].tolist(), top.indices[i].tolist())}
        for i, qid in enumerate(data.query_ids)
    }
    return score_run(data, run, run_path, run_tag)


def score_run(data: RetrievalSet, run: dict[str, dict[str, float]], run_path=None, run_tag: str = "run") -> dict[str, float]:
    """A ranking ({qid: {docid: score}}) of ``data`` -> nDCG@10 and Recall@100 (``ir_measures``); the one
    place every row of the tables is scored, models and BM25 alike. Written as a TREC run to ``run_path`` when given."""
    if run_path is not None:
        write_trec_run(run, run_path, run_tag)
    agg = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], data.qrels, run)
    return {"ndcg@10": float(agg[nDCG @ 10]), "recall@100": float(agg[R @ 100]),
            "queries": len(data.query_ids), "corpus": len(data.doc_ids)}


def write_trec_run(run: dict[str, dict[str, float]], path, tag: str = "run") -> None:
    """{qid: {docid: score}} -> a TREC run file, each query's documents by descending score."""
    tag = "".join(tag.split()) or "run"
    with open(path, "w") as f:
        for qid, docs in run.items():
            for rank, (doc, s) in enumerate(sorted(docs.items(), key=lambda kv: -kv[1]), start=1):
                f.write(f"{qid} Q0 {doc} {rank} {s:.6f} {tag}\n")


def read_trec_run(path) -> dict[str, dict[str, float]]:
    """A TREC run file -> {qid: {docid: score}}; a malformed line is refused naming the file and line."""
    run: dict[str, dict[str, float]] = {}
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise UserError(f"{path}:{n}: a TREC run line has 6 fields (qid Q0 docid rank score tag), found {len(parts)}")
            try:
                value = float(parts[4])
            except ValueError:
                raise UserError(f"{path}:{n}: score (field 5) {parts[4]!r} is not a number") from None
            run.setdefault(parts[0], {})[parts[2]] = value
    if not run:
        raise UserError(f"{path}: no ranking in this run file")
    return run
