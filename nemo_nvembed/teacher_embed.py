"""``python -m nemo_nvembed.teacher_embed``: a teacher's embeddings of every training text, for ``train.distill.embeddings``.

Library: :mod:`nemo_nvembed.converters.teacher`.
"""
from __future__ import annotations

import argparse
import json

from nemo_nvembed.checks.errors import exit_on_user_error
from nemo_nvembed.converters import teacher


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.teacher_embed", description=teacher.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", help="training JSONL file(s): every stage the file serves")
    p.add_argument("--out", required=True, help="the file to write (train.distill.embeddings)")
    p.add_argument("--model", default=None,
                   help="a sentence-transformers folder (default: the offline all-MiniLM-L6-v2 package)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    summary = teacher.build_teacher_embeddings(args.data, args.out, args.model, args.batch_size, progress=True)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
