#!/usr/bin/env bash
# Commit-ready copy of an arm's finished runs: each run of runs/STUDY/compare-ARM that has all its result
# files (pyro_vae.compare.RUN_FILES, cost.csv written last) gets its small files copied, with the study's
# config.json, into docs/STUDY/compare-ARM/. Copied back into runs/STUDY/compare-ARM/ on any machine,
# `compare --resume` takes those runs as done. Checkpoints stay in runs/: they are large and not needed to resume.
# Usage: bash docs/digits-study/keep.sh [--study NAME] ARM...   (NAME: digits-study, the default, or mnist-5k-study)
set -euo pipefail
cd "$(dirname "$0")/../.."
study=digits-study
if [ "${1:-}" = --study ]; then study=$2; shift 2; fi
for arm in "$@"; do
  src="runs/$study/compare-$arm" dst="docs/$study/compare-$arm"
  [ -f "$src/config.json" ] || { echo "keep.sh: $src is not a study: run compare.sh $arm first" >&2; exit 2; }
  mkdir -p "$dst/runs" && cp "$src/config.json" "$dst/"
  read -r -a files < <(python -c 'from pyro_vae.compare import RUN_FILES; print(*RUN_FILES.values())')
  for run in "$src"/runs/*/; do
    name=$(basename "$run")
    python -c 'import sys; from pyro_vae.compare import finished; sys.exit(not finished(sys.argv[1]))' "$run" || continue
    mkdir -p "$dst/runs/$name"
    for f in config.json "${files[@]}"; do cp "$run/$f" "$dst/runs/$name/"; done
    echo "$dst/runs/$name"
  done
done
