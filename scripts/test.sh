#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run every test (pass pytest options, e.g. -m "not integration").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
