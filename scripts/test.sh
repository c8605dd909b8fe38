#!/usr/bin/env bash
# The one test command: install (idempotent, fast when done) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. "${TUFT_VENV:-.venv}/bin/activate"
exec python -m pytest -q "$@"
