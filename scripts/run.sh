#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the default recipe end to end (extra args go to `rest run`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rest run recipes/default.yaml "$@"
