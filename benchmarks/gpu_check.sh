#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): runs from the built environment and the converted models,
# no network. Usage: benchmarks/gpu_check.sh [OUT]  (default: $OUT if set, else ./gpu_check_out)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
exec timeout 540 .venv/bin/python benchmarks/gpu_check.py --device cuda --out "$out"
