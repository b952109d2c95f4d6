#!/usr/bin/env bash
# Issue 18: does repair at least double the kept set on GSM8K at iteration 1? One E-step (300 prompts x 4
# samples), verified once (runs/gsm8k_smollm2/estep); then three repairs of the same failed samples, each in
# its own copy of that run directory: rationalisation (runs/gsm8k_smollm2/rationalize), reflection of one failed
# attempt per prompt (reflect) and of two (reflect2: repair.attempts=2, twice the corrections); each run's
# selection counts its kept set by origin. Rerun to resume: finished phases are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${REST_RUNS:-runs}/gsm8k_smollm2"
rest=.venv/bin/rest
for phase in sample verify; do
  $rest "$phase" experiments/gsm8k_smollm2/rationalize.yaml --iteration 1 --run-dir "$runs/estep"
done
repair() {  # run directory, recipe, overrides...
  local dir=$runs/$1 recipe=experiments/gsm8k_smollm2/$2.yaml; shift 2
  if [ ! -d "$dir" ]; then
    cp -r "$runs/estep" "$dir.partial"
    mv "$dir.partial" "$dir"
  fi
  for phase in repair filter; do
    $rest "$phase" "$recipe" "$@" --iteration 1 --run-dir "$dir" --allow-recipe-change
  done
  echo "== $(basename "$dir")"; cat "$dir/iter_001/stats/repair.json"; echo; cat "$dir/iter_001/stats/select.json"; echo
}
repair rationalize rationalize
repair reflect reflect
repair reflect2 reflect repair.attempts=2
