#!/usr/bin/env bash
# q*'s spread over its starts at the selected decoders of a study's comparison (docs/digits-study.md and
# docs/mnist-5k-study.md, declared before their comparisons ran): each run's selected checkpoint evaluated on the
# whole test split (359 digits, 1 000 mnist-5k images), each Gaussian q* fitted from the encoder's q, the prior, a
# random start and the encoder's q with 4x the iterations, each point keeping its best, log p(x) importance-weighted
# (5 000 draws) from the best q found.
# Resumable by run: a run whose docs/STUDY/qstar-ARM/RUN.csv is there is done.
# Runs whose training is not finished (no cost.csv yet) are left for a later call: a run's selected checkpoint stays
# only in runs/, so each finished run is read on the machine that trained it.
# Usage: bash docs/digits-study/qstar.sh [--study NAME] ARM...   (NAME: digits-study, the default, or mnist-5k-study)
set -euo pipefail
cd "$(dirname "$0")/../.."
name=digits-study
if [ "${1:-}" = --study ]; then name=$2; shift 2; fi
case "$name" in
  digits-study)   points=359 ;;
  mnist-5k-study) points=1000 ;;
  *) echo "qstar.sh: unknown study $name (digits-study mnist-5k-study)" >&2; exit 2 ;;
esac
for arm in "$@"; do
  study="runs/$name/compare-$arm"
  [ -d "$study/runs" ] || { echo "qstar.sh: $study holds no runs: run docs/$name/compare.sh $arm first" >&2; exit 2; }
  mkdir -p "docs/$name/qstar-$arm"
  for run in "$study"/runs/*/; do
    [ -f "$run/cost.csv" ] || continue
    done_file="docs/$name/qstar-$arm/$(basename "$run").csv"
    [ -f "$done_file" ] && continue
    OMP_NUM_THREADS=1 pyro-vae evaluate "$run" --at selected --split test --n-eval "$points" --ll-samples 5000 \
      --families normal mvn --qstar-starts encoder prior random long --no-progress
    cp "$run/evaluation.csv" "$done_file.tmp" && mv "$done_file.tmp" "$done_file"
  done
done
