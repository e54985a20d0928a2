"""BM25 baseline on a BEIR folder: the keyword index an embedding model has to beat.

Same tokenisation as the demo data's BM25 (``bm25s`` over our own lower-cased word split, English
stopwords removed), same metrics and cut-off as :func:`nemo_nvembed.eval.retrieval_metrics.score` (nDCG@10 and
Recall@100 with ``ir_measures``), so the numbers sit in one table with the embedding models'.
"""
from __future__ import annotations

from pathlib import Path

import ir_measures
from ir_measures import R, nDCG

from nemo_nvembed.data.beir_folder import load_beir
from nemo_nvembed.data.bm25 import Bm25
from nemo_nvembed.eval.retrieval_metrics import write_trec_run


def score_bm25(folder: str | Path, split: str = "test", k: int = 100, run_path: str | Path | None = None) -> dict:
    """{"ndcg@10", "recall@100", "queries", "corpus"} of BM25 over ``folder``'s corpus (its ranking
    written to ``run_path`` as a TREC run when given)."""
    data = load_beir(folder, split)
    index = Bm25(data.doc_texts)
    run = {}
    for qid, query in zip(data.query_ids, data.query_texts):
        scores = index.scores(query)  # [n_corpus]
        top = scores.argsort()[::-1][:k]
        run[qid] = {data.doc_ids[j]: float(scores[j]) for j in top}
    if run_path is not None:
        write_trec_run(run, run_path, "bm25")
    agg = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], data.qrels, run)
    return {"ndcg@10": float(agg[nDCG @ 10]), "recall@100": float(agg[R @ 100]),
            "queries": len(data.query_ids), "corpus": len(data.doc_ids)}
