#!/usr/bin/env bash
# Node.js + npm from Debian, then the pinned dev packages of clients/js (ws, playwright-core:
# package-lock.json) with `npm ci` into clients/js/node_modules, for tests/clients/test_js.py.  The client
# itself has no dependency; these only test it.  Idempotent: one line when there is nothing to do.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
exec bash "$root/tests/interop/install-node.sh" "$root/clients/js" "clients/js dev packages"
