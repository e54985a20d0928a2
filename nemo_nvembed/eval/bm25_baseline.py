"""BM25 baseline on a BEIR folder: the keyword index an embedding model has to beat.

Same tokenisation as the demo data's BM25 (``bm25s`` over our own lower-cased word split, English
stopwords removed), same metrics and cut-off as :func:`nemo_nvembed.eval.retrieval_metrics.score` (nDCG@10 and
Recall@100 with ``ir_measures``), so the numbers sit in one table with the embedding models'.
"""
from __future__ import annotations

from pathlib import Path

from nemo_nvembed.data.beir_folder import RetrievalSet, load_beir
from nemo_nvembed.data.bm25 import Bm25
from nemo_nvembed.eval.retrieval_metrics import score_run


def bm25_run(data: RetrievalSet, k: int = 100) -> dict[str, dict[str, float]]:
    """BM25's top ``k`` documents of ``data``'s corpus per query: {qid: {docid: score}}."""
    index = Bm25(data.doc_texts)
    run = {}
    for qid, query in zip(data.query_ids, data.query_texts):
        scores = index.scores(query)  # [n_corpus]
        top = scores.argsort()[::-1][:k]
        run[qid] = {data.doc_ids[j]: float(scores[j]) for j in top}
    return run


def score_bm25(folder: str | Path, split: str = "test", k: int = 100) -> dict:
    """{"ndcg@10", "recall@100", "queries", "corpus"} of BM25 over ``folder``'s corpus."""
    data = load_beir(folder, split)
    return score_run(data, bm25_run(data, k))
