"""A real Slurm on this machine for the launch-script tests (no mocks).

Installs ``slurm-wlm`` and ``munge`` from Debian's packages when ``sbatch`` is missing, starts
``munged``, ``slurmctld`` and ``slurmd`` with a generated ``slurm.conf`` (proctrack/linuxproc,
task/none, the machine's CPUs) and points ``SLURM_CONF`` at it. Skips, with the reason, only
where Slurm cannot be installed or started.

Two more nodes, ``nvnode1`` and ``nvnode2`` (partition ``twonode``), are real separate hosts as
far as the job can tell: each ``slurmd`` runs in its own network namespace (address 10.77.0.2 /
.3 on a bridge whose host side, 10.77.0.1, is the controller's address), UTS namespace (its
own hostname) and mount namespace (its own ``/etc/hosts`` naming both nodes). Tasks of a job
inherit them, so a two-node job rendezvous over the bridge exactly as on two machines. Where
namespaces cannot be created (no root, no CAP_NET_ADMIN), only the one-host cluster starts and
the two-node tests skip with the reason.
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
NODES = {"nvnode1": "10.77.0.2", "nvnode2": "10.77.0.3"}  # two-node partition: name -> address
BRIDGE, CTL_ADDR = "nvembr0", "10.77.0.1"


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


# A requeued job waits cred_expire (default 120 s) before it may start again, and the scheduler looks
# every sched_interval / bf_interval (60 / 30 s); a node that stops answering is declared DOWN after
# SlurmdTimeout (default 300 s): short here so that the requeue tests take seconds, not minutes, of
# waiting. A cluster's own values add to the fault -> resumed times measured here.
def _config(host: str, cpus: int, two_nodes: bool) -> str:
    ctl = f"{host}({CTL_ADDR})" if two_nodes else host
    extra = "".join(f"NodeName={n} NodeAddr={a} NodeHostname={n} CPUs=1 RealMemory=4000 State=UNKNOWN\n"
                    for n, a in NODES.items()) if two_nodes else ""
    if two_nodes:
        extra += f"PartitionName=twonode Nodes={','.join(NODES)} Default=NO MaxTime=INFINITE State=UP OverSubscribe=YES\n"
    return f"""ClusterName=nvembedtest
SlurmctldHost={ctl}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=10
KillWait=10
MinJobAge=600
StateSaveLocation={ROOT}/state
SlurmdSpoolDir={ROOT}/spool/%n
SlurmctldPidFile={ROOT}/slurmctld.pid
SlurmdPidFile={ROOT}/slurmd-%n.pid
SlurmctldLogFile={ROOT}/slurmctld.log
SlurmdLogFile={ROOT}/slurmd-%n.log
JobCompType=jobcomp/none
NodeName={host} CPUs={cpus} RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
{extra}"""


def _up(partition: str = "debug") -> bool:
    states = _sh(f"sinfo -h -N -p {partition} -o %T", timeout=20).stdout.split()
    return bool(states) and all(s in ("idle", "mixed", "allocated") for s in states)


def _namespaces() -> str | None:
    """Create the two nodes' network namespaces on a bridge (idempotent); returns a reason on failure."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        return "two nodes need root with ip(8) and unshare(1) to create network namespaces"
    hosts = ROOT / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in NODES.items())
                     + f"{CTL_ADDR} {socket.gethostname().split('.')[0]}\n")
    cmds = [f"ip link show {BRIDGE} >/dev/null 2>&1 || (ip link add {BRIDGE} type bridge && "
            f"ip addr add {CTL_ADDR}/24 dev {BRIDGE})", f"ip link set {BRIDGE} up"]
    for i, (n, a) in enumerate(NODES.items(), 1):
        ns, veth = f"nvembed-{n}", f"nvemb{i}"
        cmds.append(f"ip netns list | grep -qw {ns} || (ip netns add {ns} && ip link add {veth} type veth peer name "
                    f"{veth}p && ip link set {veth}p netns {ns} && ip link set {veth} master {BRIDGE} && "
                    f"ip link set {veth} up && ip netns exec {ns} ip addr add {a}/24 dev {veth}p && "
                    f"ip netns exec {ns} ip link set {veth}p up && ip netns exec {ns} ip link set lo up)")
    for c in cmds:
        p = _sh(c, timeout=30)
        if p.returncode != 0:
            return f"could not create the two nodes' network namespaces ({c}): {p.stderr[-300:]}"
    return None


def _start_node_slurmds(conf: Path, nodes=tuple(NODES)) -> None:
    """One slurmd per node, each in its namespaces (network, hostname, /etc/hosts)."""
    for n in nodes:
        (ROOT / "spool" / n).mkdir(parents=True, exist_ok=True)
        inner = f"hostname {n} && mount --bind {ROOT / 'hosts'} /etc/hosts && exec slurmd -N {n} -f {conf}"
        # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup tree slurmd needs
        _sh(f"nsenter --net=/run/netns/nvembed-{n} unshare --uts --mount --propagation private sh -c '{inner}'",
            timeout=60)


def kill_node(name: str) -> list[int]:
    """A node lost at once: SIGKILL every process in its network namespace (its slurmd, the job's
    slurmstepd and tasks) together; -> their pids. :func:`start_node` brings it back."""
    pids = [int(p) for p in _sh(f"ip netns pids nvembed-{name}", timeout=10).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return pids


def start_node(name: str) -> None:
    """A fresh slurmd for the node (as after a reboot); Slurm takes it back (ReturnToService=2)."""
    _start_node_slurmds(ROOT / "slurm.conf", (name,))


def start_slurm() -> str | None:
    """Start (or reuse) the cluster; returns a skip reason or None."""
    reason = _install()
    if reason:
        return reason
    conf = ROOT / "slurm.conf"
    os.environ["SLURM_CONF"] = str(conf)
    global TWO_NODE_REASON
    if conf.exists() and _up():
        TWO_NODE_REASON = None if _up("twonode") else "the running test cluster has no two-node partition"
        return None
    host = socket.gethostname().split(".")[0]
    for d in ("state", "spool", f"spool/{host}"):
        (ROOT / d).mkdir(parents=True, exist_ok=True)
    TWO_NODE_REASON = _namespaces()
    conf.write_text(_config(host, os.cpu_count() or 2, TWO_NODE_REASON is None))
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
    if TWO_NODE_REASON is None:
        _start_node_slurmds(conf)
    for _ in range(60):
        if _up() and (TWO_NODE_REASON is not None or _up("twonode")):
            return None
        for n in [host, *NODES]:
            _sh(f"scontrol update nodename={n} state=resume", timeout=10)
        time.sleep(1)
    if _up():
        TWO_NODE_REASON = f"the two namespace nodes never became idle: {_sh('sinfo -N').stdout}"
        return None
    log = (ROOT / "slurmctld.log").read_text()[-500:] if (ROOT / "slurmctld.log").exists() else ""
    return f"Slurm started but the node never became idle: {_sh('sinfo').stdout} {log}"


TWO_NODE_REASON: str | None = "Slurm was not started"


@pytest.fixture(scope="session")
def slurm():
    reason = start_slurm()
    if reason:
        pytest.skip(reason)
    return ROOT


@pytest.fixture(scope="session")
def slurm_two_nodes(slurm):
    """The cluster with its two namespace nodes (partition ``twonode``)."""
    if TWO_NODE_REASON:
        pytest.skip(TWO_NODE_REASON)
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


def node_state(name: str) -> str:
    """Slurm's state of a node: idle, alloc, down* (``*``: not responding), ..."""
    return _sh(f"sinfo -h -N -n {name} -o %T", timeout=20).stdout.strip()


def job_state(job_id: str) -> tuple[str | None, int]:
    p = _sh(f"scontrol show job {job_id} -o", timeout=20)
    fields = dict(f.split("=", 1) for f in p.stdout.split() if "=" in f)
    return fields.get("JobState"), int(fields.get("Restarts", 0))
