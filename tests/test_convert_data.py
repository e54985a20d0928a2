"""Classification, clustering and STS data -> training JSONL (section 4.2), on standard-library
docstrings written as CSV / parquet / JSONL in tmp (CPU, a few seconds)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from command_errors import refused
from conftest import REPO
from nemo_nvembed import convert_data as cd
from nemo_nvembed.data.neardup import near_duplicates
from nemo_nvembed.converters.nonretrieval import text_id
from nemo_nvembed.data.bm25 import Bm25, text_key
from nemo_nvembed.data.jsonl import load_examples
from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.recipes.demo_corpus.build import DemoDataConfig
from nemo_nvembed.recipes.demo_corpus.stdlib_docs import collect_module, dedupe

MODULES = ["json", "re", "pathlib", "collections", "itertools", "functools", "os.path", "shutil", "zipfile",
           "tarfile", "datetime", "decimal", "statistics", "csv", "logging", "argparse", "textwrap", "string",
           "hashlib", "threading", "socket", "ast", "inspect", "unittest"]


@pytest.fixture(scope="module")
def registry():
    return TaskRegistry.from_yaml(REPO / "conf" / "tasks.yaml")


@pytest.fixture(scope="module")
def items():
    cfg = DemoDataConfig()
    out, _ = dedupe([i for m in MODULES for i in collect_module(m, cfg.min_summary_words, cfg.max_chars)])
    return out


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_classification_csv(items, tmp_path, registry, capsys):
    data = [[i.summary, i.module] for i in items]
    data.append(list(data[0]))  # an exact duplicate row
    data += [["Ambiguous text given two labels.", "json"], ["Ambiguous text given two labels.", "re"]]
    src = write_csv(tmp_path / "cls.csv", ["sentence", "module"], data)
    out = tmp_path / "cls.jsonl"
    res = cd.main(["classification", "--input", str(src), "--text-col", "sentence", "--label-col", "module",
                   "--task", "PyDocClassification", "--out", str(out), "--max-per-label", "6"])
    stdout = capsys.readouterr().out
    assert "dropped: duplicate text with the same label: 1" in stdout
    assert "dropped: text given different labels (all its rows dropped): 2" in stdout
    exs = load_examples(out, registry, 7).examples
    assert len(exs) == res["examples"]
    labels = {m for _, m in data}
    per_label = Counter(e.pos for e in exs)
    assert set(per_label) <= labels and max(per_label.values()) == 6  # stratified cap
    for label, (before, kept) in res["labels"].items():
        assert kept == min(before, 6) == per_label[label]
    for e in exs:
        assert e.pos not in e.neg and len(set(e.neg)) == 7 and set(e.neg) <= labels
        assert e.pos_id == "label:" + e.pos and e.neg_ids == tuple("label:" + n for n in e.neg)
    # Seeded: the same command gives the same file.
    out2 = tmp_path / "cls2.jsonl"
    cd.main(["classification", "--input", str(src), "--text-col", "sentence", "--label-col", "module",
             "--task", "PyDocClassification", "--out", str(out2), "--max-per-label", "6"])
    assert out.read_bytes() == out2.read_bytes()


def test_clustering_parquet(items, tmp_path, registry):
    import pyarrow as pa
    import pyarrow.parquet as pq

    titled = [i for i in items if i.kind in ("class", "function")]
    src = tmp_path / "clu.parquet"
    pq.write_table(pa.table({"title": [i.summary for i in titled], "category": [i.area for i in titled]}), src)
    out = tmp_path / "clu.jsonl"
    res = cd.main(["clustering", "--input", str(src), "--text-col", "title", "--label-col", "category",
                   "--task", "PyDocClustering", "--out", str(out), "--num-negatives", "5"])
    exs = load_examples(out, registry, 5).examples
    areas = {i.area for i in titled}
    assert len(exs) == res["examples"] == len({text_key(i.summary) for i in titled})
    assert all(e.pos in areas and e.pos not in e.neg and set(e.neg) <= areas for e in exs)


def sts_pairs(items) -> list[dict]:
    """Summary vs the body's first sentence of the same function (5.0), summaries of neighbours
    in the same module (3.0: related, never a negative) and of far-apart functions (0.5)."""
    bodies = [i for i in items if len(i.body.split()) >= 12][:60]
    rows = []
    for k, i in enumerate(bodies):
        first = " ".join(i.body.split()[:25])
        rows.append({"s1": i.summary, "s2": first, "score": 5.0})
        j = bodies[(k + 1) % len(bodies)]
        rows.append({"s1": i.summary, "s2": j.summary, "score": 3.0 if j.module == i.module else 0.5})
    return rows


def test_sts_jsonl(items, tmp_path, registry, capsys):
    rows = sts_pairs(items)
    src = write_jsonl(tmp_path / "sts.jsonl", rows)
    out = tmp_path / "sts_train.jsonl"
    cd.main(["sts", "--input", str(src), "--text1-col", "s1", "--text2-col", "s2", "--score-col", "score",
             "--task", "STS", "--out", str(out), "--num-negatives", "4"])
    written = rows_of(out)
    exs = load_examples(out, registry, 4, allow_negative_resampling=True).examples
    assert len(exs) == len(written)
    positives = {(r["s1"], r["s2"]) for r in rows if r["score"] >= 4}
    # Both directions of every positive pair that kept a negative.
    assert {(r["query"], r["pos"]) for r in written} <= positives | {(b, a) for a, b in positives}
    assert sum((b, a) in {(r["query"], r["pos"]) for r in written} for a, b in positives) > 0.8 * len(positives)
    related = {}
    for r in rows:
        if r["score"] > 2.5:
            related.setdefault(r["s1"], set()).add(r["s2"])
            related.setdefault(r["s2"], set()).add(r["s1"])
    pool = [t for r in rows for t in (r["s1"], r["s2"])]
    index = Bm25(list(dict.fromkeys(pool)))
    uniq = list(dict.fromkeys(pool))
    for r in written:
        scores = index.scores(r["query"])
        rank = sorted(range(len(uniq)), key=lambda j: (-scores[j], j))
        assert r["pos_id"] == text_id(r["pos"])
        for n in r["neg"]:
            assert n not in (r["query"], r["pos"]) and n not in related.get(r["query"], ())
            j = uniq.index(n)
            assert rank.index(j) >= 1 and scores[j] > 0  # rank >= 2 (1-based), some BM25 overlap
    assert "relevance > max_neg_relevance" in capsys.readouterr().out  # the 3.0 neighbours were skipped


def test_exclude_removes_planted_near_duplicate(items, tmp_path, registry, capsys):
    planted = "Compute the great-circle distance between two points on a sphere from their latitudes and longitudes."
    data = [[i.summary, i.module] for i in items] + [[planted, "statistics"]]
    near = "compute the Great Circle distance between 2 points on the sphere, from their latitudes & longitudes"
    evalf = write_jsonl(tmp_path / "eval.jsonl", [
        {"text": near}, {"text": "Satellites measure sea surface temperature anomalies."},
        {"text": "The committee approved the budget on Tuesday."}])
    src = write_csv(tmp_path / "cls.csv", ["text", "label"], data)
    out = tmp_path / "out.jsonl"
    res = cd.main(["classification", "--input", str(src), "--text-col", "text", "--label-col", "label",
                   "--task", "PyDocClassification", "--out", str(out), "--exclude", str(evalf),
                   "--exclude-col", "text", "--dedup-threshold", "0.9"])
    stdout = capsys.readouterr().out
    assert res["near_duplicates_removed"] == 1
    assert f"near-duplicate filter: 3 evaluation texts from {evalf}, threshold 0.9: removed 1 of" in stdout
    assert planted not in {e.query for e in load_examples(out, registry, 7).examples}
    assert len(rows_of(out)) == len(data) - 1


def test_near_duplicates_is_symmetric():
    train = ["Return the sum of the values in the iterable.",
             "Return the sum.",  # contained in the eval text, but the eval text has much more: not a duplicate
             "Open a file and return a stream."]
    evals = ["Return the sum of the values in the iterable!", "Return the sum of a start value plus an "
             "iterable of numbers, starting from zero, ignoring strings and other non-numeric things."]
    hits = near_duplicates(train, evals, 0.9)
    assert set(hits) == {0} and hits[0][0] == 0


def _fail(argv, capsys=None) -> str:
    p = subprocess.run([sys.executable, "-m", "nemo_nvembed.convert_data", *argv], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert p.returncode != 0
    return p.stderr


def test_clear_errors(tmp_path, capsys):
    src = write_csv(tmp_path / "d.csv", ["sentence", "label"],
                    [["a text", "x"], ["another text", "y"], ["   ", "x"], ["more", "z"]])
    base = ["--task", "PyDocClassification", "--out", str(tmp_path / "o.jsonl")]

    err = refused(capsys, cd.main, ["classification", "--input", str(src), "--text-col", "text", "--label-col", "label",
                                    *base])
    assert err.endswith("d.csv: no column 'text' in the header (columns: sentence, label)"), err
    err = refused(capsys, cd.main, ["classification", "--input", str(src), "--text-col", "sentence", "--label-col",
                                    "label", *base])
    assert err.endswith("d.csv:line 4: column 'sentence': empty text"), err
    ok = write_csv(tmp_path / "e.csv", ["sentence", "label"], [["a text", "x"], ["another", "y"], ["more", "z"]])
    one = write_csv(tmp_path / "f.csv", ["sentence", "label"], [["a text", "x"], ["another", "x"]])
    err = refused(capsys, cd.main, ["classification", "--input", str(one), "--text-col", "sentence", "--label-col",
                                    "label", *base])
    assert "1 distinct label(s) left ('x'), but each example needs 1 positive and at least 1 other label" in err, err
    err = refused(capsys, cd.main, ["classification", "--input", str(ok), "--text-col", "sentence", "--label-col",
                                    "label", "--task", "PyDocClustering", "--out", str(tmp_path / "o.jsonl")])
    assert "is of kind 'clustering'" in err, err
    bad = write_jsonl(tmp_path / "s.jsonl", [{"a": "x y", "b": "y z", "s": 4}, {"a": "x", "b": "y", "s": "high"}])
    err = _fail(["sts", "--input", str(bad), "--text1-col", "a", "--text2-col", "b", "--score-col", "s",
                 "--task", "STS", "--out", str(tmp_path / "o.jsonl")])
    assert "s.jsonl:line 2: column 's': expected a finite number, got 'high'" in err
    assert not (tmp_path / "o.jsonl").exists()
