#!/usr/bin/env bash
# The GPU path in one call (see scripts/gpu_check.py): install gpu_bundle/ offline over the image's
# PyTorch, then environment, imports, NCCL, tests/test_gpu.py, a short stage-1 run and the benchmark,
# each timed and bounded; results as JSON + logs in OUTDIR (default $OUT). Uses the python3 on PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"
