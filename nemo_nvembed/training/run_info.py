"""What a run directory records so a run can be understood and relaunched (lingua's habit):

- ``resolved_config.yaml``: the stage config as it ran;
- ``code_version.json``: git commit, dirty state, Python and package versions;
- ``launch.json`` + ``launch_command.sh``: the command that started this process and, where the
  parent is the launcher (torchrun's agent), the launcher's own command line, with the working
  directory: ``bash launch_command.sh`` relaunches the same process command;
- ``sbatch_script.sh``: under Slurm, the batch script the job was submitted with (from
  ``scontrol write batch_script``), so the allocation can be requested again;
- ``git_diff.patch``: with a dirty tree, ``git diff HEAD`` and the untracked files' names, so the
  code that ran can be rebuilt from the commit plus the patch.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from nemo_nvembed.parallel import distributed
from nemo_nvembed.paths import REPO


def _run(*cmd: str, timeout: float = 20) -> str:
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ""
    return p.stdout if p.returncode == 0 else ""


def _git(*args: str) -> str:
    return _run("git", "-C", str(REPO), *args).strip()


def code_version() -> dict:
    versions = {}
    for pkg in ("nemo_nvembed", "torch", "megatron-core", "nemo_toolkit", "lightning", "transformers"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"git_commit": _git("rev-parse", "HEAD") or None, "git_dirty": bool(_git("status", "--porcelain")),
            "python": sys.version.split()[0], "argv": sys.argv, "packages": versions}


def _process_command() -> list[str]:
    """This process's command as it can be typed again: ``python -m <module> args`` for ``-m`` runs."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return [sys.executable, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    return [sys.executable, *sys.argv]


def _parent_command() -> list[str] | None:
    """The parent process's command line when it is the launcher (torchrun's agent), else None."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return argv if any("torchrun" in a or "torch.distributed.run" in a for a in argv) else None


def launch_record() -> dict:
    env = distributed.read_env()
    return {"cwd": os.getcwd(), "command": _process_command(), "launcher": env.launcher,
            "launcher_command": _parent_command(), "world_size": env.world_size, "slurm_job_id": distributed.slurm_job_id()}


def write_launch(run_dir: Path, record: dict) -> None:
    (run_dir / "launch.json").write_text(json.dumps(record, indent=2) + "\n")
    command = record["launcher_command"] or record["command"]
    lines = ["#!/bin/bash", "# The command that started this run (nemo_nvembed.training.run_info); relaunching it resumes.",
             f"cd {shlex.quote(record['cwd'])}", shlex.join(command)]
    if record["launcher"] == "slurm" or record["slurm_job_id"]:
        lines.insert(2, f"# inside Slurm job {record['slurm_job_id']}: sbatch_script.sh requests the allocation again")
    (run_dir / "launch_command.sh").write_text("\n".join(lines) + "\n")


def write_sbatch_script(run_dir: Path, job_id: str | None) -> None:
    if not job_id:
        return
    script = _run("scontrol", "write", "batch_script", job_id, "-")
    (run_dir / "sbatch_script.sh").write_text(
        script or f"# scontrol write batch_script {job_id} gave nothing (not a batch job, or not permitted)\n")


def write_git_diff(run_dir: Path) -> None:
    if not _git("status", "--porcelain"):
        return
    untracked = _git("ls-files", "--others", "--exclude-standard")
    diff = _run("git", "-C", str(REPO), "diff", "HEAD", "--binary", timeout=60)
    notes = "".join(f"# untracked: {f}\n" for f in untracked.splitlines())
    (run_dir / "git_diff.patch").write_text(notes + diff)


def write_run_info(run_dir: str | Path, cfg) -> None:
    """Call on global rank 0 once the run folder is the run's (after exp_manager)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "resolved_config.yaml", resolve=True)
    (run_dir / "code_version.json").write_text(json.dumps(code_version(), indent=2) + "\n")
    record = launch_record()
    write_launch(run_dir, record)
    write_sbatch_script(run_dir, record["slurm_job_id"])
    write_git_diff(run_dir)
