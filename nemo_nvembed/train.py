"""``python -m nemo_nvembed.train --config-name stage1 [overrides]``: one NV-Embed training stage.

Hydra composes ``conf/<config-name>.yaml`` with the overrides; :func:`nemo_nvembed.training.stage.run`
validates it against the stage schema and runs the stage.

``python -m nemo_nvembed.train --nproc-per-node N --config-name stage1 [overrides]`` launches N local
workers (torchrun's launcher) after checking the config and layout for N processes in this one
process, so a refusal is one ``error:`` line, not N tracebacks and torchrun's failure banner; its exit
status is the first failed worker's (2: user error, 3: runtime stop, 75: a hung rank).

Every stop is one line: a user error prints ``error: ...`` once (rank 0) and exits 2; a runtime stop
(non-finite loss, too many skipped steps, a failed .nemo write) prints ``error: ...`` naming the step
and what to do, and exits 3, its traceback in the run folder's ``stop_rank<r>.log``.

Relaunching the same command resumes from the newest verified checkpoint; once the stage's ``.nemo`` exists,
relaunching is a no-op.
"""
from __future__ import annotations

import functools
import sys

NPROC_FLAGS = ("--nproc-per-node", "--nproc_per_node")


def run(cfg):
    """Hydra's task function (it lives here so Hydra names the job ``train`` and finds ``../conf``)."""
    from nemo_nvembed.training import stage

    return stage.run(cfg)


def one_line_stops(task):
    """A UserError -> ``error: <message>`` on rank 0, exit 2 on every rank; a StageStopped -> the same,
    exit 3 (1 for an I/O error that may pass)."""

    @functools.wraps(task)
    def wrapped(cfg):
        from nemo_nvembed.checks.errors import UserError
        from nemo_nvembed.parallel import distributed
        from nemo_nvembed.training.stage import StageStopped

        try:
            return task(cfg)
        except UserError as e:
            distributed.report_once(f"error: {e}", 2)
            raise SystemExit(2) from None
        except StageStopped as e:
            distributed.report_once(f"error: {e}", e.status)
            raise SystemExit(e.status) from None

    return wrapped


def _pop_nproc(argv: list[str]) -> tuple[int | None, list[str]]:
    for i, a in enumerate(argv):
        for flag in NPROC_FLAGS:
            if a == flag and i + 1 < len(argv):
                return _count(argv[i + 1]), argv[:i] + argv[i + 2:]
            if a.startswith(flag + "="):
                return _count(a.split("=", 1)[1]), argv[:i] + argv[i + 1:]
    return None, argv


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        print(f"error: --nproc-per-node: {text!r} is not a number of processes >= 1", file=sys.stderr)
        raise SystemExit(2)
    return int(text)


def main() -> None:
    nproc, rest = _pop_nproc(sys.argv[1:])
    if nproc is None:  # a worker: jemalloc as its host allocator when installed (training/host_allocator.py)
        from nemo_nvembed.training.host_allocator import reexec_with_jemalloc

        reexec_with_jemalloc()
    from nemo.core.config import hydra_runner

    if nproc is None:
        hydra_runner(config_path="../conf", config_name="stage1")(one_line_stops(run))()
        return
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.training import stage

    # Validate here, for nproc processes, before any worker starts; then the workers run the stage.
    sys.argv = [sys.argv[0], *rest]
    hydra_runner(config_path="../conf", config_name="stage1")(
        one_line_stops(lambda cfg: stage.check(cfg, world_size=nproc)))()
    raise SystemExit(distributed.launch_local_workers(nproc, "nemo_nvembed.train", rest))


if __name__ == "__main__":
    main()
