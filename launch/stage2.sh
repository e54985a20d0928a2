#!/bin/bash
# NV-Embed stage 2: starts from $NVEMBED_OUT/stage1/stage1.nemo (or init_from=...). Arguments are Hydra overrides, passed through unchanged:
#   sbatch launch/stage2.sh train.data.path=/data/blend.jsonl
# Environment: NVEMBED_IMAGE, NVEMBED_OUT, NVEMBED_DATA, NVEMBED_HOME (see slurm/common.sh).
#SBATCH --job-name=nvembed-stage2
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail
# sbatch runs a copy of this script from Slurm's spool: find the repo from the submit directory.
# shellcheck source=slurm/common.sh
source "${NVEMBED_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
nvembed_setup
nvembed_train stage2 "$@"
