#!/usr/bin/env bash
# The tuning of the mnist-5k study (docs/mnist-5k-study.md), declared before it ran. Resumable: each arm's study is
# kept in runs/mnist-5k-study/tune-ARM/optuna.db; run this again and each arm continues (or, done, only re-writes its
# files). Across machines: `run.sh --keep ARM...`, with no tuning running, copies each arm's study (config.json and
# optuna.db, a few hundred kB) into docs/mnist-5k-study/tune-ARM/ to be committed, and on a machine whose runs/ lacks
# the arm, run.sh starts from that copy (a trial that was running when it was kept is failed and drawn again).
# Usage: bash docs/mnist-5k-study/run.sh [--keep] ARM...   (ARM: normal mvn meanfield meanfield-T)
set -euo pipefail
cd "$(dirname "$0")/../.."
keep=0
if [ "${1:-}" = --keep ]; then keep=1; shift; fi
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
  out="runs/mnist-5k-study/tune-$arm" kept="docs/mnist-5k-study/tune-$arm"
  if [ "$keep" = 1 ]; then
    [ -f "$out/optuna.db" ] || { echo "run.sh --keep: $out holds no study: run run.sh $arm first" >&2; exit 2; }
    for end in -journal -wal; do
      [ ! -e "$out/optuna.db$end" ] || { echo "run.sh --keep: $out/optuna.db$end is there: a tuning of $arm is still running; stop it first" >&2; exit 2; }
    done
    mkdir -p "$kept" && cp "$out/config.json" "$out/optuna.db" "$kept/" && echo "$kept/optuna.db"
    continue
  fi
  if [ ! -f "$out/config.json" ] && [ -f "$kept/optuna.db" ]; then
    mkdir -p "$out" && cp "$kept/config.json" "$kept/optuna.db" "$out/"
  fi
  if [ -f "$out/config.json" ]; then
    pyro-vae tune --resume --trials "${flags[-1]}" --out "$out" --no-progress
  else
    pyro-vae tune "${flags[@]}" "${DATA[@]}" "${COMMON[@]}" --out "$out"
  fi
  mkdir -p "$kept"
  cp "$out/trials.csv" "$out/best.json" "$out/config.json" "$out/optuna.db" "$kept/"
done
