#!/usr/bin/env bash
# Issue 8: one arm of the GSM8K experiment, then the results table and plot from every arm run so far.
#   bash experiments/gsm8k_smollm2/run.sh outcome|prm [recipe overrides, e.g. data.path=/data/gsm8k.jsonl]
# Rerunning the same command resumes the arm after its last finished phase.
set -euo pipefail
cd "$(dirname "$0")/../.."
arm=${1:?usage: run.sh outcome|prm [overrides...]}; shift
[ -f "experiments/gsm8k_smollm2/$arm.yaml" ] || { echo "no arm '$arm': use outcome or prm"; exit 2; }
bash scripts/setup.sh
mkdir -p runs/gsm8k_smollm2
.venv/bin/rest run "experiments/gsm8k_smollm2/$arm.yaml" "$@" --run-dir "runs/gsm8k_smollm2/$arm"
.venv/bin/python experiments/gsm8k_smollm2/report.py runs/gsm8k_smollm2/*/
