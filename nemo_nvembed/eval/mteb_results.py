"""The paper's evaluation protocol: MTEB's 56 English tasks, scored into Table 1's layout.

Tasks: mteb's ``MTEB(eng, v1)`` benchmark (the 56 tasks of NV-Embed Table 1; CQADupStack is one
task, the mean of its 12 forums). Instructions: conf/tasks.yaml's ``eval_instruction`` (Table 7),
applied by nemo_nvembed/mteb_encoder.py. Table 1 reports, per task category, the mean of the main
scores (x 100) and the mean over all 56 tasks; the retrieval mean is BEIR-15.

`run_suite` evaluates the tasks one at a time and writes ``OUT/tasks/<task>.json`` after each, so
an interrupted run resumes at the first task without a result. `table` then aggregates whatever
is there: a category with missing tasks is marked partial and the overall average is left out
until all 56 are in.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

BENCHMARK = "MTEB(eng, v1)"
# mteb task type -> Table 1 column, in the paper's column order, with the number of tasks
COLUMNS = {"Retrieval": ("Retrieval", 15), "Reranking": ("Rerank", 4), "Clustering": ("Cluster", 11),
           "PairClassification": ("PairClass", 3), "Classification": ("Class", 12), "STS": ("STS", 10),
           "Summarization": ("Summ", 1)}
# NV-Embed-v1 as published (Table 1), for comparison in the written table
PAPER_NV_EMBED_V1 = {"Retrieval": 59.36, "Rerank": 60.59, "Cluster": 52.80, "PairClass": 86.91, "Class": 87.35,
                     "STS": 82.84, "Summ": 31.20, "Avg": 69.32}


def paper_tasks() -> list[tuple[str, str]]:
    """(task name, mteb task type) of the 56 tasks, from mteb's benchmark definition (no download)."""
    import mteb  # heavy (seconds) and optional: `table` and `format_table` work without it

    return [(t.metadata.name, t.metadata.type) for t in mteb.get_benchmark(BENCHMARK).tasks]


def run_suite(tasks: Iterable[tuple[str, str]], evaluate_one: Callable[[str], float], out: str | Path,
              progress: bool = True, write: bool = True) -> list[str]:
    """Evaluate every task without a result in OUT/tasks; -> the names evaluated by this call.

    `evaluate_one(name)` returns the task's main score (mteb's scale, 0-1). The tasks to do are
    decided once, before the first evaluation, so that every tensor-parallel rank runs the same
    list; only the rank with `write` writes results."""
    folder = Path(out) / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(name, kind) for name, kind in tasks if not (folder / f"{name}.json").exists()]
    done = []
    for name, kind in tqdm(todo, desc="MTEB tasks", unit="task", disable=not progress):
        path = folder / f"{name}.json"
        score = float(evaluate_one(name))
        if not write:
            done.append(name)
            continue
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"task": name, "type": kind, "main_score": score}))
        os.replace(tmp, path)
        done.append(name)
    return done


def read_results(out: str | Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((Path(out) / "tasks").glob("*.json"))}


def table(results: dict[str, dict], tasks: list[tuple[str, str]]) -> dict:
    """Table 1 row: per-column means (x 100), Avg over all tasks, BEIR-15; partial columns marked."""
    row, partial, missing = {}, {}, [name for name, _ in tasks if name not in results]
    all_scores = []
    for kind, (col, n) in COLUMNS.items():
        names = [name for name, k in tasks if k == kind]
        scores = [100 * results[x]["main_score"] for x in names if x in results]
        all_scores += scores
        if scores:
            row[col] = sum(scores) / len(scores)
        if len(scores) < len(names):
            partial[col] = f"{len(scores)}/{len(names)}"
    row["Avg"] = sum(all_scores) / len(all_scores) if all_scores and not missing else None
    row["BEIR-15"] = row.get("Retrieval") if "Retrieval" not in partial else None
    return {"row": row, "partial": partial, "missing": missing, "tasks": len(tasks), "evaluated": len(all_scores)}


def format_table(t: dict, name: str) -> str:
    """Markdown table in Table 1's column order, with the paper's NV-Embed-v1 row below ours."""
    cols = [c for c, _ in COLUMNS.values()] + ["Avg"]
    head = "| model | " + " | ".join(f"{c} ({COLUMNS_N[c]})" for c in cols) + " |"
    sep = "|---" * (len(cols) + 1) + "|"

    def cell(c):
        v = t["row"].get(c)
        if v is None:
            return "-"
        return f"{v:.2f}" + (f" ({t['partial'][c]})" if c in t["partial"] else "")

    ours = f"| {name} | " + " | ".join(cell(c) for c in cols) + " |"
    paper = "| NV-Embed-v1 (paper, Table 1) | " + " | ".join(f"{PAPER_NV_EMBED_V1[c]:.2f}" for c in cols) + " |"
    lines = [head, sep, ours, paper, ""]
    beir = t["row"].get("BEIR-15")
    lines.append(f"BEIR-15 (retrieval mean): {beir:.2f}" if beir is not None else
                 f"BEIR-15: incomplete ({t['partial'].get('Retrieval', '0/15')} retrieval tasks)")
    if t["missing"]:
        lines.append(f"missing {len(t['missing'])} of {t['tasks']} tasks: {', '.join(t['missing'])}")
    return "\n".join(lines) + "\n"


COLUMNS_N = {**{c: n for c, n in COLUMNS.values()}, "Avg": 56}
