"""The paper's evaluation: MTEB's 56 English tasks with Table 7 instructions -> Table 1's layout.

``python -m nemo_nvembed.mteb_table --model X.nemo --out DIR [--tasks T1,T2] [--batch-size N]
[--precision bf16] [--tp N]`` evaluates each task of ``MTEB(eng, v1)`` (mteb downloads its data),
writes ``DIR/tasks/<task>.json`` after each (a rerun resumes at the first task without one),
then ``DIR/table.md`` and ``DIR/table.json``: per-category means, the 56-task average and
BEIR-15, beside the paper's NV-Embed-v1 row. ``--table-only`` rewrites the table from the results
present. Library: nemo_nvembed/eval/mteb_results.py; encoder: nemo_nvembed/mteb_encoder.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nemo_nvembed.checks.errors import UserError, exit_on_user_error
from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.eval.mteb_results import format_table, paper_tasks, read_results, run_suite, table
from nemo_nvembed.paths import CONF


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.mteb_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=".nemo file (not needed with --table-only)")
    p.add_argument("--out", required=True, help="results folder (resumable)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the 56 task names")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--tp", type=int, default=None)
    p.add_argument("--tasks-yaml", default=str(CONF / "tasks.yaml"))
    p.add_argument("--table-only", action="store_true", help="only aggregate the results already in --out")
    args = p.parse_args(argv)

    tasks = paper_tasks()
    if args.tasks:
        wanted = [x.strip() for x in args.tasks.split(",") if x.strip()]
        unknown = sorted(set(wanted) - {n for n, _ in tasks})
        if unknown:
            raise UserError(f"--tasks: not among the 56 tasks: {', '.join(unknown)}")
        selected = [t for t in tasks if t[0] in wanted]
    else:
        selected = tasks
    name = Path(args.model).stem if args.model else "model"
    rank0 = True
    if not args.table_only:
        if not args.model:
            raise UserError("--model is required unless --table-only")
        # the model side (torch, megatron, mteb's evaluators): not loaded for --table-only
        import mteb

        from nemo_nvembed.models.network import NVEmbedNetwork
        from nemo_nvembed.eval.mteb import NVEmbedMTEBEncoder, _revision, run
        from nemo_nvembed.parallel import distributed

        model = NVEmbedNetwork.load(args.model, tp=args.tp or distributed.read_env().world_size)
        rank0 = distributed.is_global_rank_zero()
        encoder = NVEmbedMTEBEncoder(model, registry=TaskRegistry.from_yaml(args.tasks_yaml),
                                     name=f"nemo_nvembed/{name}", revision=_revision(args.model),
                                     precision=args.precision, batch_size=args.batch_size, progress=rank0)
        bench = {t.metadata.name: t for t in mteb.get_benchmark("MTEB(eng, v1)").tasks}

        def evaluate_one(task_name: str) -> float:
            scores = run(encoder, [bench[task_name]], str(Path(args.out) / "mteb"), write=rank0)
            if task_name in scores:
                return scores[task_name]
            return sum(scores.values()) / len(scores)  # an aggregate task reported by its parts: their mean

        run_suite(selected, evaluate_one, args.out, progress=rank0, write=rank0)
    if not rank0:
        return {}
    t = table(read_results(args.out), tasks)
    Path(args.out, "table.json").write_text(json.dumps(t, indent=2))
    text = format_table(t, name)
    Path(args.out, "table.md").write_text(text)
    print(text, end="")
    return t


if __name__ == "__main__":
    sys.exit(main() and 0)
