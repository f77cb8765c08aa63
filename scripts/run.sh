#!/usr/bin/env bash
# One entry point for a fresh machine: builds .venv on first use, then runs a job.
#   bash scripts/run.sh demo [auq demo options]   train + evaluate on the embedded default
#   bash scripts/run.sh test [pytest options]     run the test suite
# torch: on a machine without an NVIDIA GPU the CPU build is installed first
# (AUQ_TORCH_SPEC, default torch==2.13.0), so pip never pulls CUDA wheels there.
set -euo pipefail
cd "$(dirname "$0")/.."

job="${1:-}"; shift || true
case "$job" in
  demo|test) ;;
  *) echo "usage: bash scripts/run.sh {demo|test} [options]" >&2; exit 2 ;;
esac

VENV="${AUQ_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

stamp="$VENV/.auq-installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "[auq] installing torch (GPU found)"
      "${PIP[@]}" install "${AUQ_TORCH_SPEC:-torch}"
    else
      echo "[auq] installing the CPU build of torch (${AUQ_TORCH_SPEC:-torch==2.13.0})"
      "${PIP[@]}" install "${AUQ_TORCH_SPEC:-torch==2.13.0}"
    fi
  fi
  echo "[auq] installing auq and its development extras"
  "${PIP[@]}" install -e ".[dev]"
  touch "$stamp"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1
if [ "$job" = demo ]; then
  exec "$VENV/bin/auq" demo "$@"
else
  exec "$VENV/bin/python" -m pytest -n "${AUQ_TEST_WORKERS:-2}" "$@"
fi
