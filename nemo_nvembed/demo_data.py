"""``python -m nemo_nvembed.demo_data --out DIR``: the demo's offline training and held-out data.

Library: :mod:`nemo_nvembed.recipes.demo_corpus.build` (what the tasks are and how they are built).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from nemo_nvembed.checks.errors import exit_on_user_error
from nemo_nvembed.recipes.demo_corpus.build import DemoDataConfig, build_and_write


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m nemo_nvembed.demo_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    for field in dataclasses.fields(DemoDataConfig):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    cfg = DemoDataConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoDataConfig)})
    return build_and_write(args.out, cfg)


if __name__ == "__main__":
    main()
