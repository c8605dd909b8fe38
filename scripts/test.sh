#!/usr/bin/env bash
# The one test command: install (idempotent, fast when done) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. "${TUFT_VENV:-.venv}/bin/activate"
# Two pytest-xdist workers: most tests wait on subprocesses, so the two overlap. Each module, and
# all the vLLM tests together, run on one worker, longest first (tests/conftest.py).
# `bash scripts/test.sh -n 0` runs everything in this one process instead.
exec python -m pytest -q -n 2 --dist loadgroup "$@"
