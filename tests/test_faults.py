"""Fault injection: a crash (kill -9) at each phase of a checkpoint save, truncated and bit-flipped
checkpoints and .nemo files, a full disk, two launches into one run folder, non-finite steps on 2
ranks. Each fault must leave a run that resumes from the newest intact state, or stops with one
clear message; never a wedged folder or a silent restart from step 0. CPU only."""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_config
from dist_utils import forkserver_context, run_distributed

# ---------------------------------------------------------------- checkpoint saves killed at each phase


# Children come from a forkserver, not os.fork(): forking this multi-threaded pytest process (torch's
# thread pools) can leave the child blocked on a lock another thread held (seen: a save hung forever).
# The server has imported the checkpoint code (lightning: ~5 s), so each child starts in milliseconds.
_CTX = forkserver_context()


def _child_save(folder: Path, step: int, name: str | None, kill_at: str | None, size: int) -> None:
    from nemo_nvembed.training.checkpoint_io import ManifestCheckpointIO

    io = ManifestCheckpointIO()
    if kill_at:
        io.phase = lambda phase, path: os.kill(os.getpid(), signal.SIGKILL) if phase == kill_at else None
    io.save_checkpoint({"global_step": step, "w": torch.full((size,), float(step))},
                       folder / (name or f"s--step={step}-last.ckpt"))


def _in_child(target, *args) -> int:
    """Run ``target(*args)`` in a fresh child process; its exit code (-9: SIGKILL)."""
    p = _CTX.Process(target=target, args=args)
    p.start()
    p.join(180)
    if p.is_alive():
        p.kill()
        pytest.fail(f"{target.__name__} did not finish in 180 s")
    return p.exitcode


def _save(folder: Path, step: int, name: str | None = None, kill_at: str | None = None, size: int = 1000) -> None:
    """Save a checkpoint of ``step`` in a child process, killed with SIGKILL right after ``kill_at``."""
    code = _in_child(_child_save, folder, step, name, kill_at, size)
    assert code == (-signal.SIGKILL if kill_at else 0), code


@pytest.mark.parametrize("phase, resumes_at", [("tmp_written", 2), ("renamed", 2), ("manifest_written", 4), (None, 4)])
def test_kill_at_each_save_phase_resumes_from_newest_intact(tmp_path, phase, resumes_at):
    from nemo_nvembed.training import resume

    _save(tmp_path, 2)
    _save(tmp_path, 4, kill_at=phase)  # killed before Lightning removes the step-2 "last": two *last.ckpt may remain
    decision = resume.choose(tmp_path, "auto")
    assert decision.step == resumes_at and decision.checkpoint.name == f"s--step={resumes_at}-last.ckpt"
    assert not list(tmp_path.glob("*.tmp-*")), "temporaries of the killed save are cleaned"
    if phase == "renamed":  # complete file, no manifest: not trusted, named, moved aside
        assert any("s--step=4-last.ckpt: no manifest" in n for n in decision.notes)
    # Only the chosen checkpoint is left under a *.ckpt name: relaunching again picks the same one.
    assert [p.name for p in tmp_path.glob("*.ckpt")] == [decision.checkpoint.name]
    assert resume.choose(tmp_path, "auto").checkpoint == decision.checkpoint


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "manifest_deleted"])
def test_damaged_newest_checkpoint_falls_back_and_says_why(tmp_path, damage):
    from nemo_nvembed.training import resume
    from nemo_nvembed.training.checkpoint_io import manifest_path

    _save(tmp_path, 2, "s--step=2.ckpt")
    _save(tmp_path, 4, "s--step=4.ckpt", size=20000)
    newest = tmp_path / "s--step=4.ckpt"
    if damage == "truncate":
        os.truncate(newest, newest.stat().st_size // 2)
    elif damage == "bitflip":
        with open(newest, "r+b") as f:
            f.seek(newest.stat().st_size // 2)
            b = f.read(4096)
            f.seek(newest.stat().st_size // 2)
            f.write(bytes(x ^ 0xFF for x in b))
    else:
        manifest_path(newest).unlink()
    decision = resume.choose(tmp_path, "auto")
    assert decision.step == 2
    why = {"truncate": "truncated", "bitflip": "sha256 does not match", "manifest_deleted": "no manifest"}[damage]
    assert any("s--step=4.ckpt" in n and why in n for n in decision.notes), decision.notes
    assert (tmp_path / "s--step=4.ckpt.damaged").exists()  # kept for inspection, out of the way


def test_all_damaged_is_an_error_unless_fresh(tmp_path):
    from nemo_nvembed.models.config import ConfigError
    from nemo_nvembed.training import resume

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    _save(ckpts, 2, "s--step=2.ckpt")
    os.truncate(ckpts / "s--step=2.ckpt", 10)
    with pytest.raises(ConfigError, match=r"none can be resumed from(.|\n)*s--step=2.ckpt: size 10(.|\n)*resume=fresh"):
        resume.choose(ckpts, "auto")
    decision = resume.choose(ckpts, "fresh")
    assert decision.checkpoint is None and not ckpts.exists()
    moved = list(tmp_path.glob("checkpoints-replaced-*"))
    assert moved and (moved[0] / "s--step=2.ckpt").exists(), "fresh keeps the old checkpoints, moved aside"


def _child_save_failing(folder: Path, report: Path, full_disk: bool) -> None:
    if full_disk:  # RLIMIT_FSIZE: writes past the limit fail with EFBIG, as a full disk fails with ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    from nemo_nvembed.training.checkpoint_io import ManifestCheckpointIO

    try:
        ManifestCheckpointIO().save_checkpoint({"global_step": 4, "w": torch.zeros(1_000_000)}, folder / "s--step=4-last.ckpt")
    except Exception as e:  # OSError, or torch's RuntimeError wrapping the failed write
        report.write_text(f"{type(e).__name__}: {e}")
        os._exit(3)  # the expected failure
    os._exit(0)


@pytest.mark.parametrize("fault", ["disk full", "read-only folder"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, fault):
    """The save fails (a full disk: EFBIG past RLIMIT_FSIZE; a read-only folder: conftest.read_only_folder),
    leaves no temporary, and the previous checkpoint is still the one a relaunch resumes from."""
    from conftest import read_only_folder
    from nemo_nvembed.training import resume

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    _save(folder, 2)
    report = tmp_path / "error.txt"
    if fault == "disk full":
        code = _in_child(_child_save_failing, folder, report, True)
    else:
        with read_only_folder(folder):
            code = _in_child(_child_save_failing, folder, report, False)
    assert code == 3, f"the save must fail ({fault})"
    assert ("Read-only file system" if fault == "read-only folder" and os.geteuid() == 0 else "Error") in report.read_text()
    assert not list(folder.glob("*.tmp-*")), "the failed save leaves no temporary"
    decision = resume.choose(folder, "auto")
    assert decision.step == 2


# ---------------------------------------------------------------- preemption signals


@pytest.mark.parametrize("sig, requeue", [("SIGUSR1", True), ("SIGTERM", False)])
def test_preemption_signal_saves_at_the_next_step_and_stops(tmp_path, sig, requeue):
    """A real signal to this process once the callback's handlers are installed (train start): the
    handler only flags it; the next step end (all ranks agree through an all-reduce) saves the last
    checkpoint and stops the fit. USR1 (Slurm's warning) leaves the PREEMPTED marker, so slurm/common.sh
    requeues the job; SIGTERM (preemption or the time limit itself) saves without it: Slurm decides
    whether the job comes back. End to end (requeue, resume, bit-equal): tests/test_slurm.py, USR1."""
    from types import SimpleNamespace

    from nemo_nvembed.training.preemption import PreemptionCheckpoint

    saved = []
    ckpt = SimpleNamespace(_monitor_candidates=lambda trainer: {},
                           _save_last_checkpoint=lambda trainer, monitor: saved.append(trainer.global_step))
    trainer = SimpleNamespace(global_step=5, max_steps=10, checkpoint_callback=ckpt, is_global_zero=True,
                              should_stop=False)
    module = SimpleNamespace(device=torch.device("cpu"))
    callback = PreemptionCheckpoint(tmp_path)
    before = signal.getsignal(getattr(signal, sig))
    callback.on_train_start(trainer, module)
    try:
        callback.on_train_batch_end(trainer, module, None, None, 0)
        assert not saved and not trainer.should_stop
        os.kill(os.getpid(), getattr(signal, sig))  # delivered to this (main) thread: the flag only
        assert not saved
        trainer.global_step = 6
        callback.on_train_batch_end(trainer, module, None, None, 0)
    finally:
        callback.on_train_end(trainer, module)
    assert saved == [6] and trainer.should_stop and callback.stopped
    assert callback.marker.exists() == requeue
    assert signal.getsignal(getattr(signal, sig)) == before, "the handlers are restored at train end"


# ---------------------------------------------------------------- run-folder lock


def test_second_launch_is_refused_and_dead_holders_are_taken_over(tmp_path):
    from nemo_nvembed.training.run_lock import RunFolderBusy, RunLock

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_dir = tmp_path / "run.lock"
        lock_dir.mkdir()
        holder = {"host": socket.gethostname(), "pid": sleeper.pid, "slurm_job_id": "77", "started": "then"}
        (lock_dir / "holder.json").write_text(json.dumps(holder))
        with pytest.raises(RunFolderBusy, match=rf"host {socket.gethostname()}, pid {sleeper.pid}, Slurm job 77"):
            RunLock(tmp_path, None).acquire()
        # The same Slurm job id: a requeued job whose earlier incarnation is gone.
        lock = RunLock(tmp_path, "77").acquire()
        assert "requeued" in lock.taken_over
        lock.release()
        assert not lock_dir.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # Same host, pid gone: taken over.
    lock_dir.mkdir()
    (lock_dir / "holder.json").write_text(json.dumps({**holder, "slurm_job_id": None}))
    lock = RunLock(tmp_path, None).acquire()
    assert "is not running" in lock.taken_over
    # Another host cannot be checked: refused, saying how to recover.
    with pytest.raises(RunFolderBusy, match="remove .*run.lock"):
        RunLock(tmp_path, None).acquire()  # held by this live process
    lock.release()
    (lock_dir).mkdir()
    (lock_dir / "holder.json").write_text(json.dumps({**holder, "host": "elsewhere", "slurm_job_id": None}))
    with pytest.raises(RunFolderBusy, match="host elsewhere"):
        RunLock(tmp_path, None).acquire()


# ---------------------------------------------------------------- .nemo integrity


@pytest.fixture(scope="module")
def tiny_nemo(tmp_path_factory, tokenizer_file, single_process):
    from nemo_nvembed.models.network import NVEmbedNetwork

    path = tmp_path_factory.mktemp("nemo") / "tiny.nemo"
    NVEmbedNetwork(tiny_config(tokenizer_file)).save_to(str(path))
    return path


def damaged_nemo(src: Path, dst: Path, damage: str) -> Path:
    data = src.read_bytes()
    if damage == "text":
        dst.write_text("this is not a model\n")
    elif damage == "truncated":
        dst.write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":  # 4 KB inside the weights member
        with tarfile.open(src) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("model_weights.ckpt"))
        start = member.offset_data + member.size // 2
        data = bytearray(data)
        data[start:start + 4096] = bytes(x ^ 0xFF for x in data[start:start + 4096])
        dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("damage, why", [("text", "not a readable .nemo archive"), ("truncated", "damaged .nemo|not a readable"),
                                         ("bitflip", "do not match the checksum")])
def test_damaged_nemo_is_refused_naming_path(tiny_nemo, tmp_path, damage, why, single_process):
    from nemo_nvembed.models.checkpoint import NemoFileError
    from nemo_nvembed.models.network import NVEmbedNetwork

    bad = damaged_nemo(tiny_nemo, tmp_path / f"{damage}.nemo", damage)
    with pytest.raises(NemoFileError, match=why) as e:
        NVEmbedNetwork.load(str(bad))
    assert str(bad) in str(e.value)
    NVEmbedNetwork.load(str(tiny_nemo))  # the intact file still restores (and its checksum verifies)


def test_nemo_saved_before_checksums_restores_with_a_warning(tiny_nemo, tmp_path, monkeypatch, single_process):
    """A .nemo whose config has no weights checksum (written before checksums existed) restores the same
    weights, with a warning that they were not verified."""
    import io

    from omegaconf import OmegaConf

    from nemo_nvembed.models import checkpoint
    from nemo_nvembed.models.network import NVEmbedNetwork

    old = tmp_path / "old.nemo"
    with tarfile.open(tiny_nemo) as src, tarfile.open(old, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.endswith(checkpoint.CONFIG_MEMBER):
                conf = OmegaConf.create(data.decode())
                assert conf.pop(checkpoint.WEIGHTS_SHA_KEY)
                data = OmegaConf.to_yaml(conf).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    warnings = []
    monkeypatch.setattr(checkpoint.logging, "warning", warnings.append)
    restored = NVEmbedNetwork.load(str(old)).full_state_dict()
    assert warnings == [f"{old}: saved without a weights checksum; not verified"]
    expected = NVEmbedNetwork.load(str(tiny_nemo)).full_state_dict()
    assert restored.keys() == expected.keys() and all(torch.equal(restored[k], expected[k]) for k in expected)


# ---------------------------------------------------------------- non-finite steps on 2 ranks


def _nonfinite_worker(rank, world):
    from nemo_nvembed.training.objective import nonfinite_anywhere

    loss = torch.tensor(float("nan") if rank == 1 else 1.0)  # only rank 1 sees it
    return nonfinite_anywhere(loss), nonfinite_anywhere(torch.tensor(2.0))


def test_nonfinite_decision_is_the_same_on_every_rank():
    assert run_distributed(_nonfinite_worker, 2) == [(True, False), (True, False)]


def test_skipped_steps_on_2_ranks_apply_no_update_and_stop_past_the_limit(tmp_path, tiny_nemo):
    """Every step non-finite (temperature 1e-45): steps 0 and 1 are skipped under 2-process Lightning
    (formerly a crash: Lightning refuses a None loss under DDP), the checkpoint at step 2 holds the
    initial weights (no update), and the third skip passes max_skipped_fraction=0.5 of 4 steps: a
    runtime stop, one ``error:`` line naming the step and what to do (exit 3), the traceback in the run
    folder's stop_rank<r>.log, none on the terminal (the local launcher: ``--nproc-per-node 2``)."""
    from test_stops import one_error_line, train_cmd
    from test_training import nemo_weights, write_examples

    data = tmp_path / "train.jsonl"
    write_examples(data)
    p = subprocess.run(train_cmd(tmp_path / "r", tiny_nemo, data, 2,
                                 ["train.loss.temperature=1e-45", "train.nonfinite_loss=skip",
                                  "train.max_skipped_fraction=0.5"]),
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    out = p.stdout + p.stderr
    line = one_error_line(out)
    assert p.returncode == 3, out[-3000:]
    assert "3 steps skipped for a non-finite loss (the last at step 2)" in line and "train.max_skipped_fraction=0.5" in line
    assert "lower the lr, check the data" in line
    assert "FloatingPointError" in (tmp_path / "r" / "stage1" / "stop_rank0.log").read_text()
    assert not (tmp_path / "r" / "stage1" / "stage1.nemo").exists(), "no untrained .nemo"
    ckpt = next((tmp_path / "r" / "stage1" / "checkpoints").glob("*step=2*.ckpt"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["skipped_nonfinite"] == 2
    init = nemo_weights(tiny_nemo)
    for k, v in saved["state_dict"].items():
        torch.testing.assert_close(v, init[k], rtol=0, atol=0, msg=lambda m: f"{k} changed on a skipped step: {m}")


def test_stale_nemo_unfinished_marker_of_a_verified_checkpoint_is_removed(tmp_path):
    """Killed after our manifest but before NeMo removed its ``-unfinished`` marker: the checkpoint is
    whole; NeMo's callback would delete it at start-up if the marker stayed. The marker is placed and
    the clean-up run by NeMo's own code, not by a copy of its naming rule."""
    from nemo.utils.callbacks.nemo_model_checkpoint import NeMoModelCheckpoint

    from nemo_nvembed.training import resume

    _save(tmp_path, 2)
    ckpt = tmp_path / "s--step=2-last.ckpt"
    NeMoModelCheckpoint.set_checkpoint_unfinished_marker(ckpt)
    marker = NeMoModelCheckpoint.format_checkpoint_unfinished_marker_path(ckpt)
    assert marker.exists()
    decision = resume.choose(tmp_path, "auto")
    assert decision.step == 2 and not marker.exists()
    NeMoModelCheckpoint._remove_unfinished_checkpoints(tmp_path)  # what NeMo's callback runs at start-up
    assert decision.checkpoint.is_file(), "NeMo removed the checkpoint the run resumes from"
