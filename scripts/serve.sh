#!/usr/bin/env bash
# The one run command: install, then start TuFT on the built-in tiny model.
# Prints the URL and a ready tml- API key. Extra arguments go to `tuft`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. "${TUFT_VENV:-.venv}/bin/activate"
exec tuft --port "${PORT:-8080}" "$@"
