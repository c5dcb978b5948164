#!/usr/bin/env bash
# Second GPU call of issue 16 (what the first one left): torch.profiler tables of the ADDD
# training step at 128^3, batch 8 (float32 and bf16 autocast: what dominates, since the step
# misses its target), then the rest of the mini study (mini_study.sh run skips finished models;
# the first call's metrics, logs and benchmarks were copied into .gpu-mini-carry).
#   device run --carry .gpu-wheels .gpu-mini-carry -- bash scripts/gpu/profile_resume.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
. scripts/gpu/env.sh
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
for extra in "" "--bf16"; do
  timeout 60 python3 scripts/bench_profile_step.py --cascade ADDD --size 128 --batch 8 \
    --device cuda --steps 3 --rows 25 $extra >> "$OUT/profile.log" 2>&1
done
OUT="$OUT" STUDY_TIMEOUT="${STUDY_TIMEOUT:-185}" bash scripts/gpu/mini_study.sh run > "$OUT/mini.log" 2>&1
grep -E "ms/step|busy|augmentation" "$OUT/profile.log"; tail -n 4 "$OUT/mini.log"
