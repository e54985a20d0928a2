"""``python -m nemo_nvembed.convert_data {classification,clustering,sts}``: non-retrieval data -> training JSONL.

Library: :mod:`nemo_nvembed.converters.nonretrieval` (the construction rules are in its docstring).
"""
from __future__ import annotations

import argparse

from nemo_nvembed.checks.errors import exit_on_user_error
from nemo_nvembed.paths import CONF
from nemo_nvembed.converters import nonretrieval


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--input", required=True, help="data file: .jsonl, .csv, .tsv or .parquet")
    common.add_argument("--task", required=True, help="task name in the registry, written on every line")
    common.add_argument("--out", required=True, help="training JSONL to write")
    common.add_argument("--tasks", default=str(CONF / "tasks.yaml"), help="task registry (default: conf/tasks.yaml)")
    common.add_argument("--num-negatives", type=int, default=7)
    common.add_argument("--exclude", action="append", default=[],
                        help="evaluation file whose content must not be trained on (repeatable)")
    common.add_argument("--exclude-col", nargs="+", default=None, help="text column(s) of the --exclude file(s)")
    common.add_argument("--dedup-threshold", type=float, default=0.9,
                        help="symmetric relative BM25 score at or above which a row is a near-duplicate")
    common.add_argument("--seed", type=int, default=0)

    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.convert_data", description=nonretrieval.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    for kind, what in (("classification", "the label"), ("clustering", "the category")):
        s = sub.add_parser(kind, parents=[common], help=f"q+ = text, d+ = {what}, negatives = other labels")
        s.add_argument("--text-col", required=True, help="text column" + (" (title or abstract)" if kind == "clustering" else ""))
        s.add_argument("--label-col", required=True, help=f"column holding {what}")
        s.add_argument("--max-per-label", type=int, default=None, help="cap of examples per label (stratified)")
    s = sub.add_parser("sts", parents=[common], help="pairs scored >= min-score, both directions, BM25 negatives")
    s.add_argument("--text1-col", required=True)
    s.add_argument("--text2-col", required=True)
    s.add_argument("--score-col", required=True)
    s.add_argument("--min-score", type=float, default=4.0, help="a pair is positive at this score or above")
    s.add_argument("--max-neg-relevance", type=float, default=2.5,
                   help="texts paired with the query above this score are never its negatives")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if args.kind == "sts":
        by_kind = dict(text1_col=args.text1_col, text2_col=args.text2_col, score_col=args.score_col,
                       min_score=args.min_score, max_neg_relevance=args.max_neg_relevance)
    else:
        by_kind = dict(text_col=args.text_col, label_col=args.label_col, max_per_label=args.max_per_label)
    return nonretrieval.convert(args.kind, args.input, args.task, args.out, args.tasks, args.num_negatives, args.seed,
                                args.exclude, args.exclude_col, args.dedup_threshold, **by_kind)


if __name__ == "__main__":
    main()
