#!/usr/bin/env bash
# The tuning of the mnist-5k study (docs/mnist-5k-study.md), declared before it ran. Resumable: each arm's study is
# kept in runs/mnist-5k-study/tune-ARM/optuna.db; run this again and each arm continues (or, done, only re-writes its
# files). Usage: bash docs/mnist-5k-study/run.sh ARM...   (ARM: normal mvn meanfield meanfield-T)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=(--data mnist-5k --binarize dynamic --hidden 200 200 --z-dim 50 --activation elu)
COMMON=(--seconds-cap 120 --epochs 1000 --budget-epochs 10 30 100 300 1000 --seed 0 --rescore-top 2 --rescore-seeds 2
        --no-progress)
for arm in "$@"; do
  case "$arm" in
    normal)      flags=(--guide normal --trials 10) ;;
    mvn)         flags=(--guide mvn --trials 10) ;;
    meanfield)   flags=(--guide meanfield --trials 12) ;;
    meanfield-T) flags=(--guide meanfield --tune-steps --trials 15) ;;
    *) echo "run.sh: unknown arm $arm (normal mvn meanfield meanfield-T)" >&2; exit 2 ;;
  esac
  out="runs/mnist-5k-study/tune-$arm"
  if [ -f "$out/config.json" ]; then
    pyro-vae tune --resume --trials "${flags[-1]}" --out "$out" --no-progress
  else
    pyro-vae tune "${flags[@]}" "${DATA[@]}" "${COMMON[@]}" --out "$out"
  fi
  mkdir -p "docs/mnist-5k-study/tune-$arm"
  cp "$out/trials.csv" "$out/best.json" "$out/config.json" "docs/mnist-5k-study/tune-$arm/"
done
