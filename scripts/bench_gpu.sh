#!/usr/bin/env bash
# One-command GPU benchmark (see scripts/bench_gpu.py); results in $OUT/gpu_bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
exec python scripts/bench_gpu.py --out "${OUT:-./gpu_bench_out}" "$@"
