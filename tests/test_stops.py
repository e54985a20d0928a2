"""Every stop is one line (issue 23): a user error or a runtime stop of ``nemo_nvembed.train`` prints
exactly one ``error:`` line and no traceback on the terminal, under 2 processes as in one; a rank
that stops making progress ends the run with the watchdog's exit status and a dump of its stacks.

Layout refusals in one process (each case, in-process): tests/test_bad_inputs.py TRAIN_CASES; the
one-process form of the line: test_bad_inputs.py::test_train_user_error_is_one_line_without_traceback.
Runs the command as a user does (``python -m nemo_nvembed.train --nproc-per-node 2``); CPU only.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from test_training import TASKS, tiny_base, write_examples  # noqa: F401  (fixture)


def train_cmd(run_root: Path, base: Path, data: Path, nproc: int | None, extra=()) -> list[str]:
    launch = ["--nproc-per-node", str(nproc)] if nproc else []
    return [sys.executable, "-m", "nemo_nvembed.train", *launch, "--config-name", "stage1", "model=tiny",
            f"run_root={run_root}", f"init_from={base}", f"train.data.path={data}", f"train.data.tasks={TASKS}",
            "train.data.global_batch_size=8", "train.data.num_negatives=3", "train.data.query_max_length=32",
            "train.data.doc_max_length=32", "train.optim.lr=1e-3", "train.optim.warmup_steps=2",
            "trainer.precision=32-true", "trainer.max_steps=4", "exp_manager.checkpoint_callback_params.every_n_train_steps=2",
            "trainer.enable_progress_bar=false", *extra]


def one_error_line(out: str) -> str:
    """The combined output holds exactly one ``error:`` line and no traceback; -> that line."""
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, "\n".join(errors) or out[-3000:]
    assert "Traceback" not in out and "ChildFailedError" not in out, out[-4000:]
    return errors[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("stops") / "train.jsonl"
    write_examples(path)
    return path


STOP_CASES = {
    # name: (processes, overrides, exit status, text of the one line)
    "global batch vs DP, checked before spawning": (2, ["train.data.global_batch_size=3"], 2,
                                                    "global_batch_size=3 is not divisible by the data-parallel size 2"),
    "query length vs instruction, found by both workers": (2, ["train.data.query_max_length=1"], 2,
                                                           "query_max_length=1 leaves no room for text"),
}


@pytest.mark.parametrize("case", sorted(STOP_CASES))
def test_user_error_under_two_processes_is_one_line(case, tmp_path, tiny_base, data):
    nproc, extra, status, text = STOP_CASES[case]
    p = subprocess.run(train_cmd(tmp_path / "r", tiny_base, data, nproc, extra), capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    line = one_error_line(p.stdout + p.stderr)
    assert p.returncode == status and text in line, (p.returncode, line)
    assert not (tmp_path / "r" / "stage1" / "resolved_config.yaml").exists(), "refused before the run started"


# A sitecustomize.py (on PYTHONPATH, so every worker runs it at start) that hides one path from one rank:
# a file on a node-local disk that one node lacks, on this one machine.
HIDE_FROM_RANK = """import os, pathlib
if os.environ.get("RANK") == os.environ["HIDE_FROM_RANK"]:
    _real, _hidden = pathlib.Path.is_file, os.environ["HIDE_PATH"]
    pathlib.Path.is_file = lambda self: False if str(self) == _hidden else _real(self)
"""


def test_user_error_only_rank_1_finds_is_one_line(tmp_path, tiny_base, data):
    """init_from missing on rank 1's node only: rank 0 passes every check and waits for rank 1 at the
    rendezvous, rank 1 refuses and exits 2. The launch prints rank 1's line (naming the rank and host),
    once, and exits 2; it is not lost because rank 0, the rank that prints, found nothing."""
    import socket

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HIDE_FROM_RANK)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HIDE_FROM_RANK": "1", "HIDE_PATH": str(tiny_base)}
    start = time.time()
    p = subprocess.run(train_cmd(tmp_path / "r", tiny_base, data, 2), capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=300)
    line = one_error_line(p.stdout + p.stderr)
    assert p.returncode == 2, (p.returncode, line)
    assert line == f"error: init_from: no .nemo at {tiny_base} (rank 1 on {socket.gethostname()})", line
    print(f"\n[rank-1 error] one line, exit 2, in {time.time() - start:.0f} s")


def test_disk_full_writing_the_nemo_is_one_line_and_relaunch_writes_it(tmp_path, tiny_base, data):
    """The .nemo goes to a 1 MB tmpfs (the checkpoints do not): the write fails after the last step;
    one line names the step and what to do, the traceback is in the run folder; a relaunch with room
    writes the .nemo from the last checkpoint without training again."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full disk) needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        p = subprocess.run(train_cmd(tmp_path / "r", tiny_base, data, None, [f"output_nemo={small}/stage1.nemo"]),
                           capture_output=True, text=True, cwd=REPO, timeout=300)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    line = one_error_line(p.stdout + p.stderr)
    assert p.returncode == 3, (p.returncode, line)
    assert f"writing {small}/stage1.nemo after step 4 failed" in line and "relaunch" in line, line
    assert "Traceback" in (tmp_path / "r" / "stage1" / "stop_rank0.log").read_text()
    p = subprocess.run(train_cmd(tmp_path / "r", tiny_base, data, None, [f"output_nemo={small}/stage1.nemo"]),
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0 and (small / "stage1.nemo").exists(), p.stderr[-3000:]


def rank_pid(run_root: Path, rank: int, timeout: float = 120) -> int:
    """The worker of ``rank`` among the processes whose command line names ``run_root``."""
    from test_training import worker_pids

    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in worker_pids(run_root):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env or f"SLURM_PROCID={rank}".encode() in env:
                return pid
        time.sleep(0.5)
    raise AssertionError(f"no worker of rank {rank} under {run_root}")


def wait_for_steps(run_dir: Path, steps: int, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    trace = run_dir / "samples" / "rank0.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and not (trace.exists() and len(trace.read_text().splitlines()) >= steps):
        assert proc is None or proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    assert trace.exists(), f"no step traced in {timeout} s"


WATCHDOG_S = 8
# Once rank 0 has dumped and exited, torchrun's agent SIGTERMs the other workers; a stopped one would sit
# out its 30 s grace before SIGKILL, so the test kills it once the dump exists.
SLACK_S = 20


def test_a_stopped_rank_ends_the_run_with_the_watchdog_status_and_a_dump(tmp_path, tiny_base, data):
    """SIGSTOP rank 1 mid-run (a hung rank): rank 0 waits in the next collective, its watchdog finds no
    progress for train.watchdog_s, writes hang_rank0.txt (step, phase, every thread's stack: the
    collective it waits in) and exits 75; the launch ends with 75 within watchdog + slack, not at the
    collective timeout (60 s here) nor the job's time limit."""
    from nemo_nvembed.training.watchdog import HANG_EXIT

    run_root = tmp_path / "r"
    cmd = train_cmd(run_root, tiny_base, data, 2, ["trainer.max_steps=400", f"train.watchdog_s={WATCHDOG_S}",
                                                   "parallel.collective_timeout_s=60"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        wait_for_steps(run_root / "stage1", 3, proc)
        stopped_pid = rank_pid(run_root, 1)
        os.kill(stopped_pid, signal.SIGSTOP)
        stopped = time.time()
        dump_file = run_root / "stage1" / "hang_rank0.txt"
        while not dump_file.exists() and time.time() - stopped < WATCHDOG_S + SLACK_S + 60:
            time.sleep(0.2)
        detected = time.time() - stopped
        time.sleep(1.0)  # rank 0 exits 75 after its dump; the stopped rank is then killed (as a cluster
        os.kill(stopped_pid, signal.SIGKILL)  # would after the job ends), not left to torchrun's 30 s grace
        out, _ = proc.communicate(timeout=WATCHDOG_S + SLACK_S + 60)
        took = time.time() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == HANG_EXIT, out[-3000:]
    assert took < WATCHDOG_S + SLACK_S, f"{took:.0f} s from the stop to the end"
    line = one_error_line(out)
    assert "rank 0 made no progress for" in line and "hang_rank0.txt" in line, line
    dump = (run_root / "stage1" / "hang_rank0.txt").read_text()
    # where it waited: the step's collectives or a checkpoint save's, whichever came first after the stop
    assert re.search(r"^step \d+, phase: (optimizer step|checkpoint save|after step)", dump, re.M), dump[:2000]
    assert "--- thread MainThread" in dump, dump[:2000]
    # (the DP gradient SUM launches its buckets' all-reduces asynchronously and waits in work.wait())
    assert re.search(r"all_reduce|all_gather|barrier|broadcast|work\.wait\(\)", dump), dump[-3000:]
    assert detected < WATCHDOG_S + 10, f"{detected:.0f} s from the stop to the dump"
    print(f"\n[watchdog] stop -> dump {detected:.0f} s, -> exit {HANG_EXIT}: {took:.0f} s (train.watchdog_s={WATCHDOG_S})")


def test_watchdog_fires_only_without_progress_and_dumps_every_thread(tmp_path):
    """In-process, the exit replaced: feeding (a step, a save, a validation) keeps it quiet; silence for
    longer than watchdog_s writes step, phase and every thread's stack, then calls exit(75)."""
    import threading

    from nemo_nvembed.training.watchdog import HANG_EXIT, StepWatchdog

    exits = []
    dog = StepWatchdog(tmp_path, timeout_s=1.0, rank=3, exit=exits.append)
    dog.start()
    for i in range(6):  # 1.8 s of regular progress: no dump
        time.sleep(0.3)
        dog.feed(f"checkpoint save at step {i}", i)
    assert not exits and not dog.dump_path.exists()
    stuck = threading.Event()
    helper = threading.Thread(target=stuck.wait, name="stuck-writer", daemon=True)
    helper.start()
    dog.phase = "optimizer step 6"
    deadline = time.time() + 10
    while not exits and time.time() < deadline:
        time.sleep(0.1)
    stuck.set()
    assert exits == [HANG_EXIT]
    dump = (tmp_path / "hang_rank3.txt").read_text()
    assert "step 5, phase: optimizer step 6" in dump and "--- thread stuck-writer" in dump and "--- thread MainThread" in dump
    assert "stuck.wait" in dump or "in wait" in dump, dump
