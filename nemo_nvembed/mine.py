"""``python -m nemo_nvembed.mine``: hard negatives for a BEIR retrieval set -> training JSONL.

Library: :mod:`nemo_nvembed.converters.mining` (the selection rules are in its docstring).
"""
from __future__ import annotations

import argparse

from nemo_nvembed.checks.errors import exit_on_user_error
from nemo_nvembed.paths import CONF
from nemo_nvembed.converters import mining


@exit_on_user_error
def main(argv: list[str] | None = None) -> mining.MineSummary:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.mine", description=mining.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a .nemo file (dense teacher) or 'bm25'")
    p.add_argument("--corpus", required=True, help="BEIR corpus.jsonl: {'_id', 'title'?, 'text'}")
    p.add_argument("--queries", required=True, help="BEIR queries.jsonl: {'_id', 'text'}")
    p.add_argument("--qrels", required=True, help="BEIR qrels TSV: query-id, corpus-id, score (header optional)")
    p.add_argument("--out", required=True, help="training JSONL to write")
    p.add_argument("--task", required=True, help="task name in the registry (written on every line)")
    p.add_argument("--tasks", default=str(CONF / "tasks.yaml"), help="task registry (default: conf/tasks.yaml)")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--num-negatives", type=int, default=7)
    p.add_argument("--perc-pos", type=float, default=0.95)
    p.add_argument("--instruction", default=None,
                   help="query instruction for a dense teacher (default: the task's eval_instruction)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--tp", type=int, default=1)
    return mining.mine_to_jsonl(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    main()
