#!/usr/bin/env bash
# The Autobahn WebSocket testsuite against millionws's /echo, in one command:
#
#   compliance/run.sh [CASES]          default "*": groups 1-10 and 12-13 (permessage-deflate)
#   compliance/run.sh "1.* 2.* 9.*"    some groups (patterns as Autobahn's: a * is a prefix match)
#
# It starts `millionws serve --compression deflate` on a free loopback port (one worker, 16 MiB messages:
# the 9.* cases send that much; no keepalive pings: one would show among the events a case compares),
# runs the shared harness (AUTOBAHN_TOOLS, default ../shared/tools/autobahn beside the repository; its
# README says how it installs the Python 2.7 testsuite) as agent "millionws", stops the server, and
# copies the summary to compliance/results/LABEL.txt (LABEL: AUTOBAHN_LABEL, default "millionws").
# Environment: AUTOBAHN_TIMEOUT (seconds for the whole wstest run, default 3600 here: the 216 deflate
# cases send 1000 messages of up to 128 KiB each), and the harness's own AUTOBAHN_* variables.
# Exit status: the harness's (0: no case failed).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${AUTOBAHN_TOOLS:-$ROOT/../shared/tools/autobahn}"
CASES="${1:-*}"
LABEL="${AUTOBAHN_LABEL:-millionws}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x $PY ]] || PY="$(command -v python3)"
[[ -x $TOOLS/run.sh ]] || { echo "compliance: no Autobahn harness at $TOOLS (set AUTOBAHN_TOOLS)" >&2; exit 2; }
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp -t millionws-compliance.XXXXXX)"
"$PY" -m millionws serve --host 127.0.0.1 --port "$PORT" --workers 1 --compression deflate \
  --max-message-size 16777216 --ping-interval 0 --log-level warning > "$LOG" 2>&1 &
SRV=$!
trap 'kill "$SRV" 2>/dev/null; wait "$SRV" 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 100); do
  "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$PORT" \
    2>/dev/null && break
  kill -0 "$SRV" 2>/dev/null || { echo "compliance: the server died:" >&2; cat "$LOG" >&2; exit 2; }
  sleep 0.1
done
mkdir -p "$ROOT/compliance/results"
RESULT="$ROOT/compliance/results/$LABEL.txt"
# Which code was tested: the commit, and whether millionws/ differed from it.
dirty=$(git -C "$ROOT" status --porcelain -- millionws 2>/dev/null | head -c1)
echo "millionws $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)${dirty:++uncommitted} on $(date -u +%F):" \
  "compliance/run.sh \"$CASES\"" | tee "$RESULT"
AUTOBAHN_ALL=1 AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-3600}" "$TOOLS/run.sh" "ws://127.0.0.1:$PORT/echo" "$LABEL" "$CASES" \
  | tee -a "$RESULT"
rc=${PIPESTATUS[0]}
kill -0 "$SRV" 2>/dev/null || { echo "compliance: the server died during the run:" >&2; cat "$LOG" >&2; rc=3; }
exit "$rc"
