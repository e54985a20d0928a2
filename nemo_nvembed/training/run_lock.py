"""One launch at a time per run folder.

The lock is a directory, ``<run dir>/run.lock/`` (``mkdir`` is atomic, NFS included; and a
directory, because exp_manager moves a run folder's top-level *files* into ``run_<n>/``), holding
``holder.json``: host, pid, Slurm job id, start time. A second launch is refused with that
information. A lock whose holder is dead is taken over: same host and that pid no longer runs, or
the same Slurm job id (a requeued job: its earlier incarnation is gone), so preemption and
requeue keep working. Taking over renames the stale lock away first (one winner if two race).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from nemo_nvembed.models.config import ConfigError

LOCK_DIR = "run.lock"


class RunFolderBusy(ConfigError):
    pass


def _me(slurm_job_id: str | None) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": slurm_job_id,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_reason(holder: dict, me: dict) -> str | None:
    """Why the holder is known to be gone, or None when it may still be running."""
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return f"Slurm job {holder['slurm_job_id']} was requeued"
    if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
        return f"pid {holder['pid']} is not running"
    return None


class RunLock:
    def __init__(self, run_dir: str | Path, slurm_job_id: str | None):
        self.dir = Path(run_dir) / LOCK_DIR
        self.slurm_job_id = slurm_job_id
        self.taken_over: str | None = None

    @property
    def info_file(self) -> Path:
        return self.dir / "holder.json"

    def _read(self) -> dict:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        me = _me(self.slurm_job_id)
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                self.dir.mkdir()
            except FileExistsError:
                holder = self._read()
                why = _stale_reason(holder, me) if holder else None
                if holder and why is None:
                    raise RunFolderBusy(
                        f"{self.dir.parent} is in use by another launch: host {holder.get('host')}, "
                        f"pid {holder.get('pid')}, Slurm job {holder.get('slurm_job_id') or '-'}, since "
                        f"{holder.get('started')}. Wait for it, or if it is dead (e.g. on another host), "
                        f"remove {self.dir} and relaunch")
                if not holder:  # being created this instant, or a holder killed before writing its info
                    time.sleep(0.5)
                    holder = self._read()
                    if holder:
                        continue
                    why = "no holder information"
                stale = self.dir.with_name(f"{LOCK_DIR}.stale-{os.getpid()}")
                try:
                    self.dir.rename(stale)
                except OSError:
                    continue  # another launch took it over first: look again
                for f in stale.iterdir():
                    f.unlink()
                stale.rmdir()
                self.taken_over = f"took over the run folder lock of {holder or 'an unknown holder'}: {why}"
                continue
            self.info_file.write_text(json.dumps(me) + "\n")
            return self
        raise RunFolderBusy(f"{self.dir}: could not take the run folder lock (another launch keeps taking it)")

    def release(self) -> None:
        if self._read().get("pid") == os.getpid():
            self.info_file.unlink(missing_ok=True)
            try:
                self.dir.rmdir()
            except OSError:
                pass
