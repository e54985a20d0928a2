# shellcheck shell=bash
# What launch/stage1.sh and launch/stage2.sh share, written once: environment, rendezvous,
# container, and requeue after preemption, a hung rank or a lost node. Sourced, not executed.
#
# Environment (all optional):
#   NVEMBED_HOME    the repository checkout (default: the directory sbatch was called from)
#   NVEMBED_OUT     where stage runs land: $NVEMBED_OUT/stage1/stage1.nemo, ... (default: $NVEMBED_HOME/runs)
#   NVEMBED_DATA    data folder, exported for configs that refer to it (default: $NVEMBED_HOME/data)
#   NVEMBED_IMAGE   container image (pyxis/enroot); unset = run in the current environment
#   NVEMBED_MOUNTS  container mounts (default: $NVEMBED_HOME, $NVEMBED_OUT, $NVEMBED_DATA at the same paths)
#   NVEMBED_PYTHON  python to run outside a container (default: $NVEMBED_HOME/.venv/bin/python if present, else python)
#   NVEMBED_MAX_RESTARTS  requeues of one job after a hung rank (exit 75) or a failed task / lost node (default 3)
#
# Multi-node GPU fabric (NCCL). Each is left unset unless you set it, and then NCCL detects the
# network itself, which is right on most clusters; set them (export before sbatch; srun passes the
# environment on) when the cluster's documentation says so. The job log lists those in effect.
#   NCCL_SOCKET_IFNAME   interface(s) for NCCL's bootstrap/socket traffic, e.g. ib0 or ^lo,docker
#                        (also used as GLOO_SOCKET_IFNAME when that is unset)
#   NCCL_IB_HCA          InfiniBand adapters to use, e.g. mlx5_0,mlx5_1 (or ^mlx5_4 to exclude)
#   NCCL_IB_DISABLE      1 = no InfiniBand (TCP sockets only; slow, for debugging)
#   NCCL_NET_GDR_LEVEL   GPUDirect RDMA distance, e.g. PHB or SYS
#   NCCL_DEBUG           WARN (quiet), INFO (topology and transport chosen: check this first), TRACE
#   NCCL_DEBUG_SUBSYS    e.g. INIT,NET with NCCL_DEBUG=INFO
#   FI_PROVIDER, FI_EFA_USE_DEVICE_RDMA   AWS EFA (libfabric) clusters
#   UCX_NET_DEVICES      clusters whose NCCL network plugin uses UCX

nvembed_setup() {
    : "${SLURM_JOB_ID:?launch scripts run under sbatch}"
    NVEMBED_HOME=${NVEMBED_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
    NVEMBED_OUT=${NVEMBED_OUT:-$NVEMBED_HOME/runs}
    NVEMBED_DATA=${NVEMBED_DATA:-$NVEMBED_HOME/data}
    if [ -z "${NVEMBED_PYTHON:-}" ]; then
        if [ -z "${NVEMBED_IMAGE:-}" ] && [ -x "$NVEMBED_HOME/.venv/bin/python" ]; then
            NVEMBED_PYTHON=$NVEMBED_HOME/.venv/bin/python
        else
            NVEMBED_PYTHON=python
        fi
    fi
    NVEMBED_MOUNTS=${NVEMBED_MOUNTS:-$NVEMBED_HOME:$NVEMBED_HOME,$NVEMBED_OUT:$NVEMBED_OUT,$NVEMBED_DATA:$NVEMBED_DATA}
    export NVEMBED_HOME NVEMBED_OUT NVEMBED_DATA NVEMBED_PYTHON
    mkdir -p "$NVEMBED_OUT"

    # Rendezvous: the first node of the allocation; a port derived from the job id so that jobs
    # sharing a node do not collide. Ranks come from srun (SLURM_PROCID / SLURM_LOCALID).
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
    export MASTER_ADDR MASTER_PORT
    export TOKENIZERS_PARALLELISM=false
    nvembed_fabric_env
    echo "[nvembed] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NUM_NODES node(s), ${SLURM_NTASKS} task(s); master $MASTER_ADDR:$MASTER_PORT; out $NVEMBED_OUT"
}

# The NCCL / fabric settings above: nothing is set that the user did not set; gloo (CPU runs and
# the object collectives) follows NCCL_SOCKET_IFNAME when GLOO_SOCKET_IFNAME is unset.
nvembed_fabric_env() {
    if [ -n "${NCCL_SOCKET_IFNAME:-}" ] && [ -z "${GLOO_SOCKET_IFNAME:-}" ]; then
        export GLOO_SOCKET_IFNAME=$NCCL_SOCKET_IFNAME
    fi
    local set_vars
    set_vars=$(env | grep -E '^(NCCL_|GLOO_SOCKET_IFNAME|FI_PROVIDER|FI_EFA_|UCX_NET_DEVICES)' | sort | tr '\n' ' ' || true)
    echo "[nvembed] fabric settings: ${set_vars:-none set (NCCL auto-detects)}"
}

# srun one process per GPU (one per task), in the container when NVEMBED_IMAGE is set.
nvembed_srun() {
    local args=(--kill-on-bad-exit=1 --export=ALL)
    if [ -n "${NVEMBED_IMAGE:-}" ]; then
        args+=(--container-image="$NVEMBED_IMAGE" --container-mounts="$NVEMBED_MOUNTS" --container-workdir="$NVEMBED_HOME")
    fi
    srun "${args[@]}" "$@"
}

# Run one training stage; Hydra overrides pass through unchanged. Requeue this job (the same command
# then resumes from the newest verified checkpoint) when the stage
#   - stopped for preemption or a time limit (it saved a checkpoint and left a PREEMPTED marker);
#   - ended by the watchdog (exit 75: a rank made no progress for train.watchdog_s), or a task failed
#     or a node was lost (srun's non-zero exit), at most NVEMBED_MAX_RESTARTS times per job, counted
#     in $NVEMBED_OUT/<stage>/faults/restarts.log (one line per restart: time, job, status, why; in a
#     subfolder because NeMo's exp_manager moves the run folder's loose files to run_<n>/ on a restart).
# Never after a user error (exit 2: the config, layout or data is wrong), a runtime stop that a restart
# would repeat (exit 3: non-finite loss, too many skipped steps, the .nemo not written), or a clean finish.
# srun's own status is the highest of its tasks' (a task it killed after another exited 2 makes it 143),
# so the stage's workers record their status in a file (NVEMBED_EXIT_STATUS_FILE) and that decides.
nvembed_train() {
    local stage=$1
    shift
    local run_dir="$NVEMBED_OUT/$stage"
    local marker="$run_dir/PREEMPTED" faults="$run_dir/faults"
    mkdir -p "$faults"
    rm -f "$marker"
    NVEMBED_EXIT_STATUS_FILE="$faults/exit_status-$SLURM_JOB_ID"
    export NVEMBED_EXIT_STATUS_FILE
    rm -f "$NVEMBED_EXIT_STATUS_FILE"
    local rc=0
    nvembed_srun "$NVEMBED_PYTHON" -m nemo_nvembed.train --config-name "$stage" "run_root=$NVEMBED_OUT" "$@" || rc=$?
    if [ -f "$marker" ]; then
        echo "[nvembed] $stage stopped at a checkpoint after a signal; requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    [ "$rc" -eq 0 ] && return 0
    local recorded=""
    if [ -s "$NVEMBED_EXIT_STATUS_FILE" ]; then
        recorded=$(cut -d' ' -f1 "$NVEMBED_EXIT_STATUS_FILE" | sort -n | uniq | tr '\n' ' ')
        # Rank 0 prints a stop's error: line; one that only other ranks found (a file missing on their
        # node) is printed here, the first recorded, naming its rank and host.
        if ! grep -q '^[0-9]* rank 0: ' "$NVEMBED_EXIT_STATUS_FILE"; then
            grep -m1 '^[0-9]* rank [0-9]*: error: ' "$NVEMBED_EXIT_STATUS_FILE" | sed 's/^[0-9]* rank [0-9]*: //' >&2 || true
        fi
    fi
    local why
    case " $recorded" in
        *" 2 "*)
            echo "[nvembed] $stage refused its configuration, layout or data (exit 2, the error: line above): not requeued"
            return 2 ;;
        *" 3 "*)
            echo "[nvembed] $stage stopped on a runtime error that a restart would repeat (exit 3, the error: line above): not requeued"
            return 3 ;;
        *" 75 "*) why="a rank made no progress for train.watchdog_s (exit 75; stacks in hang_rank<r>.txt, moved to $run_dir/run_<n>/ by the restart)" ;;
        *) why="a task failed or a node was lost (srun exit $rc)" ;;
    esac
    local max=${NVEMBED_MAX_RESTARTS:-3} done=0
    if [ -f "$faults/restarts.log" ]; then
        done=$(grep -c " job $SLURM_JOB_ID " "$faults/restarts.log" || true)
    fi
    if [ "$done" -ge "$max" ]; then
        echo "[nvembed] $stage ended: $why; not requeued: $done restart(s) of job $SLURM_JOB_ID already (NVEMBED_MAX_RESTARTS=$max)"
        return "$rc"
    fi
    echo "$(date '+%F %T') job $SLURM_JOB_ID status $rc: $why" >> "$faults/restarts.log"
    echo "[nvembed] $stage ended: $why; restart $((done + 1)) of $max: requeueing job $SLURM_JOB_ID (resumes from the newest verified checkpoint)"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}
