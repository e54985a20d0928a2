"""Checkpoint on Slurm's warning signals, at a step boundary every rank agrees on.

``#SBATCH --signal=USR1@300`` warns every task 5 minutes before the time limit: we save a
checkpoint (as the "last" checkpoint that a relaunch resumes from), leave a ``PREEMPTED`` marker
for the launch script, which requeues the job, and stop. SIGTERM (preemption, or the time limit
itself) also saves and stops, without the marker: Slurm decides whether the job comes back.

The signal handler only sets a flag; saving happens after the current optimizer step, once all
ranks have agreed through an all-reduce, because checkpoints gather tensors collectively and a
rank may receive the signal a moment later than another.
"""
from __future__ import annotations

import signal
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

REQUEUE, STOP = 2, 1


class PreemptionCheckpoint(Callback):
    def __init__(self, run_dir: str | Path, requeue_signal: str = "SIGUSR1"):
        self.run_dir = Path(run_dir)
        self.requeue_signal = getattr(signal, requeue_signal)
        self.request = 0
        self.stopped = 0  # REQUEUE or STOP once acted upon
        self._previous = {}

    @property
    def marker(self) -> Path:
        return self.run_dir / "PREEMPTED"

    def _handler(self, kind: int):
        def handle(signum, frame):
            self.request = max(self.request, kind)
        return handle

    def on_train_start(self, trainer, pl_module):
        # Installed after Lightning's own handlers (its SLURM auto-requeue saves inside the handler).
        for sig, kind in ((self.requeue_signal, REQUEUE), (signal.SIGTERM, STOP)):
            self._previous[sig] = signal.signal(sig, self._handler(kind))

    def on_train_end(self, trainer, pl_module):
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        flag = torch.tensor([self.request], dtype=torch.int64, device=pl_module.device)  # NCCL takes no CPU tensor
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        kind = int(flag.item())
        if not kind or trainer.global_step >= trainer.max_steps:
            return
        cb = trainer.checkpoint_callback
        cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
        if kind == REQUEUE and trainer.is_global_zero:
            self.marker.write_text(f"step {trainer.global_step}\n")
        if trainer.is_global_zero:
            print(f"[preemption] signal received: saved a checkpoint at step {trainer.global_step}; stopping"
                  + (" (the launch script requeues the job)" if kind == REQUEUE else ""), flush=True)
        self.stopped = kind
        trainer.should_stop = True
