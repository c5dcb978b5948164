#!/usr/bin/env bash
# The miniature paper study on a GPU (issue 16): config/gpu-mini.yaml -- config/gpu.yaml's DAG
# (every model, rule and fan-out) at 64^3 with 3 subjects per dataset and 200 steps per model.
#
# The GPU machine can fetch nothing and a call carries 64 MiB: ITK-Elastix (> 100 MB of ITK
# wheels) and SimpleITK + antspyx (75 MB) cannot travel with the project. So the study runs in
# two halves of the same Snakemake workflow, each with the study's own command line:
#
#   prepare  (CPU machine)  every job that does not use the GPU and that the GPU jobs need:
#                           embedded data, preprocessing, ground truth, ANTs pre-alignment,
#                           supervision targets, the ANTs and Elastix baselines and their metrics
#                           (`--omit-from train register_model`); then copies into $CARRY what
#                           the GPU half reads (no raw data, no baseline registrations), ~50 MB
#   run      (GPU machine)  in $CARRY, `--cores 16 --resources gpu=1`, the GPU rules and what
#                           follows them: every training, inference, the VTN / VoxelMorph-2
#                           evaluations; then tables and claims (model packages need SimpleITK
#                           and figures the baseline registrations: both are left out); outputs
#                           that are not large (no checkpoints, no images) go to
#                           $OUT/mini_results.tar.gz
#
# Rehearsal of both halves on a CPU machine (32^3, device cpu, 5 steps per model):
#   VTN_MINI_EXTRA_CONFIG=config/gpu-mini-cpu.yaml VTN_MINI_DIR=.gpu-mini-cpu \
#     VTN_MINI_CARRY=.gpu-mini-cpu-carry CORES=2 bash scripts/gpu/mini_study.sh prepare|run
set -euo pipefail
cd "$(dirname "$0")/../.."
step=${1:?usage: mini_study.sh prepare|run}
DIR=${VTN_MINI_DIR:-.gpu-mini}
CARRY=${VTN_MINI_CARRY:-.gpu-mini-carry}
CORES=${CORES:-16}
OUT=${OUT:-$CARRY/out}
CONF=(--configfile "$PWD/config/gpu-mini.yaml")
[ -n "${VTN_MINI_EXTRA_CONFIG:-}" ] && CONF+=("$PWD/$VTN_MINI_EXTRA_CONFIG")
SM=(python3 -m snakemake -s "$PWD/workflow/Snakefile" "${CONF[@]}" --scheduler greedy)
say() { echo "$(date +%T) mini_study $step: $*"; }

case $step in
prepare)
  t0=$(date +%s)
  "${SM[@]}" -d "$DIR" --cores "$CORES" --omit-from train register_model
  rm -rf "$CARRY" && mkdir -p "$CARRY"
  (cd "$DIR" && find results benchmarks logs -type f \
     -not -path 'results/data/*/raw/*' -not -path 'results/chunks/*' \
     -not -path 'results/registrations/*' -not -path 'results/figures/*' \
     -not -path 'results/targets/*/warped*' | tar cf - -T -) \
    | (cd "$CARRY" && tar xf -)
  say "done in $(( $(date +%s) - t0 )) s; $(du -sh "$CARRY" | cut -f1) to carry in $CARRY"
  ;;
run)
  t0=$(date +%s)
  mkdir -p "$OUT"
  # 1. the GPU rules and the evaluations of their models: every input that a rule not allowed
  #    here would make was made by `prepare`
  models=(); for t in $(python3 scripts/gpu/mini_targets.py "${CONF[@]:1}"); do
    [ -e "$CARRY/$t" ] || models+=("$t")  # a resumed run: finished models are not redone
  done
  say "${#models[@]} models to train, register and evaluate"
  timeout "${STUDY_TIMEOUT:-86400}" "${SM[@]}" "${models[@]}" -d "$CARRY" --cores "$CORES" \
    --resources gpu=1 --keep-going \
    --allowed-rules model_config train register_model evaluate \
    || say "snakemake (GPU rules) exited $?"
  t1=$(date +%s)
  # 2. tables and claims, with the baselines' metrics from `prepare`
  "${SM[@]}" results/claims.md results/tables/liver results/tables/brain -d "$CARRY" \
    --cores "$CORES" --keep-going --allowed-rules tables claims || say "snakemake (report) exited $?"
  (cd "$CARRY" && python3 -m vtn runtime --benchmarks $(find benchmarks -name '*.tsv' | sort) \
     --root benchmarks --out results/runtime.md > logs/runtime_mini.log 2>&1) \
    || say "runtime summary failed"
  printf 'gpu_rules_s %s\nreport_s %s\n' "$((t1 - t0))" "$(( $(date +%s) - t1 ))" \
    > "$CARRY/results/mini_run_seconds.txt"
  (cd "$CARRY" && tar czf - --exclude='*.pt' --exclude='*.nii.gz' --exclude='*.npz' \
     results logs benchmarks .snakemake/log) > "$OUT/mini_results.tar.gz"
  say "done in $(( $(date +%s) - t0 )) s; $(du -h "$OUT/mini_results.tar.gz" | cut -f1) in $OUT/mini_results.tar.gz"
  ;;
*)
  echo "usage: mini_study.sh prepare|run" >&2; exit 2 ;;
esac
