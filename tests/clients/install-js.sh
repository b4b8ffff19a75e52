#!/usr/bin/env bash
# Node.js + npm from Debian (unless a node and an npm are already on PATH), then the pinned dev packages of
# clients/js (ws, playwright-core: package-lock.json) with `npm ci` into clients/js/node_modules, for
# tests/clients/test_js.py.  The client itself has no dependency; these only test it.
# Idempotent: one line when there is nothing to do.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/clients/js"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    packages=()
    command -v node >/dev/null 2>&1 || packages+=(nodejs)
    command -v npm >/dev/null 2>&1 || packages+=(npm)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# npm ci writes node_modules/.package-lock.json: the same packages as package-lock.json when the install is current.
installed="$dir/node_modules/.package-lock.json"
if [ -f "$installed" ] && node -e '
    const fs = require("fs"), [a, b] = process.argv.slice(1).map((f) => JSON.parse(fs.readFileSync(f)).packages);
    delete a[""];
    process.exit(JSON.stringify(a) === JSON.stringify(b) ? 0 : 1);' "$dir/package-lock.json" "$installed"; then
    echo "node $(node --version) and clients/js dev packages already installed"
    exit 0
fi
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
echo "node $(node --version), npm $(npm --version): clients/js dev packages installed"
