#!/usr/bin/env bash
# What the browser tests (tests/browser) need from the system: Debian's Chromium,
# which Playwright launches by path (it never downloads a browser of its own).
# Playwright itself comes from requirements-dev.txt. Safe to run again.
set -uo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "browser-deps: no apt-get here; install Chromium at /usr/bin/chromium (or set TUFT_CHROMIUM) to run tests/browser" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q && $SUDO apt-get install -y -q chromium \
  || echo "browser-deps: could not install chromium; tests/browser will skip" >&2
exit 0
