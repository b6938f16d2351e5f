#!/usr/bin/env bash
# The comparison of the digits study (docs/digits-study.md), declared before it ran: each arm trained with the
# settings its tuning chose (docs/digits-study/tune-ARM/best.json) on seeds 100-109, one `pyro-vae compare` study
# per arm in runs/digits-study/compare-ARM. Resumable: run it again and each arm continues where it stopped (or,
# done, only re-writes its files). Two of these at once share the 2 cores (each takes the runs the other does not
# hold), so `bash docs/digits-study/compare.sh normal mvn` twice in two terminals trains the two arms' runs in parallel.
# Usage: bash docs/digits-study/compare.sh ARM...   (ARM: normal normal-T mvn meanfield meanfield-T semi_amortized)
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON=(--epochs 1000 --seeds 10 --seed 100 --budget-epochs 10 30 100 300 1000 --test-epochs 100 300
        --budget-seconds 3 10 30 --budget-ll-samples 1000 --ll-samples 5000 --ais-steps 100 --families normal mvn
        --workers 1 --no-progress)
for arm in "$@"; do
  best="docs/digits-study/tune-$arm/best.json"
  [ -f "$best" ] || { echo "compare.sh: $best is not there: tune the $arm arm first (run.sh $arm)" >&2; exit 2; }
  # the tuned settings as flags: lr, local_lr, and T as --local-steps (per-datapoint rows) or --encoder-steps
  read -r -a tuned < <(python docs/tuned_flags.py "$best" "$arm")
  case "$arm" in
    normal|normal-T) flags=(--guides normal) ;;
    mvn)             flags=(--guides mvn) ;;
    meanfield|meanfield-T) flags=(--guides meanfield) ;;
    semi_amortized)  flags=(--guides semi_amortized --refine-steps 20 --refine-lr 1) ;;
    *) echo "unknown arm $arm" >&2; exit 2 ;;
  esac
  out="runs/digits-study/compare-$arm"
  if [ -f "$out/config.json" ]; then
    pyro-vae compare --resume --config "$out/config.json" --out "$out" --no-progress
  else
    # two copies reaching a new arm together: the one refused (exit 2, the folder now holds the study) joins it
    pyro-vae compare "${flags[@]}" "${tuned[@]}" "${COMMON[@]}" --out "$out" || {
      code=$?
      sleep 2
      [ "$code" -eq 2 ] && [ -f "$out/config.json" ] || exit "$code"
      pyro-vae compare --resume --config "$out/config.json" --out "$out" --no-progress
    }
  fi
  mkdir -p "docs/digits-study/compare-$arm"
  for f in config.json results.csv test_at_budgets.csv budget.csv cost.csv selection.csv; do
    cp "$out/$f" "docs/digits-study/compare-$arm/"
  done
done
