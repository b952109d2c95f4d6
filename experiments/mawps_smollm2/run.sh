#!/usr/bin/env bash
# Issue 25: one arm of the MAWPS/ASDiv-A experiment, then the results table and plot from every arm run so far.
#   bash experiments/mawps_smollm2/run.sh outcome|mixed|mixed4|answers|answers190|supervised|supervised5|repair|checked|prm|prm_prompt [recipe overrides, e.g. data.path=...]
# Run directories go under $REST_RUNS (default: runs/) as mawps_smollm2/<arm>; rerunning the same command
# resumes the arm after its last finished phase.
set -euo pipefail
cd "$(dirname "$0")/../.."
arm=${1:?usage: run.sh outcome|mixed|mixed4|answers|answers190|supervised|supervised5|repair|checked|prm|prm_prompt [overrides...]}; shift
[ -f "experiments/mawps_smollm2/$arm.yaml" ] || { echo "no arm '$arm': use outcome, mixed, mixed4, answers, answers190, supervised, supervised5, repair, checked, prm or prm_prompt"; exit 2; }
runs=${REST_RUNS:-runs}/mawps_smollm2
bash scripts/setup.sh
mkdir -p "$runs"
.venv/bin/rest run "experiments/mawps_smollm2/$arm.yaml" "$@" --run-dir "$runs/$arm"
.venv/bin/python experiments/mawps_smollm2/report.py "$runs"/*/
