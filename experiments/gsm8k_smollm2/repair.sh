#!/usr/bin/env bash
# Issue 18: does repair at least double the kept set on GSM8K at iteration 1? One E-step (300 prompts x 4
# samples), verified once; then rationalisation (in runs/gsm8k_smollm2/rationalize) and reflection (in a copy
# made after verification, runs/gsm8k_smollm2/reflect) repair the same failed samples, and each run's
# selection counts its kept set by origin. Rerun to resume: finished phases are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${REST_RUNS:-runs}/gsm8k_smollm2"
rest=.venv/bin/rest
for phase in sample verify; do
  $rest "$phase" experiments/gsm8k_smollm2/rationalize.yaml --iteration 1 --run-dir "$runs/rationalize"
done
if [ ! -d "$runs/reflect" ]; then
  cp -r "$runs/rationalize" "$runs/reflect.partial" && rm -rf "$runs/reflect.partial/iter_001/repair"
  mv "$runs/reflect.partial" "$runs/reflect"
fi
for method in rationalize reflect; do
  for phase in repair filter; do
    $rest "$phase" "experiments/gsm8k_smollm2/$method.yaml" --iteration 1 --run-dir "$runs/$method" --allow-recipe-change
  done
done
for method in rationalize reflect; do
  echo "== $method"; cat "$runs/$method/iter_001/stats/repair.json"; echo; cat "$runs/$method/iter_001/stats/select.json"; echo
done
