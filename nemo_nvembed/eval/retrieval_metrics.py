"""BEIR-style retrieval scoring: nDCG@10 and Recall@100 with ``ir_measures`` (pytrec_eval).

Queries are embedded with the instruction (NV-Embed's query prefix), documents without; the corpus
is ranked by cosine similarity (exact search).
"""
from __future__ import annotations

import ir_measures
import torch
from ir_measures import R, nDCG

from nemo_nvembed.data.beir_folder import RetrievalSet


def score(model, data: RetrievalSet, instruction: str | None, batch_size: int = 32, precision: str = "fp32",
          k: int = 100, progress: bool = False) -> dict[str, float]:
    docs = model.encode(data.doc_texts, batch_size=batch_size, precision=precision, progress=progress)
    qs = model.encode(data.query_texts, instruction=instruction, batch_size=batch_size, precision=precision, progress=progress)
    sims = torch.nn.functional.normalize(qs, dim=-1) @ torch.nn.functional.normalize(docs, dim=-1).T  # [q, n]
    top = sims.topk(min(k, sims.shape[1]), dim=1)
    run = {
        qid: {data.doc_ids[j]: float(s) for s, j in zip(top.values[i].tolist(), top.indices[i].tolist())}
        for i, qid in enumerate(data.query_ids)
    }
    agg = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], data.qrels, run)
    return {"ndcg@10": float(agg[nDCG @ 10]), "recall@100": float(agg[R @ 100]),
            "queries": len(data.query_ids), "corpus": len(data.doc_ids)}
