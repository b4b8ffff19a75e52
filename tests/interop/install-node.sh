#!/usr/bin/env bash
# Node.js + npm from Debian (unless a node and an npm are already on PATH), then the pinned npm packages
# of a folder (package-lock.json) with `npm ci` into it: by default tests/interop/node, for
# tests/interop/test_node_ws.py; tests/clients/install-js.sh names clients/js.
# Idempotent: one line when there is nothing to do.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/node}"
what="${2:-tests/interop/node packages}"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    packages=()
    command -v node >/dev/null 2>&1 || packages+=(nodejs)
    command -v npm >/dev/null 2>&1 || packages+=(npm)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# npm ci writes node_modules/.package-lock.json: the same as package-lock.json when the install is current.
installed="$dir/node_modules/.package-lock.json"
if [ -f "$installed" ] && node -e '
    const fs = require("fs"), [a, b] = process.argv.slice(1).map((f) => JSON.parse(fs.readFileSync(f)).packages);
    delete a[""];
    process.exit(JSON.stringify(a) === JSON.stringify(b) ? 0 : 1);' "$dir/package-lock.json" "$installed"; then
    echo "node $(node --version) and $what already installed"
    exit 0
fi
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
echo "node $(node --version), npm $(npm --version): $what installed"
