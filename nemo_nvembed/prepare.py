"""Build a stage's training JSONL from the NV-Embed recipe manifest (the paper's public data).

``python -m nemo_nvembed.prepare --manifest conf/data/nvembed_v1.yaml --stage 1|2 --out DIR
[--source-dir DIR] [--teacher bm25|X.nemo|hf:<sentence-transformers model>] [--only a,b]``

Reads each set of the stage with `datasets` (from the Hub, or from local copies under
``--source-dir`` through the same call), converts it (section 4.2), filters near-duplicates of
evaluation data, subsamples it to Table 6's count, mines hard negatives with the teacher and
writes ``DIR/stage<N>.jsonl`` with a per-set report. Resumable per set. Library code:
nemo_nvembed/paper_data/ (manifest, sources, build_set, teachers, run).
"""
from __future__ import annotations

import argparse
import sys

from nemo_nvembed.checks.errors import exit_on_user_error
from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.paper_data.manifest import load_manifest
from nemo_nvembed.paper_data.run import format_report, prepare_stage
from nemo_nvembed.paper_data.teachers import TeacherFactory
from nemo_nvembed.paths import CONF


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default=str(CONF / "data" / "nvembed_v1.yaml"))
    p.add_argument("--stage", type=int, choices=[1, 2], required=True)
    p.add_argument("--out", required=True, help="output folder (resumable: finished sets are kept)")
    p.add_argument("--source-dir", default=None, help="local copies: DIR/<hf_id>[/<config>]/<split>.{jsonl,parquet,csv}")
    p.add_argument("--teacher", default="bm25", help="bm25 | a .nemo file | hf:<sentence-transformers model or folder>")
    p.add_argument("--teacher-query-prefix", default="", help="hf teachers: text put before queries (E5: 'query: ')")
    p.add_argument("--teacher-doc-prefix", default="", help="hf teachers: text put before documents (E5: 'passage: ')")
    p.add_argument("--teacher-batch-size", type=int, default=64)
    p.add_argument("--tasks", default=str(CONF / "tasks.yaml"), help="task registry")
    p.add_argument("--only", default=None, help="comma-separated set names of the stage to build")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    if args.no_progress:
        import datasets  # heavy (pyarrow, hub client): loaded here only to silence its bars

        datasets.disable_progress_bars()
    registry = TaskRegistry.from_yaml(args.tasks)
    manifest = load_manifest(args.manifest, registry)
    teachers = TeacherFactory(args.teacher, args.teacher_query_prefix, args.teacher_doc_prefix,
                              args.teacher_batch_size, progress=not args.no_progress)
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    report = prepare_stage(manifest, args.stage, args.out, registry, teachers, args.source_dir, only,
                           progress=not args.no_progress)
    print(format_report(report), end="")
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
