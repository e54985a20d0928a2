"""Process-group and megatron parallel-state setup: the only module that reads launcher env.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; srun sets SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID (the launch scripts export MASTER_ADDR/MASTER_PORT). With none of
them, a single-process world is created, so a model can be built in a notebook or a test.
"""
from __future__ import annotations

import datetime
import math
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nemo_nvembed.parallel import DEFAULT_SEED, cpu_compat


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    local_world_size: int = 1
    launcher: str = "none"  # torchrun | slurm | none

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env() -> DistEnv:
    """Rank layout from torchrun or Slurm variables; a world of one when neither is set."""
    env = os.environ
    addr = env.get("MASTER_ADDR")
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun"
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_JOB_ID" in env:
        launcher = "slurm"
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        local_world = world // int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", 1)))
        if addr is None:  # e.g. submitit's srun: the first host of the allocation, a job-specific port
            addr = _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
            env["MASTER_ADDR"] = addr  # Lightning's SLURM environment reads the same variables
            env.setdefault("MASTER_PORT", str(20000 + int(env["SLURM_JOB_ID"]) % 20000))
    else:
        launcher, rank, world, local, local_world = "none", 0, 1, 0, 1
    addr = addr or "127.0.0.1"
    port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else (_free_port() if world == 1 else 29500)
    return DistEnv(rank, world, local, addr, port, local_world, launcher)


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return nodelist.split(",")[0].split("[")[0]


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (torchrun's agent, srun's step daemon)
    dies, so that a killed launcher leaves no worker training and writing checkpoints. torchrun
    starts workers in their own sessions: killing the launcher's process group misses them."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def init_process_group(backend: str | None = None, timeout_s: float | None = None) -> DistEnv:
    """Initialise torch.distributed once (NCCL with CUDA, gloo otherwise). A launched worker
    (torchrun or srun) dies with its launcher (:func:`die_with_parent`). ``timeout_s``: how long a
    collective may wait before it fails (a stage passes ``parallel.collective_timeout_s``; None: torch's
    default, 10 min for NCCL and 30 min for gloo)."""
    env = read_env()
    if env.launcher != "none":
        die_with_parent()
    if dist.is_initialized():
        return env
    backend = backend or ("nccl" if cpu_compat.cuda_available() else "gloo")
    if cpu_compat.cuda_available():
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        **({"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}),
    )
    return env


def initialize(tensor_model_parallel_size: int = 1, seed: int = DEFAULT_SEED, backend: str | None = None,
               timeout_s: float | None = None) -> None:
    """Process group + megatron parallel state (TP x DP = world size) + RNG seeds; ``timeout_s`` applies
    to the default group and to every TP and DP group megatron creates.

    Idempotent for the same TP size; asking for a different TP size after initialisation is an error.
    """
    from megatron.core import parallel_state as ps

    cpu_compat.activate()
    init_process_group(backend, timeout_s)
    world = dist.get_world_size()
    if world % tensor_model_parallel_size:
        raise ValueError(
            f"world size {world} is not divisible by tensor_model_parallel_size={tensor_model_parallel_size}"
        )
    if ps.model_parallel_is_initialized():
        have = ps.get_tensor_model_parallel_world_size()
        if have != tensor_model_parallel_size:
            raise ValueError(f"parallel state already initialised with TP={have}, asked for TP={tensor_model_parallel_size}")
        return
    minutes = {"distributed_timeout_minutes": max(1, math.ceil(timeout_s / 60))} if timeout_s else {}
    ps.initialize_model_parallel(tensor_model_parallel_size=tensor_model_parallel_size, pipeline_model_parallel_size=1,
                                 **minutes)
    cpu_compat.model_parallel_seed(seed)


def reseed_for_step(seed: int, step: int, salt: int = 0) -> None:
    """Make this step's random draws (dropout) a function of (seed, step, salt, rank) only.

    A resumed run then draws exactly what an uninterrupted one drew, without RNG state in the
    checkpoint. Replicas inside a TP group share the default generator (replicated dropout must
    agree); the model-parallel tracker differs per TP rank, as megatron's seeding does.
    """
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    base = (seed * 1_000_003 + step * 7_919 + salt * 15_485_863) % (2**62)
    torch.manual_seed(base + 104_729 * ps.get_data_parallel_rank())
    if cpu_compat.cuda_available():
        torch.cuda.manual_seed(base + 104_729 * ps.get_data_parallel_rank())
    tracker = tensor_parallel.get_cuda_rng_tracker()
    tracker.reset()
    tracker.add("model-parallel-rng", base + 2718 + ps.get_tensor_model_parallel_rank())


def is_initialized() -> bool:
    from megatron.core import parallel_state as ps

    return dist.is_initialized() and ps.model_parallel_is_initialized()


def _ps():
    from megatron.core import parallel_state  # imported on first use: megatron is slow to import

    return parallel_state


def tp_group():
    return _ps().get_tensor_model_parallel_group()


def tp_rank() -> int:
    return _ps().get_tensor_model_parallel_rank()


def tp_size() -> int:
    return _ps().get_tensor_model_parallel_world_size()


def dp_group():
    return _ps().get_data_parallel_group()


def dp_rank() -> int:
    return _ps().get_data_parallel_rank()


def dp_size() -> int:
    return _ps().get_data_parallel_world_size()


def is_global_rank_zero() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def slurm_job_id() -> str | None:
    """The Slurm job this process runs in (a requeued job keeps its id), or None outside Slurm."""
    return os.environ.get("SLURM_JOB_ID") or None


def decided_on_rank0(decide):
    """Run ``decide()`` on global rank 0 only and hand its result (or its UserError, re-raised) to
    every rank: for decisions about shared files (run lock, resume checkpoint) all ranks must share."""
    from nemo_nvembed.checks.errors import UserError

    payload = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            payload = [("ok", decide())]
        except UserError as e:
            payload = [("error", e)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def launch_local_workers(nproc: int, module: str, args: list[str]) -> int:
    """``torchrun --nproc-per-node nproc -m module args`` through torch's own launcher, in this process,
    without its failure banner: a worker that failed has printed its own ``error:`` line (or its
    traceback), so this returns the status the lowest rank recorded (:func:`record_exit_status`), else
    the first failed worker's exit status (128 + signal when killed), or 0: the others are often ended by
    torchrun's SIGTERM (143) once one has stopped. Rank 0 prints a stop's line; a line only another rank
    recorded (:func:`unreported_error`) is printed here, so a refusal that only rank 1 found is not lost."""
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's agent logs each worker's failure and the SIGTERMs it sends; the workers' own lines say more.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    own = "NVEMBED_EXIT_STATUS_FILE" not in os.environ
    if own:
        fd, status_file = tempfile.mkstemp(prefix="nvembed-exit-status-")
        os.close(fd)
        os.environ["NVEMBED_EXIT_STATUS_FILE"] = status_file
    status_file = os.environ["NVEMBED_EXIT_STATUS_FILE"]
    try:
        run(parse_args(["--nproc-per-node", str(nproc), "-m", module, *args]))
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        code = failure.exitcode
        line = unreported_error(status_file)
        if line:
            print(line, file=sys.stderr, flush=True)
        recorded = recorded_statuses(status_file)
        if recorded:
            return recorded[min(recorded)]
        return 128 - code if code < 0 else code or 1
    finally:
        if own:
            os.environ.pop("NVEMBED_EXIT_STATUS_FILE")
            os.unlink(status_file)
    return 0


def is_launched() -> bool:
    """This process is a worker of a launcher (torchrun or srun)."""
    return read_env().launcher != "none"


def report_once(message: str, status: int) -> None:
    """Print one line to stderr on global rank 0 only (a user error every rank found alike) and record
    the exit status and the line for the launch (:func:`record_exit_status`). Another rank's line names
    the rank and its host, and is printed by the launch (``train --nproc-per-node``, slurm/common.sh;
    plain torchrun shows it in its failure banner) when rank 0 recorded none (:func:`unreported_error`):
    a file missing on one node is found by that node's ranks only."""
    env = read_env()
    if env.rank != 0:
        message = f"{message} (rank {env.rank} on {socket.gethostname()})"
    record_exit_status(status, message)  # before printing: a launch that finds rank 0's record prints nothing
    if env.rank == 0:
        print(message, file=sys.stderr, flush=True)
    elif os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's own banner names the root cause with it
        import json
        import time

        try:
            with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
                json.dump({"message": message, "timestamp": int(time.time())}, f)
        except OSError:
            pass


def _records(status_file: str) -> list[tuple[int, int, str]]:
    """(status, rank, line) per line of an exit-status file (:func:`record_exit_status`), in order."""
    import re

    try:
        with open(status_file) as f:
            return [(int(m[1]), int(m[2]), m[3]) for m in map(re.compile(r"^(\d+) rank (\d+): (.*)$").match, f) if m]
    except OSError:
        return []


def recorded_statuses(status_file: str) -> dict[int, int]:
    """rank -> the first exit status it recorded."""
    out: dict[int, int] = {}
    for status, rank, _ in _records(status_file):
        out.setdefault(rank, status)
    return out


def unreported_error(status_file: str) -> str | None:
    """The ``error:`` line a non-zero rank recorded when rank 0 recorded nothing (rank 0, which prints,
    found no error or was stopped before it did); None otherwise."""
    records = _records(status_file)
    if any(rank == 0 for _, rank, _ in records):
        return None
    errors = sorted((rank, line) for _, rank, line in records if line.startswith("error: "))
    return errors[0][1] if errors else None


def record_exit_status(status: int, why: str) -> None:
    """Leave this process's exit status and reason where the launch script reads it
    (``NVEMBED_EXIT_STATUS_FILE``, set by slurm/common.sh): srun's own exit status is the highest of its
    tasks', so a task it killed after another exited 2 turns a user error into 143."""
    path = os.environ.get("NVEMBED_EXIT_STATUS_FILE")
    if not path:
        return
    try:
        with open(path, "a") as f:
            f.write(f"{status} rank {read_env().rank}: {why}\n")
    except OSError:
        pass  # the launch script falls back on srun's status
