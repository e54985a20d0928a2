"""Offline fixtures for the recipe manifest: a few rows per source, in each source's own schema.

`write_sources(DIR)` writes DIR/<hf_id>[/<config>]/<split>.<ext> (and raw files at their repository
path) exactly where `nemo_nvembed.paper_data.sources.load_table(..., source_dir=DIR)` looks, with the
config names, split names, file formats, column names and types that conf/data/nvembed_v1.yaml's
`checked` notes record: MTEB's BEIR layout; sentence-transformers' `pair` configs and
stackexchange-duplicates' `post-post-pair`; SQuAD's `plain_text` with nested `answers`; STS22's raw
en/train.jsonl with 1-4 scores; amazon_counterfactual's en/*.parquet (label int32);
AmazonReviewsClassification / MTOPIntentClassification with integer labels and no label text; the
raw arXiv/bioRxiv/medRxiv pools as train_0.jsonl.gz, and MTEB's clustering test sets drawn from them
(arXiv rows hold lists of texts); MTEB's STS12-16 and STSBenchmark test sets, with a planted reused
pair where the manifest's STS filters should find one. Texts are drawn from a small vocabulary so
that BM25 finds neighbours (hard negatives).
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

COMMON = "report study result method value system model data process group sample measure".split()  # no stopwords: BM25 drops those
TOPICS = [f"alpha beta gamma delta epsilon zeta eta theta".split(),
          f"river mountain forest valley ocean desert island lake".split(),
          f"engine wheel brake gear piston valve clutch axle".split(),
          f"protein cell gene enzyme virus tissue neuron membrane".split(),
          f"market stock bond price trade fund share bank".split()]


def _sentence(rng: random.Random, topic: int, n: int = 8) -> str:
    words = rng.sample(TOPICS[topic % len(TOPICS)], 4) + rng.sample(TOPICS[(topic + 1) % len(TOPICS)], 1)
    words += rng.sample(COMMON, n - len(words))
    rng.shuffle(words)
    return " ".join(words) + f" {rng.randrange(10**6)}"


def _write(root: Path, hf_id: str, config: str | None, split: str, rows: list[dict], name: str | None = None) -> None:
    """rows as JSON lines at DIR/<hf_id>[/<config>]/<name or split.jsonl> (.gz names are gzipped)."""
    path = root / hf_id / (config or "") / (name or f"{split}.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def _parquet(root: Path, path: str, rows: list[dict], types: dict) -> None:
    """rows as one parquet file at DIR/<path>, with the column types of the Hub copy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = root / path
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({c: pa.array([r[c] for r in rows], type=t) for c, t in types.items()}), out)


def _beir(root, hf_id, rng, n_docs=24, n_queries=10):
    docs = [{"_id": f"doc{i}", "title": f"title {i % 5}", "text": _sentence(rng, i)} for i in range(n_docs)]
    queries = [{"_id": f"q{i}", "text": " ".join(docs[i]["text"].split()[:4])} for i in range(n_queries)]
    qrels = [{"query-id": f"q{i}", "corpus-id": f"doc{i}", "score": 1} for i in range(n_queries)]
    qrels.append({"query-id": "q0", "corpus-id": "doc9", "score": 0})  # judged non-relevant
    _write(root, hf_id, "corpus", "corpus", docs)
    _write(root, hf_id, "queries", "queries", queries)
    _write(root, hf_id, "default", "train", qrels)


def _pairs(rng, n=14):
    out = []
    for i in range(n):
        pos = _sentence(rng, i, 10)
        out.append((" ".join(pos.split()[:4]) + "?", pos))
    return out


def _labelled(rng, labels, n_per_label=4):
    rows = []
    for j, lab in enumerate(labels):
        for i in range(n_per_label):
            rows.append({"text": _sentence(rng, j), "label": j, "label_text": lab})
    return rows


def _sts(rng, n=14):
    rows = []
    for i in range(n):
        a = _sentence(rng, i)
        b = " ".join(a.split()[:6]) + " " + _sentence(rng, i + 2, 5) if i % 3 else _sentence(rng, i + 1)
        rows.append({"sentence1": a, "sentence2": b, "score": 4.6 if i % 3 else 1.2})
    return rows


def _sts_test_sets(root: Path, sts12: list[dict], stsb: list[dict], rng: random.Random) -> None:
    """MTEB's STS12-STS16 and STSBenchmark test sets (test.jsonl.gz: sentence1, sentence2, score 0-5),
    two unrelated pairs each, plus one planted reuse per filter: STS14's test holds STS Benchmark
    train pair 1 (case and spacing changed; its headlines/deft/images pairs are SemEval 2013-16 test
    pairs), STSBenchmark's test holds STS12 train pair 1 (its '2012train' MSRpar/MSRvid pairs)."""
    def reuse(r):
        return {"sentence1": "  " + r["sentence1"].upper(), "sentence2": r["sentence2"] + " ", "score": r["score"]}

    for hf_id in ("mteb/sts12-sts", "mteb/sts13-sts", "mteb/sts14-sts", "mteb/sts15-sts", "mteb/sts16-sts",
                  "mteb/stsbenchmark-sts"):
        rows = [{"sentence1": "quasar redshift survey galaxy " + str(rng.randrange(10**6)),
                 "sentence2": "telescope spectrum nebula orbit " + str(rng.randrange(10**6)), "score": float(i)}
                for i in (1, 4)]
        rows += {"mteb/sts14-sts": [reuse(stsb[1])], "mteb/stsbenchmark-sts": [reuse(sts12[1])]}.get(hf_id, [])
        _write(root, hf_id, None, "test", rows, name="test.jsonl.gz")


def write_sources(root: str | Path, seed: int = 0) -> Path:
    root, rng = Path(root), random.Random(seed)
    for hf_id in ("mteb/msmarco", "mteb/hotpotqa", "mteb/fever", "mteb/fiqa"):
        _beir(root, hf_id, rng)
    _write(root, "sentence-transformers/natural-questions", "pair", "train",
           [{"query": q, "answer": p} for q, p in _pairs(rng)])
    _write(root, "rajpurkar/squad", "plain_text", "train",
           [{"id": f"s{i}", "title": "T", "context": p, "question": q,
             "answers": {"text": [p.split()[0]], "answer_start": [0]}} for i, (q, p) in enumerate(_pairs(rng))])
    _write(root, "sentence-transformers/stackexchange-duplicates", "post-post-pair", "train",
           [{"post1": q + " " + p.split()[-2], "post2": p} for q, p in _pairs(rng)])
    _write(root, "sentence-transformers/all-nli", "pair", "train",
           [{"anchor": q, "positive": p} for q, p in _pairs(rng)])
    _write(root, "sentence-transformers/paq", "pair", "train", [{"query": q, "answer": p} for q, p in _pairs(rng)])

    sts12 = _sts(rng)
    _write(root, "mteb/sts12-sts", None, "train", sts12, name="train.jsonl.gz")
    # raw file en/train.jsonl; score = 5 - SemEval's Overall: 1-4, 4 = most similar (3.6 -> 4.33 of 5 kept)
    _write(root, "mteb/sts22-crosslingual-sts", "en", "train",
           [{"id": f"{i}_{i + 100}", "score": 3.6 if r["score"] > 4 else 3.2, "sentence1": r["sentence1"],
             "sentence2": r["sentence2"]} for i, r in enumerate(_sts(rng))])
    stsb = _sts(rng)
    _write(root, "mteb/stsbenchmark-sts", None, "train",
           [{"split": "train", "genre": "main-news", "dataset": "MSRvid", "year": "2012", "sid": i, **r}
            for i, r in enumerate(stsb)])
    _sts_test_sets(root, sts12, stsb, random.Random(seed + 1))

    import pyarrow as pa

    cf_types = {"text": pa.string(), "label": pa.int32(), "label_text": pa.string()}
    cf = _labelled(rng, ["not-counterfactual", "counterfactual"])
    _parquet(root, "mteb/amazon_counterfactual/en/train-00000-of-00001.parquet", cf, cf_types)
    _parquet(root, "mteb/amazon_counterfactual/en/test-00000-of-00001.parquet",  # one exact copy of a training text
             [{"text": cf[0]["text"], "label": 0, "label_text": "not-counterfactual"},
              {"text": "completely unrelated words here", "label": 1, "label_text": "counterfactual"}], cf_types)
    _write(root, "mteb/amazon_polarity", None, "train",
           [{"label": r["label"], "title": "t", "text": r["text"], "label_text": r["label_text"]}
            for r in _labelled(rng, ["negative", "positive"])])
    _write(root, "mteb/imdb", None, "train", _labelled(rng, ["negative", "positive"]))  # MTEB scripts/data/imdb
    _write(root, "mteb/toxic_conversations_50k", None, "train", _labelled(rng, ["not toxic", "toxic"]))
    _write(root, "mteb/tweet_sentiment_extraction", None, "train",
           [{"id": str(i), **r} for i, r in enumerate(_labelled(rng, ["negative", "neutral", "positive"]))])
    emo = _labelled(rng, ["sadness", "joy", "love", "anger", "fear", "surprise"], 3)
    _write(root, "mteb/emotion", None, "train", emo)
    _write(root, "mteb/emotion", None, "test", [dict(emo[4])])
    int_types = {"text": pa.string(), "label": pa.int64()}
    _parquet(root, "mteb/AmazonReviewsClassification/en/train-00000-of-00001.parquet",
             _labelled(rng, ["0", "1", "2", "3", "4"], 3), int_types)
    _parquet(root, "mteb/MTOPIntentClassification/en/train-00000-of-00001.parquet",
             _labelled(rng, [f"IN:INTENT_{j}" for j in range(9)], 2), int_types)
    _write(root, "mteb/banking77", None, "train", _labelled(rng, [f"intent_{j}" for j in range(10)], 2))

    cats = ["cs.CL cs.LG", "cs.CL", "hep-ph", "math.CO math.PR", "cs.LG stat.ML", "q-bio.NC", "astro-ph.GA",
            "cs.CV cs.LG", "hep-th", "math.PR"]
    arxiv = [{"id": f"2401.{i:05d}", "title": _sentence(rng, i, 6), "abstract": _sentence(rng, i, 12),
              "categories": c} for i, c in enumerate(cats * 2)]  # MTEB scripts/data/arxiv/script_raw.py
    _write(root, "mteb/raw_arxiv", None, "train", arxiv, name="train_0.jsonl.gz")
    for kind, text in (("p2p", lambda r: r["title"] + " " + r["abstract"]), ("s2s", lambda r: r["title"])):
        # MTEB's arXiv clustering rows: lists of texts and labels; one raw paper is in it (dropped)
        _write(root, f"mteb/arxiv-clustering-{kind}", None, "test",
               [{"sentences": [text(arxiv[0]), "quasar redshift survey galaxy"], "labels": ["cs", "astro-ph"]}],
               name="test.jsonl.gz")
    for src in ("biorxiv", "medrxiv"):
        pool = [{"id": f"10.1101/{i}", "title": _sentence(rng, i, 6), "abstract": _sentence(rng, i, 12),
                 "category": ["neuroscience", "genomics", "microbiology", "epidemiology"][i % 4]} for i in range(16)]
        _write(root, f"mteb/raw_{src}", None, "train", pool, name="train_0.jsonl.gz")
        for kind, text in (("p2p", lambda r: r["title"] + " " + r["abstract"]), ("s2s", lambda r: r["title"])):
            # MTEB's script draws its test set from the same pool (here: 4 of the 16 papers)
            _write(root, f"mteb/{src}-clustering-{kind}", None, "test",
                   [{"sentences": text(r), "labels": r["category"]} for r in pool[:4]], name="test.jsonl.gz")
    _write(root, "sentence-transformers/reddit-title-body", None, "train",
           [{"title": _sentence(rng, i, 6), "body": _sentence(rng, i, 12), "subreddit": f"r{i % 9}"}
            for i in range(18)])
    _write(root, "SetFit/20_newsgroups", None, "train",  # label_text = scikit-learn target_names
           _labelled(rng, ["alt.atheism", "comp.graphics", "rec.autos", "sci.med", "sci.space", "talk.politics.guns",
                           "soc.religion.christian", "misc.forsale"], 2))
    return root
