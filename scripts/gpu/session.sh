#!/usr/bin/env bash
# The whole GPU session of issue 16 in one device call (~9 min on an H200), results in $OUT:
#   1. scripts/bench_gpu.py, alone on the card (its timings are the reported figures)
#   2. the mini study's GPU half (scripts/gpu/mini_study.sh run) in the background, while
#   3. the CUDA tests (pytest -m cuda: CPU vs CUDA, loss curves of a short training) run in the
#      foreground (correctness only, so sharing the card does not matter)
# Carried: .gpu-wheels (scripts/gpu/wheels.sh) and .gpu-mini-carry (mini_study.sh prepare):
#   device run --carry .gpu-wheels .gpu-mini-carry --timeout 600 -- bash scripts/gpu/session.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
. scripts/gpu/env.sh
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi; echo "cpus: $(nproc)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} > "$OUT/machine.txt" 2>&1
t0=$(date +%s)
timeout "${BENCH_TIMEOUT:-225}" python3 scripts/bench_gpu.py --out "$OUT" \
  --budget-s "${BENCH_BUDGET:-195}" --no-compile > "$OUT/bench.log" 2>&1
echo "bench: exit $? after $(( $(date +%s) - t0 )) s" >> "$OUT/machine.txt"
OUT="$OUT" STUDY_TIMEOUT="${STUDY_TIMEOUT:-300}" bash scripts/gpu/mini_study.sh run > "$OUT/mini.log" 2>&1 &
mini=$!
VTN_CUDA_REPORT="$OUT" timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -m cuda -q -p no:cacheprovider \
  tests/test_cuda.py tests/test_device.py > "$OUT/cuda_tests.log" 2>&1
echo "cuda tests: exit $? after $(( $(date +%s) - t0 )) s" >> "$OUT/machine.txt"
wait $mini
echo "mini study: exit $? after $(( $(date +%s) - t0 )) s" >> "$OUT/machine.txt"
tail -n 4 "$OUT/machine.txt"; grep -E "vtn.bench|train loop|^[a-z_]+: " "$OUT/bench.log" | cut -c1-400
tail -n 15 "$OUT/cuda_tests.log"; tail -n 6 "$OUT/mini.log"
