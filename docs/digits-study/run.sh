#!/usr/bin/env bash
# The tuning of the digits study (docs/digits-study.md), declared before it ran. Resumable: each arm's study is kept
# in runs/digits-study/tune-ARM/optuna.db; run this again and each arm continues (or, done, only re-writes its files).
# Usage: bash docs/digits-study/run.sh ARM...   (ARM: normal normal-T mvn meanfield meanfield-T semi_amortized)
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON=(--seconds-cap 10 --epochs 1000 --budget-epochs 10 30 100 300 1000 --seed 0 --rescore-top 3 --rescore-seeds 2 --no-progress)
for arm in "$@"; do
  case "$arm" in
    normal)         flags=(--guide normal --trials 20) ;;
    normal-T)       flags=(--guide normal --tune-steps --trials 20) ;;
    mvn)            flags=(--guide mvn --trials 20) ;;
    meanfield)      flags=(--guide meanfield --trials 20) ;;
    meanfield-T)    flags=(--guide meanfield --tune-steps --trials 30) ;;
    semi_amortized) flags=(--guide semi_amortized --refine-steps 20 --refine-lr 1 --trials 20) ;;
    *) echo "unknown arm $arm" >&2; exit 2 ;;
  esac
  out="runs/digits-study/tune-$arm"
  if [ -f "$out/config.json" ]; then
    pyro-vae tune --resume --trials "${flags[-1]}" --out "$out" --no-progress
  else
    pyro-vae tune "${flags[@]}" "${COMMON[@]}" --out "$out"
  fi
  mkdir -p "docs/digits-study/tune-$arm"
  cp "$out/trials.csv" "$out/best.json" "$out/config.json" "docs/digits-study/tune-$arm/"
done
