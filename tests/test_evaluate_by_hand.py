"""`evaluate.score` (load_beir + exact search + ir_measures) against nDCG@10 / Recall@100 by hand."""
import json
import math

import torch

from nemo_nvembed.data.beir_folder import load_beir
from nemo_nvembed.eval.retrieval_metrics import score

N_DOCS = 105  # more than 100: a relevant document ranked past 100 lowers Recall@100


class RankingModel:
    """Embeddings that impose a chosen ranking: document j is one-hot(j); a query puts weight
    (N_DOCS - rank) on each document, so cosine similarity orders documents by the given ranking."""

    def __init__(self, rankings: dict[str, list[str]], doc_ids: list[str], doc_texts: list[str]):
        self.vec = {}
        for j, t in enumerate(doc_texts):
            self.vec[t] = torch.nn.functional.one_hot(torch.tensor(j), N_DOCS).float()
        for qtext, order in rankings.items():
            v = torch.zeros(N_DOCS)
            for rank, d in enumerate(order):
                v[doc_ids.index(d)] = N_DOCS - rank
            self.vec[qtext] = v
        self.instructions = set()

    def encode(self, texts, instruction=None, batch_size=32, precision="fp32", progress=False):
        self.instructions.add(instruction)
        return torch.stack([self.vec[t] for t in texts])


def _dcg(gains):
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def test_scores_equal_hand_computed_ndcg_and_recall(tmp_path):
    docs = [{"_id": f"d{i}", "text": f"document {i}"} for i in range(N_DOCS)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": f"query {q}"}) + "\n" for q in ("q1", "q2", "q3", "unjudged")))
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t2\nq2\td5\t1\nq2\td7\t1\nq3\td0\t1\n")
    data = load_beir(tmp_path)
    assert data.query_ids == ["q1", "q2", "q3"]  # a query without judgements is not scored
    ids = data.doc_ids
    rest = lambda *first: list(first) + [d for d in ids if d not in first]  # noqa: E731
    # q1: d2, d1, d3, ... ; q2: d5 first, d7 at rank 103 (past 100) ; q3: d0 at rank 11 (past 10)
    q2 = rest("d5")
    q2.remove("d7")
    q2.insert(102, "d7")
    q3 = rest(*[f"d{i}" for i in range(20, 30)], "d0")
    model = RankingModel({"query q1": rest("d2", "d1", "d3"), "query q2": q2, "query q3": q3},
                         ids, data.doc_texts)
    got = score(model, data, instruction="Given a query, find it", k=100)

    ndcg_q1 = _dcg([0, 1, 2]) / _dcg([2, 1])  # linear gains (trec_eval's ndcg_cut)
    ndcg_q2 = _dcg([1]) / _dcg([1, 1])  # d7 is not in the top 10
    ndcg_q3 = 0.0  # d0 at rank 11
    recall = (1.0 + 0.5 + 1.0) / 3  # q2 misses d7 in the top 100
    assert math.isclose(got["ndcg@10"], (ndcg_q1 + ndcg_q2 + ndcg_q3) / 3, rel_tol=1e-6)
    assert math.isclose(got["recall@100"], recall, rel_tol=1e-6)
    assert (got["queries"], got["corpus"]) == (3, N_DOCS)
    assert model.instructions == {None, "Given a query, find it"}  # documents plain, queries instructed


def test_doc_max_length_cuts_documents_only(tmp_path):
    """`score(..., doc_max_length=N)` (evaluate --doc-max-length) passes the cut to document encoding, never to queries."""
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(3)))
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "query"}) + "\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td1\t1\n")
    seen = []

    class Recorder:
        def encode(self, texts, instruction=None, batch_size=32, precision="fp32", progress=False, max_length=None):
            seen.append((instruction, max_length))
            return torch.eye(3)[[1] * len(texts)] if instruction else torch.eye(3)

    data = load_beir(tmp_path)
    assert score(Recorder(), data, "find it", doc_max_length=64)["ndcg@10"] == 1.0
    assert seen == [(None, 64), ("find it", None)]
    seen.clear()
    score(Recorder(), data, "find it")
    assert seen == [(None, None), ("find it", None)]
