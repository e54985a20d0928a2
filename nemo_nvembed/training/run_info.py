"""What a run directory records so a run can be understood and relaunched: the resolved config
and the code version (git commit, dirty state, package versions)."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from nemo_nvembed.paths import REPO


def code_version() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for pkg in ("nemo_nvembed", "torch", "megatron-core", "nemo_toolkit", "lightning", "transformers"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"git_commit": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain")),
            "python": sys.version.split()[0], "argv": sys.argv, "packages": versions}


def write_run_info(run_dir: str | Path, cfg) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "resolved_config.yaml", resolve=True)
    (run_dir / "code_version.json").write_text(json.dumps(code_version(), indent=2) + "\n")
