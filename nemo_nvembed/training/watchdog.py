"""Step-progress watchdog: a rank that makes no progress for ``train.watchdog_s`` ends the job.

A hung rank (a wedged collective, a stuck filesystem, a GPU fault) otherwise keeps every other rank
waiting in its next collective until the job's time limit. Each rank runs one daemon thread that
watches when the rank last made progress: an optimizer step completed, a checkpoint save or a
validation began or ended (each is a "feed", so a slow save or validation gets a whole interval of
its own). When ``watchdog_s`` passes without one, the thread writes the rank's step, phase and the
stack of every thread to ``<run folder>/hang_rank<r>.txt``, prints one ``error:`` line and ends the
process with :data:`HANG_EXIT` (75). The launch script (``slurm/common.sh``) requeues a job that
ended so; the restart resumes from the newest verified checkpoint.

The rank that hangs may be unable to act (stopped, or stuck in C code holding the GIL); the ranks
waiting for it in a collective are not, and their dumps name the collective they wait in.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from pathlib import Path

from lightning.pytorch.callbacks import Callback

HANG_EXIT = 75  # EX_TEMPFAIL: "try again later"; slurm/common.sh requeues on it


class StepWatchdog(Callback):
    """Lightning callback + watcher thread. ``feed(phase)`` marks progress; ``stop()`` ends the watch."""

    def __init__(self, run_dir: str | Path, timeout_s: float, rank: int, exit=os._exit):
        self.run_dir, self.timeout_s, self.rank = Path(run_dir), float(timeout_s), rank
        self.step, self.phase, self.last = 0, "starting", time.monotonic()
        self._exit = exit  # tests replace it
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: Path | None = None

    @property
    def dump_path(self) -> Path:
        return self.run_dir / f"hang_rank{self.rank}.txt"

    # --------------------------------------------------------------------------- progress
    def feed(self, phase: str, step: int | None = None) -> None:
        self.phase, self.last = phase, time.monotonic()
        if step is not None:
            self.step = step

    def start(self) -> None:
        if self._thread is None and self.timeout_s > 0:
            self.feed("starting")
            self._thread = threading.Thread(target=self._watch, name="nvembed-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.timeout_s / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                self._fire(idle)
                return

    def _fire(self, idle: float) -> None:
        frames = sys._current_frames()
        names = {t.ident: t.name for t in threading.enumerate()}
        lines = [f"rank {self.rank}: no progress for {idle:.0f} s (train.watchdog_s={self.timeout_s:g})",
                 f"step {self.step}, phase: {self.phase}", f"time {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
        for ident, frame in frames.items():
            if ident == threading.get_ident():
                continue  # this watcher
            lines.append(f"--- thread {names.get(ident, '?')} ({ident})")
            lines.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
            lines.append("")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.dump_path.write_text("\n".join(lines) + "\n")
            where = f"stacks in {self.dump_path}"
        except OSError as e:  # the stuck filesystem may be the run folder's
            where = f"could not write {self.dump_path} ({e.strerror})"
        self.fired = self.dump_path
        from nemo_nvembed.parallel.distributed import record_exit_status

        record_exit_status(HANG_EXIT, f"no progress for {idle:.0f} s at step {self.step} ({self.phase})")
        print(f"error: rank {self.rank} made no progress for {idle:.0f} s at step {self.step} ({self.phase}); "
              f"{where}; exit {HANG_EXIT} (the Slurm launch requeues and resumes from the newest checkpoint)",
              file=sys.stderr, flush=True)
        self._exit(HANG_EXIT)

    # --------------------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer, pl_module):
        self.start()
        self.feed("first step", trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.phase = f"optimizer step {trainer.global_step}"  # not a feed: the step must complete

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Runs before the checkpoint and validation callbacks (it is first in the list): what follows
        # the step (a save, validation, the preemption check) is named as such in a dump.
        self.feed(f"after step {trainer.global_step}: checkpoint, validation or preemption check", trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.feed(f"checkpoint save at step {trainer.global_step}", trainer.global_step)

    def on_validation_start(self, trainer, pl_module):
        self.feed(f"validation at step {trainer.global_step}", trainer.global_step)

    def on_validation_end(self, trainer, pl_module):
        self.feed(f"after validation at step {trainer.global_step}", trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        self.feed(f"training ended at step {trainer.global_step}", trainer.global_step)
