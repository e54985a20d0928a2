"""BEIR-style retrieval evaluation: nDCG@10 and Recall@100 with ``ir_measures`` (pytrec_eval).

``python -m nemo_nvembed.evaluate --model X.nemo --beir DIR [--instruction S]`` reads
``DIR/corpus.jsonl`` ({"_id", "title"?, "text"}), ``DIR/queries.jsonl`` ({"_id", "text"}) and
``DIR/qrels/test.tsv`` (query-id, corpus-id, score; with a header), embeds queries with the
instruction (NV-Embed's query prefix) and documents without, ranks the corpus by cosine
similarity (exact search) and prints one JSON object. ``--model`` may also be a sentence-transformers
model folder (e.g. the offline all-MiniLM-L6-v2 the demo's baseline row uses; such models take no
instruction), and ``--bm25`` in its place scores the demo's BM25 baseline. ``--save-run R.run`` keeps the ranking (TREC format) for ``python -m
nemo_nvembed.compare_runs``: a paired comparison of two models on the same queries.
``--doc-max-length N`` cuts documents at N tokens instead of the model's max_length (e.g. the length it
trained on), to see how a score depends on document length.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nemo_nvembed.checks import path_checks as checks
from nemo_nvembed.checks.errors import UserError, exit_on_user_error
from nemo_nvembed.data.beir_folder import load_beir


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help=".nemo file, or a sentence-transformers model folder")
    which.add_argument("--bm25", action="store_true", help="the BM25 baseline (bm25s; the demo's tokenisation) instead of a model")
    p.add_argument("--beir", required=True, help="folder with corpus.jsonl, queries.jsonl, qrels/test.tsv")
    p.add_argument("--instruction", default=None, help="query instruction (Table 7); none = plain queries")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--doc-max-length", type=int, default=None,
                   help="cut documents at this many tokens (default: the model's max_length); queries are not cut")
    p.add_argument("--save-run", default=None, help="write the ranking (top 100 per query) here, TREC run format")
    args = p.parse_args(argv)
    checks.positive("--batch-size", args.batch_size)
    checks.positive("--tp", args.tp)
    if args.doc_max_length is not None:
        checks.positive("--doc-max-length", args.doc_max_length)
    if args.save_run is not None:
        checks.output_file(args.save_run, "--save-run")
    data = load_beir(args.beir, args.split)  # the folder's errors before any model loads
    plain = args.bm25 or Path(args.model).is_dir()
    unused = [o for o, v in (("--instruction", args.instruction), ("--precision bf16", args.precision == "bf16")) if v]
    if plain and args.doc_max_length is not None:
        raise UserError(f"--doc-max-length applies to .nemo models; {'BM25' if args.bm25 else args.model} "
                        "reads documents whole (BM25) or at its own max_seq_length")
    if plain and unused:  # said, not dropped silently
        print(f"note: {'BM25' if args.bm25 else 'a sentence-transformers model'} takes no instruction or precision"
              f": {' and '.join(unused)} not used", file=sys.stderr)
    if args.bm25:
        from nemo_nvembed.eval.bm25_baseline import bm25_run
        from nemo_nvembed.eval.retrieval_metrics import score_run

        print(json.dumps({"model": "bm25", "beir": args.beir, **score_run(data, bm25_run(data), args.save_run, "bm25")}))
        return
    # heavy (torch, megatron): after the arguments parse, so --help and a typo answer at once
    from nemo_nvembed.eval.retrieval_metrics import score
    from nemo_nvembed.models.network import NVEmbedNetwork
    from nemo_nvembed.parallel import distributed

    if plain:  # a sentence-transformers folder
        from nemo_nvembed.eval.st_baseline import SentenceTransformerEncoder

        model, instruction = SentenceTransformerEncoder(args.model), None
    else:
        checks.input_file(args.model, "--model")
        model, instruction = NVEmbedNetwork.load(args.model, tp=args.tp), args.instruction
    result = score(model, data, instruction, args.batch_size, args.precision, progress=True,
                   run_path=args.save_run if distributed.is_global_rank_zero() else None, run_tag=Path(args.model).name,
                   doc_max_length=args.doc_max_length)
    if distributed.is_global_rank_zero():
        print(json.dumps({"model": args.model, "beir": args.beir, **result}))


if __name__ == "__main__":
    sys.exit(main())
