#!/usr/bin/env bash
# Install a Debian package that ships a service the tests start themselves (on free ports),
# without letting the package start or enable its own: `install-service.sh PACKAGE BINARY...`.
# Idempotent: does nothing when every BINARY is already on PATH.
set -euo pipefail
package=$1
shift
missing=0
for binary in "$@"; do command -v "$binary" >/dev/null 2>&1 || missing=1; done
if [ "$missing" -eq 0 ]; then
    echo "$package already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101 = "do not start services from maintainer scripts".
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() {
    if [ "$CREATED_POLICY" -eq 1 ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$package" >/dev/null
# Where systemd runs, the unit is stopped and disabled: the tests own every instance.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now "$package" >/dev/null 2>&1 || true
fi
for binary in "$@"; do "$binary" --version 2>&1 | head -n1; done
