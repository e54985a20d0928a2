"""The run folder records what launched a run and the code that ran (training/run_info.py)."""
from __future__ import annotations

import json
import subprocess

from omegaconf import OmegaConf


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_run_folder_holds_the_launch_and_the_diff_of_a_dirty_tree(tmp_path, monkeypatch):
    from nemo_nvembed.training import run_info

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    monkeypatch.setattr(run_info, "REPO", repo)
    run = tmp_path / "run"

    run_info.write_run_info(run, OmegaConf.create({"name": "stage1"}))  # a clean tree: no patch
    assert not (run / "git_diff.patch").exists()
    assert json.loads((run / "code_version.json").read_text())["git_dirty"] is False

    (repo / "a.py").write_text("x = 2\n")
    (repo / "new.py").write_text("y = 1\n")
    run_info.write_run_info(run, OmegaConf.create({"name": "stage1"}))
    patch = (run / "git_diff.patch").read_text()
    assert "-x = 1" in patch and "+x = 2" in patch and "# untracked: new.py" in patch
    launch = json.loads((run / "launch.json").read_text())
    assert launch["launcher"] == "none" and launch["cwd"] and launch["command"][0]
    script = (run / "launch_command.sh").read_text()
    assert script.startswith("#!/bin/bash") and "cd " in script
    assert not (run / "sbatch_script.sh").exists()  # not inside a Slurm job
