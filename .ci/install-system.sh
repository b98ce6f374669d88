#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's Chromium for the browser test of
# `cirlab serve` (tests/test_serve_browser.py drives it with Playwright; no browser is downloaded).
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
    echo "install-system: nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-system: need root (or sudo) to apt-get install ${need[*]}" >&2
        exit 1
    fi
fi
echo "install-system: apt-get install ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q "${need[@]}"
