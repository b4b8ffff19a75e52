#!/usr/bin/env bash
# Install checkov (static policy checks for Terraform, Kubernetes and Dockerfiles)
# into its own virtual environment: checkov pins old versions of boto3, packaging
# and others that would downgrade the project's environment.
# Idempotent. Prints the path of the checkov executable.
#   CHECKOV_VENV   where to put the venv (default: ~/.cache/millionws-checkov-venv)
set -euo pipefail

CHECKOV_VERSION="3.3.30"
VENV="${CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/millionws-checkov-venv}"
BIN="$VENV/bin/checkov"

if [ -x "$BIN" ] && [ "$("$BIN" --version 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
    echo "$BIN"
    exit 0
fi

python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
"$BIN" --version >&2
echo "$BIN"
