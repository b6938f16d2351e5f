#!/usr/bin/env bash
# The comparison of the mnist-5k study (docs/mnist-5k-study.md), declared before it ran: each arm trained with the
# settings its tuning chose (docs/mnist-5k-study/tune-ARM/best.json) on seeds 100-104, one `pyro-vae compare` study
# per arm in runs/mnist-5k-study/compare-ARM. Resumable, and two of these at once share the runs (see
# docs/digits-study/compare.sh); `bash docs/digits-study/keep.sh --study mnist-5k-study ARM` copies each finished
# run's small files into docs/mnist-5k-study/compare-ARM/ to be committed.
# Usage: bash docs/mnist-5k-study/compare.sh ARM...   (ARM: normal mvn meanfield meanfield-T)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=(--data mnist-5k --binarize dynamic --hidden 200 200 --z-dim 50 --activation elu)
COMMON=(--epochs 1000 --seeds 5 --seed 100 --budget-epochs 10 30 100 300 1000 --test-epochs 100 300
        --budget-seconds 10 30 100 --budget-ll-samples 1000 --ll-samples 5000 --ais-steps 30 --ais-leapfrog 5
        --families normal mvn --workers 1 --no-progress)
for arm in "$@"; do
  best="docs/mnist-5k-study/tune-$arm/best.json"
  [ -f "$best" ] || { echo "compare.sh: $best is not there: tune the $arm arm first (run.sh $arm)" >&2; exit 2; }
  # declared: an arm tuned to T >= 10, whose 1 000 epochs would take over 40 minutes a seed, trains to 300
  read -r -a tuned < <(python docs/tuned_flags.py "$best" "$arm" --short-epochs 300)
  case "$arm" in
    normal)                flags=(--guides normal) ;;
    mvn)                   flags=(--guides mvn) ;;
    meanfield|meanfield-T) flags=(--guides meanfield) ;;
    *) echo "compare.sh: unknown arm $arm (normal mvn meanfield meanfield-T)" >&2; exit 2 ;;
  esac
  out="runs/mnist-5k-study/compare-$arm"
  if [ -f "$out/config.json" ]; then
    pyro-vae compare --resume --config "$out/config.json" --out "$out" --no-progress
  else
    pyro-vae compare "${flags[@]}" "${DATA[@]}" "${COMMON[@]}" "${tuned[@]}" --out "$out" || {
      code=$?
      sleep 2
      [ "$code" -eq 2 ] && [ -f "$out/config.json" ] || exit "$code"
      pyro-vae compare --resume --config "$out/config.json" --out "$out" --no-progress
    }
  fi
  mkdir -p "docs/mnist-5k-study/compare-$arm"
  for f in config.json results.csv test_at_budgets.csv budget.csv cost.csv selection.csv; do
    cp "$out/$f" "docs/mnist-5k-study/compare-$arm/"
  done
done
