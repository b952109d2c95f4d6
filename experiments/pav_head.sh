#!/usr/bin/env bash
# Issue 20: train a PAV head on MAWPS arm (a)'s iteration-1 samples (the base model's), then score the
# base model's held-out answers with it (experiments/pav_heldout.py --head). Needs arm (a)'s run directory
# (bash experiments/mawps_smollm2/run.sh outcome); its samples are copied, never changed. Rerun to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${REST_RUNS:-runs}/mawps_smollm2"
src="$runs/outcome" dst="$runs/pav_head"
if [ ! -f "$dst/manifest.json" ]; then
  mkdir -p "$dst.partial/iter_001"
  cp "$src/manifest.json" "$src/recipe.yaml" "$dst.partial/"
  cp -r "$src/iter_001/samples" "$src/iter_001/verified.parquet" "$src/iter_001/stats" "$dst.partial/iter_001/"
  mv "$dst.partial" "$dst"
fi
.venv/bin/rest pav experiments/mawps_smollm2/pav_head.yaml --iteration 1 --run-dir "$dst" --allow-recipe-change
.venv/bin/python experiments/pav_heldout.py "$src" --iteration 0 --problems 300 --rollouts 0 --head "$dst/iter_001/pav/head"
