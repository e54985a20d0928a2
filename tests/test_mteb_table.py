"""Table 1 layout from per-task results (fake scores; nothing is downloaded or encoded)."""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

pytest.importorskip("mteb")

from command_errors import refused  # noqa: E402
from nemo_nvembed.data.tasks import TaskRegistry  # noqa: E402
from nemo_nvembed.eval.mteb_results import (COLUMNS, format_table, paper_tasks, read_results,  # noqa: E402
                                            run_suite, table)
from nemo_nvembed.eval.mteb import registry_name  # noqa: E402
from nemo_nvembed.paths import CONF  # noqa: E402


def test_the_56_tasks_and_their_instructions():
    tasks = paper_tasks()
    assert len(tasks) == 56
    counts = {kind: sum(1 for _, k in tasks if k == kind) for kind in COLUMNS}
    assert counts == {kind: n for kind, (_, n) in COLUMNS.items()}
    registry = TaskRegistry.from_yaml(CONF / "tasks.yaml")
    unmapped = [name for name, _ in tasks if registry_name(name, registry) is None]
    assert unmapped == [], "every paper task has a Table 7 instruction in conf/tasks.yaml"
    assert registry_name("CQADupstackRetrieval", registry) == "CQADupstack"
    assert registry_name("CQADupstackAndroidRetrieval", registry) == "CQADupstack"


def test_resumable_run_and_table_layout(tmp_path):
    tasks = paper_tasks()
    kind_score = {"Retrieval": 0.5, "Reranking": 0.6, "Clustering": 0.4, "PairClassification": 0.8,
                  "Classification": 0.7, "STS": 0.9, "Summarization": 0.3}
    kind_of = dict(tasks)
    calls = []

    def fake(name):
        calls.append(name)
        if len(calls) == 20:
            raise KeyboardInterrupt  # an interrupted run
        return kind_score[kind_of[name]] + (0.02 if name == "ArguAna" else 0.0)

    with pytest.raises(KeyboardInterrupt):
        run_suite(tasks, fake, tmp_path, progress=False)
    partial = table(read_results(tmp_path), tasks)
    assert len(partial["missing"]) == 56 - 19 and partial["row"]["Avg"] is None
    text = format_table(partial, "mine")
    assert "missing 37 of 56 tasks" in text and "| - |" in text

    done = run_suite(tasks, fake, tmp_path, progress=False)  # resumes: the 19 finished are not redone
    assert len(done) == 37 and not set(done) & set(calls[:19])
    t = table(read_results(tmp_path), tasks)
    row = t["row"]
    assert row["Retrieval"] == pytest.approx(50 + 2 / 15) and row["BEIR-15"] == row["Retrieval"]
    assert (row["Rerank"], row["Cluster"], row["PairClass"], row["Class"], row["STS"], row["Summ"]) == \
        pytest.approx((60, 40, 80, 70, 90, 30))
    expected_avg = (15 * (50 + 2 / 15) + 4 * 60 + 11 * 40 + 3 * 80 + 12 * 70 + 10 * 90 + 30) / 56
    assert row["Avg"] == pytest.approx(expected_avg)  # mean over tasks, not over categories
    lines = format_table(t, "mine").splitlines()
    assert lines[0] == ("| model | Retrieval (15) | Rerank (4) | Cluster (11) | PairClass (3) | Class (12) | STS (10) "
                        "| Summ (1) | Avg (56) |")
    assert lines[2].startswith("| mine | 50.13 | 60.00 | 40.00 | 80.00 | 70.00 | 90.00 | 30.00 |")
    assert lines[3].startswith("| NV-Embed-v1 (paper, Table 1) | 59.36 |")
    assert json.loads((tmp_path / "tasks" / "ArguAna.json").read_text())["type"] == "Retrieval"


def test_table_only_command(tmp_path, capsys):
    from nemo_nvembed import mteb_table

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "SciFact.json").write_text(json.dumps({"task": "SciFact", "type": "Retrieval",
                                                                 "main_score": 0.75}))
    t = mteb_table.main(["--out", str(tmp_path), "--table-only"])
    assert t["row"]["Retrieval"] == 75.0 and t["partial"]["Retrieval"] == "1/15"
    assert "75.00 (1/15)" in (tmp_path / "table.md").read_text()
    err = refused(capsys, mteb_table.main, ["--out", str(tmp_path), "--tasks", "SciFacts", "--table-only"])
    assert err == "--tasks: not among the 56 tasks: SciFacts"
