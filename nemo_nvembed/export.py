"""``python -m nemo_nvembed.export hf --model X.nemo --out DIR``: a .nemo as NV-Embed-v2's Hugging Face folder.

Library: :mod:`nemo_nvembed.interop.hf_export` (the layout is described there).
"""
from __future__ import annotations

import argparse
import sys

from nemo_nvembed.checks import path_checks as checks
from nemo_nvembed.checks.errors import exit_on_user_error
from nemo_nvembed.interop import hf_export


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.export", description=hf_export.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hf", help="write a Hugging Face folder in NV-Embed-v2's layout")
    h.add_argument("--model", required=True, help=".nemo file")
    h.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    h.add_argument("--tp", type=int, default=None, help="tensor-parallel size to load with (default: the number of processes)")
    h.add_argument("--dtype", choices=sorted(hf_export.DTYPES), default="fp32", help="weight dtype in the safetensors (default fp32)")
    h.add_argument("--name-or-path", default=None,
                   help="text_config._name_or_path, e.g. the Hub id the folder will have (default: the output folder)")
    args = p.parse_args(argv)
    if args.cmd == "hf":
        checks.input_file(args.model, "--model")
        checks.new_output_folder(args.out, "--out")
        if args.tp is not None:
            checks.positive("--tp", args.tp)
        hf_export.export_nemo(args.model, args.out, args.tp, args.dtype, args.name_or_path)


if __name__ == "__main__":
    sys.exit(main())
