#!/bin/bash
# Submit stage 1, then stage 2 with an afterok dependency. Arguments: Hydra overrides for BOTH
# stages; stage-specific ones go in STAGE1_ARGS / STAGE2_ARGS (space-separated).
#   STAGE1_ARGS="train.data.path=/data/retrieval.jsonl init_from=/data/base.nemo" \
#   STAGE2_ARGS="train.data.path=/data/blend.jsonl" launch/submit_both.sh model=mistral_7b
# SBATCH_ARGS adds sbatch options to both submissions (e.g. "--nodes=2 --time=12:00:00").
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -r -a stage1_args <<< "${STAGE1_ARGS:-}"
read -r -a stage2_args <<< "${STAGE2_ARGS:-}"
read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"
jid1=$(sbatch --parsable "${sbatch_args[@]}" "$here/stage1.sh" "$@" "${stage1_args[@]}")
jid2=$(sbatch --parsable "${sbatch_args[@]}" --dependency="afterok:${jid1%%;*}" "$here/stage2.sh" "$@" "${stage2_args[@]}")
echo "stage1: job ${jid1%%;*}"
echo "stage2: job ${jid2%%;*} (runs after stage1 succeeds)"
