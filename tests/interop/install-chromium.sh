#!/usr/bin/env bash
# Chromium from Debian, for tests/interop/test_chromium.py (driven headless over the DevTools protocol by
# tests/interop/browser.py).  Idempotent: one line when there is nothing to do.
set -euo pipefail
for binary in chromium chromium-browser; do
    if command -v "$binary" >/dev/null 2>&1; then
        echo "$binary already installed"
        exit 0
    fi
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
chromium --version
