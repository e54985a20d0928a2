"""Paired comparison of two retrieval runs on one BEIR split.

``python -m nemo_nvembed.compare_runs --beir DIR A.run B.run [--measure nDCG@10]`` reads the qrels of
``DIR`` and two TREC run files (``python -m nemo_nvembed.evaluate ... --save-run X.run``), computes the
measure per query for both and prints one JSON object: both means, B - A, its bootstrap 95% confidence
interval over queries, the paired t-test's p and how many queries B wins, ties and loses. A difference
whose interval contains 0 is not resolved by this split. ``--group REGEX`` adds the same per group of
queries (the regex's first capture group in each query id; e.g. ``--group '\.(\w+)$'`` for the man-page
held-out's sections), under ``groups``: where a difference comes from.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from nemo_nvembed.checks import path_checks as checks
from nemo_nvembed.checks.errors import UserError, exit_on_user_error
from nemo_nvembed.data.beir_folder import load_beir


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.compare_runs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beir", required=True, help="folder with qrels/<split>.tsv (and corpus.jsonl, queries.jsonl)")
    p.add_argument("--split", default="test")
    p.add_argument("--measure", default="nDCG@10", help="an ir_measures measure (nDCG@10, R@100, RR@10, ...)")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--group", metavar="REGEX", help="also compare within groups of query ids: the regex's first "
                   "capture group (or whole match) in each id names its group")
    p.add_argument("run_a", help="TREC run file A")
    p.add_argument("run_b", help="TREC run file B")
    args = p.parse_args(argv)
    import ir_measures

    from nemo_nvembed.eval.paired import paired_by_group, paired_comparison
    from nemo_nvembed.eval.retrieval_metrics import read_trec_run

    checks.positive("--resamples", args.resamples)
    if args.group is not None:
        try:
            re.compile(args.group)
        except re.error as e:
            raise UserError(f"--group {args.group!r} is not a regular expression ({e})") from None
    try:
        ir_measures.parse_measure(args.measure)
    except (ValueError, NameError, SyntaxError) as e:
        raise UserError(f"--measure {args.measure!r} is not an ir_measures measure ({e})") from None
    runs = [read_trec_run(checks.input_file(r, what)) for r, what in ((args.run_a, "run A"), (args.run_b, "run B"))]
    data = load_beir(args.beir, args.split)
    for path, run in zip((args.run_a, args.run_b), runs):
        unknown = sorted(set(run) - set(data.qrels))
        if unknown:
            raise UserError(f"{path}: {len(unknown)} queries not in {args.beir}'s qrels (first: {unknown[:3]}): "
                            f"a run of another split?")
    result = paired_comparison(data.qrels, runs[0], runs[1], args.measure, args.resamples)
    if args.group is not None:
        result["groups"] = paired_by_group(data.qrels, runs[0], runs[1], args.group, args.measure, args.resamples)
    print(json.dumps({"run_a": args.run_a, "run_b": args.run_b, "beir": args.beir, **result}))


if __name__ == "__main__":
    sys.exit(main())
