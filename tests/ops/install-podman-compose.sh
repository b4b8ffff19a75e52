#!/usr/bin/env bash
# podman-compose from PyPI (1.6.x: Debian's 1.0.3 cannot parse deploy/local/compose.yml) into its own
# virtual environment: a tool of tests/ops/test_compose_stack.py, not a dependency of the project.
# Idempotent. Prints the path of the podman-compose executable.
#   PODMAN_COMPOSE_VENV   where to put the venv (default: ~/.cache/millionws-podman-compose-venv)
set -euo pipefail

PODMAN_COMPOSE_VERSION="1.6.0"
VENV="${PODMAN_COMPOSE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/millionws-podman-compose-venv}"
BIN="$VENV/bin/podman-compose"

if [ -x "$BIN" ] && "$VENV/bin/python" -m pip show podman-compose 2>/dev/null | grep -qx "Version: $PODMAN_COMPOSE_VERSION"; then
    echo "$BIN"
    exit 0
fi

python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "podman-compose==$PODMAN_COMPOSE_VERSION" >&2
echo "$BIN"
