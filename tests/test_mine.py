"""Hard-negative mining on a small real corpus (standard-library docstrings), BM25 and dense teachers (CPU).

The selection is checked against a plain reference: full ranking by recomputed scores, the
filters applied one by one, the first num_negatives kept."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, tiny_config
from nemo_nvembed import mine
from nemo_nvembed.converters import mining as mn
from nemo_nvembed.data.beir_folder import RetrievalSet, read_retrieval_set
from nemo_nvembed.data.bm25 import Bm25, text_key
from nemo_nvembed.recipes.demo_corpus.build import DemoDataConfig
from nemo_nvembed.recipes.demo_corpus.stdlib_docs import collect_module, dedupe
from nemo_nvembed.data.jsonl import load_examples
from nemo_nvembed.data.tasks import TaskRegistry

TASK = "PyDocRetrieval"
MODULES = ["json", "re", "pathlib", "collections", "itertools", "functools", "os.path", "shutil", "zipfile",
           "tarfile", "datetime", "decimal", "statistics", "csv", "logging", "argparse", "textwrap", "string"]


@pytest.fixture(scope="module")
def registry():
    return TaskRegistry.from_yaml(REPO / "conf" / "tasks.yaml")


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    """summary -> docstring body; plus a planted copy of a positive, a second positive for one query,
    a qrel to a missing document, a query without qrels and a judged non-relevant qrel."""
    cfg = DemoDataConfig()
    items, _ = dedupe([i for m in MODULES for i in collect_module(m, cfg.min_summary_words, cfg.max_chars)])
    items = [i for i in items if len(i.body.split()) >= 20]
    assert len(items) > 150
    corpus = [{"_id": i.id, "title": "", "text": i.body} for i in items]
    queries = [{"_id": "q:" + i.id, "text": i.summary} for i in items[::2]]
    qrels = [(q["_id"], q["_id"][2:], 1) for q in queries]
    first = items[0]
    corpus.append({"_id": "copy-of-first", "text": "  " + first.body.upper().replace(" ", "\n ") + " "})
    # A query with two positives, worded from both so that BM25 ranks them first.
    both = " ".join(items[2].body.split()[:12] + items[3].body.split()[:12])
    queries.append({"_id": "q:two", "text": both})
    qrels += [("q:two", items[2].id, 1), ("q:two", items[3].id, 2)]
    qrels.append(("q:" + items[4].id, items[5].id, 0))  # judged non-relevant: an ordinary candidate
    qrels.append(("q:" + items[6].id, "no-such-doc", 1))
    queries.append({"_id": "q:orphan", "text": "a query nobody judged"})
    root = tmp_path_factory.mktemp("beir")
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return root


def _args(beir: Path, out: Path, model: str, *extra: str) -> list[str]:
    return ["--model", model, "--corpus", str(beir / "corpus.jsonl"), "--queries", str(beir / "queries.jsonl"),
            "--qrels", str(beir / "qrels" / "test.tsv"), "--out", str(out), "--task", TASK, *extra]


def reference_negatives(scores: np.ndarray, pos: int, relevant: set[int], keys: list[str], top_k: int,
                        perc_pos: float, n: int, drop_zero: bool) -> list[int]:
    """The rule written out plainly over a full score vector [n_docs]."""
    ranked = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:top_k]
    pos_keys = {keys[p] for p in relevant}
    thr = perc_pos * scores[pos] if scores[pos] >= 0 else scores[pos] * (2 - perc_pos)
    out = []
    for j in ranked:
        if j in relevant or keys[j] in pos_keys or (drop_zero and scores[j] <= 0) or scores[j] >= thr:
            continue
        if keys[j] in {keys[k] for k in out}:
            continue
        out.append(j)
    return out[:n]


def check_rows(path: Path, data: RetrievalSet, registry, num_negatives: int) -> list:
    """Loads with the training loader; negatives never repeat a positive (by id or text)."""
    exs = load_examples(path, registry, num_negatives, allow_negative_resampling=True).examples
    rel = {(q, f"{TASK}:{d}") for q, ds in data.qrels.items() for d, s in ds.items() if s > 0}
    qid_of = {t: q for q, t in zip(data.query_ids, data.query_texts)}
    for ex in exs:
        qid = qid_of[ex.query]
        for neg, nid in zip(ex.neg, ex.neg_ids):
            assert text_key(neg) != text_key(ex.pos)
            assert (qid, nid) not in rel
    return exs


def test_bm25_cli(beir, tmp_path, registry):
    out = tmp_path / "train.jsonl"
    p = subprocess.run([sys.executable, "-m", "nemo_nvembed.mine", *_args(beir, out, "bm25", "--perc-pos", "0.9")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    data = read_retrieval_set(beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels" / "test.tsv")
    exs = check_rows(out, data, registry, 7)
    n_queries = len(data.query_ids)
    assert f"queries read {n_queries}," in p.stdout
    assert "skipped query: no relevant document (qrels score > 0) in the corpus: 1" in p.stdout  # the orphan
    assert "ignored qrels row: document id not in the corpus: 1" in p.stdout
    assert "ignored qrels row: relevance <= 0 (judged non-relevant): 1" in p.stdout
    assert f"wrote {out}: {len(exs)} lines" in p.stdout
    # One line per (query, relevant doc): the query with two positives gives two lines.
    two = [e for e in exs if e.query == data.query_texts[data.query_ids.index("q:two")]]
    assert sorted(e.pos_id for e in two) == sorted(f"{TASK}:{d}" for d in data.qrels["q:two"])
    assert all(len(e.neg) == 7 for e in two)


def test_bm25_matches_reference_and_threshold(beir, tmp_path):
    data = read_retrieval_set(beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels" / "test.tsv")
    perc_pos, top_k, n = 0.9, 30, 7
    pairs, summary = mn.mine(data, mn.Bm25Teacher(data.doc_texts), top_k, n, perc_pos, progress=False)
    assert summary.candidate_drops["score >= perc_pos x positive's"] > 0  # the filter is exercised
    assert summary.candidate_drops["same text as a positive"] >= 1  # the planted copy of the first body
    index = Bm25(data.doc_texts)
    keys = [text_key(t) for t in data.doc_texts]
    doc_index = {d: i for i, d in enumerate(data.doc_ids)}
    qtext = dict(zip(data.query_ids, data.query_texts))
    for m in pairs:
        scores = index.scores(qtext[m.query_id])  # [n_docs], recomputed
        assert m.pos_score == pytest.approx(float(scores[m.pos]))
        np.testing.assert_allclose(m.neg_scores, scores[m.negs], rtol=1e-6)
        assert all(s < perc_pos * m.pos_score for s in m.neg_scores)
        relevant = {doc_index[d] for d, s in data.qrels[m.query_id].items() if s > 0 and d in doc_index}
        assert m.negs == reference_negatives(scores, m.pos, relevant, keys, top_k, perc_pos, n, True)
    assert len(pairs) == summary.pairs_written


def test_select_negatives_rules():
    from collections import Counter

    keys = ["pos", "a", "pos", "b", "b", "c", "d"]
    drops = Counter()
    kept = mn.select_negatives([0, 1, 2, 3, 4, 5, 6], [9.0, 8.0, 7.0, 5.0, 4.0, 3.0, 0.0], {0}, {"pos"}, keys,
                               threshold=7.5, num_negatives=3, zero_means_no_match=True, drops=drops)
    assert kept == [3, 5]  # 1 above threshold, 2 copy of the positive, 4 repeats 3, 6 scores 0
    assert drops == Counter({"relevant (a positive)": 1, "score >= perc_pos x positive's": 1,
                             "same text as a positive": 1, "same text as a kept negative": 1,
                             "BM25 score 0 (no shared term)": 1})
    # The threshold stays below a negative positive score (cosine can be < 0).
    assert mn.perc_pos_threshold(10.0, 0.95) == pytest.approx(9.5)
    assert mn.perc_pos_threshold(-0.2, 0.95) == pytest.approx(-0.21)


@pytest.fixture(scope="module")
def tiny_nemo(tmp_path_factory, tokenizer_file, single_process):
    from nemo_nvembed.models.network import NVEmbedNetwork

    path = tmp_path_factory.mktemp("tiny") / "tiny.nemo"
    NVEmbedNetwork(tiny_config(tokenizer_file, **{"pooling.type": "mean"})).save_to(str(path))
    return path


def test_dense_teacher(beir, tmp_path, registry, tiny_nemo):
    from nemo_nvembed.models.network import NVEmbedNetwork

    out = tmp_path / "dense.jsonl"
    perc_pos, top_k, n = 0.99, 40, 4
    summary = mine.main(_args(beir, out, str(tiny_nemo), "--top-k", str(top_k), "--num-negatives", str(n),
                            "--perc-pos", str(perc_pos), "--batch-size", "64"))
    data = read_retrieval_set(beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels" / "test.tsv")
    exs = check_rows(out, data, registry, n)
    assert len(exs) == summary.pairs_written > 0
    # Recompute cosines with the model itself, and the selection with the plain reference.
    model = NVEmbedNetwork.load(str(tiny_nemo))
    instr = registry[TASK].eval_instruction
    docs = model.encode(data.doc_texts, batch_size=64).numpy()
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    qs = model.encode(data.query_texts, instruction=instr, batch_size=64).numpy()
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    keys = [text_key(t) for t in data.doc_texts]
    doc_index = {d: i for i, d in enumerate(data.doc_ids)}
    qrow = {t: i for i, t in enumerate(data.query_texts)}
    checked = 0
    for row in map(json.loads, out.read_text().splitlines()):  # as written, before any resampling
        i = qrow[row["query"]]
        scores = docs @ qs[i]  # [n_docs]
        pos = doc_index[row["pos_id"].split(":", 1)[1]]
        negs = [doc_index[x.split(":", 1)[1]] for x in row["neg_ids"]]
        assert all(scores[j] < perc_pos * scores[pos] + 1e-5 for j in negs)
        relevant = {doc_index[d] for d, s in data.qrels[data.query_ids[i]].items() if s > 0 and d in doc_index}
        ref = reference_negatives(scores, pos, relevant, keys, top_k, perc_pos, n, False)
        if len(set(np.round(scores, 5))) == len(scores):  # no near-ties that float order could swap
            assert negs == ref
            checked += 1
    assert checked > 0
