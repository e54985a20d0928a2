"""Which checkpoint a (re)launched stage resumes from: the newest one whose manifest verifies.

``resume: auto`` (conf/stage*.yaml): resume from the newest verified checkpoint in the run
folder's ``checkpoints/``, naming every one skipped and why (renamed ``*.damaged``); a folder that holds checkpoints
none of which verifies is an error, never a silent restart from step 0. ``resume: fresh``: start
from step 0 on purpose; earlier checkpoints are moved aside to ``checkpoints-replaced-<time>/``
(kept, and out of the way of later resumes). Leftover temporaries of killed saves are removed
either way. NeMo's exp_manager does not search for checkpoints itself
(``exp_manager.resume_if_exists: false``): its search refuses two ``*last.ckpt`` files and fails
on a truncated one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from nemo_nvembed.models.config import ConfigError
from nemo_nvembed.training.checkpoint_io import MANIFEST_SUFFIX, TMP_MARK, verify

RESUME_MODES = ("auto", "fresh")
DAMAGED_SUFFIX = ".damaged"  # a skipped checkpoint, kept for inspection


@dataclass
class ResumeDecision:
    checkpoint: Path | None  # None: start at step 0
    step: int | None = None
    notes: list[str] = field(default_factory=list)  # what was skipped, cleaned or moved, and why

    def format(self) -> str:
        head = (f"resuming from {self.checkpoint} (step {self.step})" if self.checkpoint
                else "no checkpoint to resume from: training from step 0")
        return "\n".join([head] + [f"  {n}" for n in self.notes])


def clean_temporaries(ckpt_dir: Path) -> list[str]:
    """Remove temporaries left by killed saves (only ever written by :mod:`checkpoint_io`)."""
    notes = []
    for tmp in sorted(ckpt_dir.glob(f"*{TMP_MARK}*")):
        if tmp.is_file():
            tmp.unlink()
            notes.append(f"removed {tmp.name} (left by a save that was killed)")
    return notes


def choose(ckpt_dir: str | Path, mode: str) -> ResumeDecision:
    """Decide on rank 0 (it reads and hashes every candidate); broadcast the result to the others."""
    if mode not in RESUME_MODES:
        raise ConfigError(f"resume: {mode!r} is not one of {RESUME_MODES}")
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return ResumeDecision(None)
    notes = clean_temporaries(ckpt_dir)
    ckpts = sorted(ckpt_dir.glob("*.ckpt"))
    if mode == "fresh":
        if ckpts:
            aside = ckpt_dir.with_name(f"checkpoints-replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            ckpt_dir.rename(aside)
            notes.append(f"resume=fresh: moved {len(ckpts)} earlier checkpoint(s) to {aside}")
        return ResumeDecision(None, notes=notes)
    from nemo.utils.callbacks.nemo_model_checkpoint import NeMoModelCheckpoint

    verified, skipped = [], []
    for c in ckpts:
        step, why = verify(c)
        # NeMo's own name for its marker of a save (or removal) in progress: "<name without .ckpt>-unfinished"
        marker = NeMoModelCheckpoint.format_checkpoint_unfinished_marker_path(c)
        if why is None and marker.exists():
            # Killed after our manifest, before NeMo removed its marker: the file is whole (verified), the
            # marker stale. Removed, or NeMo's checkpoint callback would delete the checkpoint we resume from.
            marker.unlink()
            notes.append(f"removed NeMo's stale unfinished marker of {c.name} (its manifest verifies)")
        if why is None:
            verified.append((step, c.name.endswith("-last.ckpt"), c))
        else:
            skipped.append((c, why))
    if not verified:
        if ckpts:
            listed = "\n".join(f"  {c.name}: {why}" for c, why in skipped)
            raise ConfigError(f"{ckpt_dir} holds {len(ckpts)} checkpoint(s) and none can be resumed from:\n{listed}\n"
                              f"relaunch with resume=fresh to train from step 0 (they are kept, moved aside)")
        return ResumeDecision(None, notes=notes)
    step, _, best = max(verified, key=lambda v: (v[0], v[1]))
    for c, why in skipped:  # kept for inspection, renamed out of every *.ckpt search and file name
        for p in (c, Path(f"{c}{MANIFEST_SUFFIX}")):
            if p.exists():
                p.rename(p.with_name(p.name + DAMAGED_SUFFIX))
        notes.append(f"skipped {c.name}: {why}; renamed to {c.name}{DAMAGED_SUFFIX}")
    for s, is_last, c in verified:
        if is_last and c != best:  # an older "-last" a killed save left behind: superseded
            for p in (c, Path(f"{c}{MANIFEST_SUFFIX}")):
                p.unlink(missing_ok=True)
            notes.append(f"removed {c.name} (step {s}): superseded by {best.name}")
    return ResumeDecision(best, step, notes)
