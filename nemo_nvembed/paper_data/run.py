"""Building a stage's training JSONL from the recipe manifest, one set at a time, resumably.

Layout of ``OUT``::

    OUT/sets/<name>.jsonl          the set's rows (training JSONL, nemo_nvembed/data/jsonl.py)
    OUT/sets/<name>.report.json    its report; written last, so its presence means "finished"
    OUT/stage<N>.jsonl             every finished set of the stage, concatenated in manifest order
    OUT/report.json, report.txt    the per-set reports: wanted (the manifest's Table 6 count), available
                                   (what the source gives after conversion and filters), written; rows
                                   read, filtered and why, subsampled away

A finished set is never redone (delete its report to redo it); an interrupted one restarts from
its beginning. Sets with ``enabled: false`` are reported as skipped, with their note.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.jsonl_io import write_jsonl
from nemo_nvembed.paper_data.build_set import build_set


def prepare_stage(manifest, stage: int, out: str | Path, registry, teachers, source_dir=None,
                  only: list[str] | None = None, progress: bool = True) -> dict:
    """Build OUT/stage<stage>.jsonl; -> the report (also written to OUT/report.json and report.txt)."""
    out = Path(out)
    (out / "sets").mkdir(parents=True, exist_ok=True)
    sets = list(manifest[f"stage{stage}"])
    if only:
        unknown = sorted(set(only) - {s.name for s in sets})
        if unknown:
            raise UserError(f"--only: no set named {', '.join(unknown)} in stage {stage} "
                             f"(sets: {', '.join(s.name for s in sets)})")
        sets = [s for s in sets if s.name in only]
    reports = []
    for s in tqdm(sets, desc=f"stage {stage} sets", unit="set", disable=not progress):
        done = out / "sets" / f"{s.name}.report.json"
        if not s.enabled:
            reports.append({"name": s.name, "task": s.task, "kind": s.kind, "wanted": s.samples,
                            "skipped": f"disabled: {s.note}"})
            continue
        if done.exists():
            rep = json.loads(done.read_text())
            rep["resumed"] = True
            reports.append(rep)
            continue
        t0 = time.perf_counter()
        rows, rep = build_set(s, manifest.num_negatives, manifest.mining, teachers, registry, source_dir,
                              manifest.seed, progress=progress)
        rep.seconds = round(time.perf_counter() - t0, 2)
        write_jsonl(out / "sets" / f"{s.name}.jsonl", rows)
        _write_json(done, rep.to_dict())
        reports.append(rep.to_dict())
    written = _concatenate(out, stage, [r for r in reports if "skipped" not in r])
    report = {"stage": stage, "out": str(out / f"stage{stage}.jsonl"), "examples": written, "sets": reports}
    _write_json(out / "report.json", report)
    (out / "report.txt").write_text(format_report(report))
    return report


def _concatenate(out: Path, stage: int, reports: list[dict]) -> int:
    target = out / f"stage{stage}.jsonl"
    tmp = target.with_name(target.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in reports:
            with open(out / "sets" / f"{r['name']}.jsonl", encoding="utf-8") as src:
                for line in src:
                    f.write(line)
                    n += 1
    os.replace(tmp, target)
    return n


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def format_report(report: dict) -> str:
    """One line per set: wanted (Table 6) / available / written first, then how the rows went."""
    head = (f"{'set':<24} {'wanted':>7} {'available':>9} {'written':>7} {'read':>8} {'filtered':>8} "
            f"{'subsampled':>10}  task")
    lines = [f"stage {report['stage']}: {report['examples']} examples -> {report['out']}", head, "-" * len(head)]
    short = []
    for r in report["sets"]:
        if "skipped" in r:
            lines.append(f"{r['name']:<24} {r.get('wanted', 0):>7} {'-':>9} {'-':>7}  skipped ({r['skipped'][:80]})")
            continue
        filtered = sum(r["filtered"].values())
        tag = " (resumed)" if r.get("resumed") else ""
        wanted, available = r.get("wanted", 0), r.get("available", r["converted"])  # reports of older runs lack them
        lines.append(f"{r['name']:<24} {wanted:>7} {available:>9} {r['written']:>7} {r['rows_read']:>8} "
                     f"{filtered:>8} {r['subsampled_out']:>10}  {r['task']}{tag}")
        if available < wanted:
            short.append(f"  {r['name']}: wanted {wanted}, available {available}, written {r['written']}")
        for reason, n in r["filtered"].items():
            lines.append(f"{'':<30}filtered: {reason}: {n}")
        if r["label_set_padded"]:
            lines.append(f"{'':<30}label-set examples with every other label as negatives (padded at load): "
                         f"{r['label_set_padded']}")
    if short:
        lines += ["short of the manifest's count (the source gives less than Table 6; kept what it has):", *short]
    return "\n".join(lines) + "\n"
