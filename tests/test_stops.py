"""Every stop is one line (issue 23): a user error or a runtime stop of ``nemo_nvembed.train`` prints
exactly one ``error:`` line and no traceback on the terminal, under 2 processes as in one; a rank
that stops making progress ends the run with the watchdog's exit status and a dump of its stacks.

Layout refusals in one process (each case, in-process): tests/test_bad_inputs.py TRAIN_CASES; the
one-process form of the line: test_bad_inputs.py::test_train_user_error_is_one_line_without_traceback.
Runs the command as a user does (``python -m nemo_nvembed.train --nproc-per-node 2``); CPU only.
"""
from __future__ import annotations

import os
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
