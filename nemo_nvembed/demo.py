"""``make demo`` = ``python -m nemo_nvembed.demo``: NV-Embed's two-stage recipe end to end on a CPU.

Library: :mod:`nemo_nvembed.recipes.demo_pipeline` (the steps); configuration: ``conf/demo.yaml``.
"""
from __future__ import annotations

import argparse
import os
import sys

from nemo_nvembed.checks.errors import exit_on_user_error
from nemo_nvembed.paths import CONF
from nemo_nvembed.recipes import demo_pipeline


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.demo", description=demo_pipeline.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(CONF / "demo.yaml"))
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for both stages (e.g. trainer.max_steps=3)")
    args = p.parse_args(argv)
    return demo_pipeline.run_demo(args.config, args.overrides)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
