"""The host allocator of a training worker: jemalloc when the system has it, glibc's malloc otherwise.

Why: on a CPU run the activations live in the host heap, and packed chunks
(``train.chunking.packed``) hold a different number of tokens every step. glibc's heap then grows
step after step: a ``make demo-long`` rank went 4.7 -> 7.5 GB in 30 steps and was OOM-killed at
11.1 GB on a 24 GB machine. On jemalloc the same 30 steps plateau at ~4.9 GB, and a whole demo-long's
450 stay at 2.2-3.2 GB per rank at step end (table in :mod:`nemo_nvembed.training.host_memory`, which also
logs ``host_rss_gb``). The price is page faults: jemalloc hands freed pages back and faults them in
again, ~8x glibc's faults and ~5x its system time over 20 steps (README, demo-long "In one piece").

``python -m nemo_nvembed.train`` calls :func:`reexec_with_jemalloc` first, before any import that
allocates: when ``libjemalloc.so.2`` is installed (Debian/Ubuntu: ``apt-get install libjemalloc2``;
``make demo-long`` installs it) and not yet preloaded, the worker replaces itself (``execve``, same
pid, same arguments and environment) with ``LD_PRELOAD`` naming it. So every launch path (torchrun,
srun, ``--nproc-per-node``) gets it. ``NVEMBED_HOST_ALLOCATOR=glibc`` keeps glibc's malloc (the
demo's ``host_allocator`` key sets it). jemalloc runs with its own defaults (``MALLOC_CONF``, if set,
is the user's): it purges freed pages after 10 s (9.6 s vs glibc's 8.2 s per demo-long step in 30 steps
back to back; but 6.9 s over all 450 stage-1 steps of a whole fresh ``make demo-long`` at 8f52133, where
glibc's whole run at 804c5e1 took ~7-7.5 s: no cost seen over a whole run); never purging was faster but
grew without bound.
"""
from __future__ import annotations

import os
import sys

ENV = "NVEMBED_HOST_ALLOCATOR"  # jemalloc (default: used when installed) | glibc
CHOICES = ("jemalloc", "glibc")
JEMALLOC = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
            "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


class AllocatorChoiceError(ValueError):
    pass


def check_choice(choice: str, where: str = ENV) -> str:
    """``choice`` if it names an allocator; otherwise an error naming ``where`` (the variable or config key)."""
    if choice not in CHOICES:
        raise AllocatorChoiceError(f"{where}={choice!r} is not 'jemalloc' or 'glibc'")
    return choice


def find_jemalloc(candidates=JEMALLOC) -> str | None:
    return next((p for p in candidates if os.path.isfile(p)), None)


def preload_env(environ, candidates=JEMALLOC) -> dict | None:
    """The environment to re-execute with, or None to go on as we are: glibc chosen, jemalloc already
    preloaded, or not installed. An unknown choice is an error naming the variable."""
    choice = check_choice(environ.get(ENV, "jemalloc"))
    preloaded = environ.get("LD_PRELOAD", "")
    if choice == "glibc" or "jemalloc" in preloaded:
        return None
    lib = find_jemalloc(candidates)
    if lib is None:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{lib}:{preloaded}" if preloaded else lib
    return env


def reexec_with_jemalloc() -> None:
    """Replace this process by itself with jemalloc preloaded (see the module), or return."""
    try:
        env = preload_env(os.environ)
    except AllocatorChoiceError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
