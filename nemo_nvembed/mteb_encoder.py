"""``python -m nemo_nvembed.mteb_encoder --model X.nemo --tasks T1,T2``: MTEB tasks with NV-Embed's instructions.

Library: :mod:`nemo_nvembed.eval.mteb` (the encoder and how instructions are applied).
"""
from __future__ import annotations

import argparse
import sys

from nemo_nvembed.checks.errors import exit_on_user_error
from nemo_nvembed.paths import CONF


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from nemo_nvembed.eval import mteb

    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.mteb_encoder", description=mteb.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".nemo file")
    p.add_argument("--tasks", required=True, help="comma-separated MTEB task names, e.g. SciFact,Banking77Classification")
    p.add_argument("--languages", default=None, help="comma-separated ISO 639-3 codes to keep, e.g. eng (default: all)")
    p.add_argument("--output-folder", default="mteb_results", help="where result JSON files go (default: mteb_results)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size (default: the number of processes)")
    p.add_argument("--tasks-yaml", default=str(CONF / "tasks.yaml"), help="task registry with eval_instruction per task")
    mteb.evaluate(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
