"""A real one-host Slurm for the launch-script tests (no mocks).

Installs ``slurm-wlm`` and ``munge`` from Debian's packages when ``sbatch`` is missing, starts
``munged``, ``slurmctld`` and ``slurmd`` with a generated ``slurm.conf`` (proctrack/linuxproc,
task/none, the machine's CPUs) and points ``SLURM_CONF`` at it. Skips, with the reason, only
where Slurm cannot be installed or started.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path("/tmp/nvembed-slurm")


def _sh(cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout)


def _install() -> str | None:
    if all(shutil.which(x) for x in ("sbatch", "slurmctld", "munged", "shellcheck")):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get (as root) is not available to install it"
    env = "DEBIAN_FRONTEND=noninteractive"
    p = _sh(f"{env} apt-get install -y -q slurm-wlm munge shellcheck || ({env} apt-get update -q && {env} apt-get install -y -q slurm-wlm munge shellcheck)",
            timeout=900)
    if p.returncode != 0:
        return f"apt-get install slurm-wlm munge failed: {p.stderr[-500:]}"
    return None


def _config(host: str, cpus: int) -> str:
    return f"""ClusterName=nvembedtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=10
MinJobAge=600
StateSaveLocation={ROOT}/state
SlurmdSpoolDir={ROOT}/spool
SlurmctldPidFile={ROOT}/slurmctld.pid
SlurmdPidFile={ROOT}/slurmd.pid
SlurmctldLogFile={ROOT}/slurmctld.log
SlurmdLogFile={ROOT}/slurmd.log
JobCompType=jobcomp/none
NodeName={host} CPUs={cpus} RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _up() -> bool:
    return _sh("sinfo -h -o %T", timeout=20).stdout.strip() in ("idle", "mixed", "allocated")


def start_slurm() -> str | None:
    """Start (or reuse) the cluster; returns a skip reason or None."""
    reason = _install()
    if reason:
        return reason
    conf = ROOT / "slurm.conf"
    os.environ["SLURM_CONF"] = str(conf)
    if conf.exists() and _up():
        return None
    host = socket.gethostname().split(".")[0]
    for d in ("state", "spool"):
        (ROOT / d).mkdir(parents=True, exist_ok=True)
    conf.write_text(_config(host, os.cpu_count() or 2))
    steps = [
        "mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge",
        "test -s /etc/munge/munge.key || (dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null)",
        "chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true",
        "chmod 400 /etc/munge/munge.key; chmod 755 /run/munge",
        "pgrep -x munged >/dev/null || runuser -u munge -- munged || munged --force",
        f"pkill -x slurmctld; pkill -x slurmd; sleep 1; slurmctld -c -f {conf} && slurmd -f {conf}",
    ]
    for s in steps:
        p = _sh(s, timeout=60)
        if p.returncode != 0 and "pkill" not in s:
            return f"could not start Slurm ({s}): {p.stderr[-300:]}"
    for _ in range(60):
        if _up():
            return None
        _sh(f"scontrol update nodename={host} state=resume", timeout=10)
        time.sleep(1)
    log = (ROOT / "slurmctld.log").read_text()[-500:] if (ROOT / "slurmctld.log").exists() else ""
    return f"Slurm started but the node never became idle: {_sh('sinfo').stdout} {log}"


@pytest.fixture(scope="session")
def slurm():
    reason = start_slurm()
    if reason:
        pytest.skip(reason)
    return ROOT


def wait_job(job_id: str, timeout: float = 900) -> str:
    """Wait until the job reaches a final state; returns it (COMPLETED, FAILED, ...)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = _sh(f"scontrol show job {job_id} -o", timeout=20)
        state = next((f.split("=", 1)[1] for f in p.stdout.split() if f.startswith("JobState=")), None)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"):
            return state
        time.sleep(1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s")


def job_state(job_id: str) -> tuple[str | None, int]:
    p = _sh(f"scontrol show job {job_id} -o", timeout=20)
    fields = dict(f.split("=", 1) for f in p.stdout.split() if "=" in f)
    return fields.get("JobState"), int(fields.get("Restarts", 0))
