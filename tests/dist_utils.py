"""Run a function on N real processes with an initialised torch.distributed group (CPU tests).

    results = run_distributed(fn, 2, arg1, arg2)   # -> [fn's return on rank 0, on rank 1]

`fn(rank, world_size, *args)` must be a module-level (picklable) function; it runs in a fresh
process (forked from a server that imported torch and the model code once: :func:`forkserver_context`;
with this process's environment and working folder) after `init_process_group(backend, ...)` over the default group, and its
return value must be picklable (tensors are fine). RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
(127.0.0.1) and MASTER_PORT (a free port, chosen per call) are set in the child's environment
before the group is created, so code that reads them sees a consistent torchrun-like setup.
A child's exception is re-raised in the parent with the child's traceback; if one rank fails
the others are terminated instead of hanging in a collective; the whole run has a timeout.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, List

import torch.multiprocessing as mp

# Imported once by the fork server, so a child starts in milliseconds instead of importing torch,
# megatron and lightning again (~6 s per child on 2 cores; the suite starts ~30 such children).
PRELOAD = ["torch", "torch.distributed", "nemo_nvembed.models.network", "nemo_nvembed.training.strategy",
           "nemo_nvembed.training.objective", "nemo_nvembed.training.checkpoint_io"]


def forkserver_context():
    """multiprocessing's forkserver context with :data:`PRELOAD` (one server per pytest process, shared by
    every test that starts children). Children fork from that single-threaded server, not from this
    multi-threaded pytest process (forking it can leave a child blocked on a lock another thread held)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class DistributedTestError(RuntimeError):
    """A child process failed or the run timed out; the message carries the child traceback."""


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world_size: int, port: int, backend: str, timeout_s: float,
           out_dir: str, fn: Callable, args: tuple, env: dict, cwd: str) -> None:
    out = Path(out_dir)
    dist = None
    failed = False
    try:
        os.environ.clear()  # the caller's, not the fork server's (started earlier, maybe by another test)
        os.environ.update(env)
        os.chdir(cwd)
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )
        if sys.platform.startswith("linux"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # avoid unresolvable hostnames
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)  # N processes share the CPU cores
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        result = fn(rank, world_size, *args)
        with open(out / f"rank{rank}.tmp", "wb") as f:
            pickle.dump(result, f)
        os.replace(out / f"rank{rank}.tmp", out / f"rank{rank}.pkl")
    except BaseException:
        # Written before the group is torn down, so the root cause is the earliest .err file.
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        failed = True
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
    if failed:
        raise SystemExit(1)


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
                    timeout_s: float = 120.0) -> List[Any]:
    """Spawn `world_size` processes running fn(rank, world_size, *args); return results by rank.

    Retries (up to twice, with a new port) only when the rendezvous port was taken between
    choosing it and binding it.
    """
    for attempt in range(3):
        try:
            return _run_once(fn, world_size, args, backend, timeout_s)
        except DistributedTestError as e:
            if attempt == 2 or "Address already in use" not in str(e):
                raise
    raise AssertionError("unreachable")


def _run_once(fn, world_size, args, backend, timeout_s) -> List[Any]:
    ctx = forkserver_context()
    with tempfile.TemporaryDirectory(prefix="dist_test_") as out_dir:
        port = free_port()
        procs = [
            ctx.Process(target=_child, args=(r, world_size, port, backend, timeout_s, out_dir, fn, args,
                                             dict(os.environ), os.getcwd()), daemon=False)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        try:
            while any(p.is_alive() for p in procs):
                if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                    break  # one rank failed (the others may wait forever in a collective)
                time.sleep(0.02)
        finally:
            for p in procs:  # only our own children, by handle
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()

        out = Path(out_dir)
        err_files = sorted((f.stat().st_mtime_ns, int(f.stem[4:]), f) for f in out.glob("rank*.err"))
        errors = [(r, f.read_text()) for _, r, f in err_files]  # earliest failure first
        if errors:
            detail = "\n".join(f"--- rank {r} traceback ({'first failure' if i == 0 else 'later'}) ---\n{tb}"
                               for i, (r, tb) in enumerate(errors))
            raise DistributedTestError(f"{len(errors)} of {world_size} rank(s) failed:\n{detail}")
        missing = [r for r in range(world_size) if not (out / f"rank{r}.pkl").exists()]
        if missing:
            codes = {r: procs[r].exitcode for r in range(world_size)}
            why = f"timed out after {timeout_s:.0f}s" if time.monotonic() > deadline else "exited"
            raise DistributedTestError(f"rank(s) {missing} returned no result ({why}; exit codes {codes})")
        results = []
        for r in range(world_size):
            with open(out / f"rank{r}.pkl", "rb") as f:
                results.append(pickle.load(f))
        return results
