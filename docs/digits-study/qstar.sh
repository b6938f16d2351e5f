#!/usr/bin/env bash
# q*'s spread over its starts at the selected decoders of the digits study's comparison (docs/digits-study.md,
# declared before the comparison ran): each run's selected checkpoint evaluated on the whole test split, each
# Gaussian q* fitted from the encoder's q, the prior, a random start and the encoder's q with 4x the iterations,
# each point keeping its best, log p(x) importance-weighted (5 000 draws) from the best q found.
# Resumable by run: a run whose docs/digits-study/qstar-ARM/RUN.csv is there is done.
# Runs whose training is not finished (no cost.csv yet) are left for a later call: a run's selected checkpoint stays
# only in runs/, so each finished run is read on the machine that trained it.
# Usage: bash docs/digits-study/qstar.sh ARM...
set -euo pipefail
cd "$(dirname "$0")/../.."
for arm in "$@"; do
  study="runs/digits-study/compare-$arm"
  [ -d "$study/runs" ] || { echo "qstar.sh: $study holds no runs: run compare.sh $arm first" >&2; exit 2; }
  mkdir -p "docs/digits-study/qstar-$arm"
  for run in "$study"/runs/*/; do
    name=$(basename "$run")
    [ -f "$run/cost.csv" ] || continue
    done_file="docs/digits-study/qstar-$arm/$name.csv"
    [ -f "$done_file" ] && continue
    OMP_NUM_THREADS=1 pyro-vae evaluate "$run" --at selected --split test --n-eval 359 --ll-samples 5000 \
      --families normal mvn --qstar-starts encoder prior random long --no-progress
    cp "$run/evaluation.csv" "$done_file.tmp" && mv "$done_file.tmp" "$done_file"
  done
done
