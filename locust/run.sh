#!/usr/bin/env bash
# Run the millionws Locust load test.
#
#   locust/run.sh [local|distributed|k8s] [extra locust args...]
#
#   local        one Locust process, headless            (default)
#   distributed  one master + LOCUST_WORKERS worker processes on this machine, headless
#   k8s          apply locust/ to the current kubectl context, wait for the workers,
#                then print how to open the web UI
#
# Settings (environment); Locust's own LOCUST_* name wins over the short one, as Locust itself reads
# LOCUST_HOST & co. (the Kubernetes manifest sets LOCUST_HOST) and a command-line flag would hide it:
#   LOCUST_HOST, HOST              target, default http://127.0.0.1:8080
#   LOCUST_USERS, USERS            concurrent users (= WebSocket connections), default 100
#   LOCUST_SPAWN_RATE, SPAWN_RATE  users started per second, default 50
#   LOCUST_RUN_TIME, RUN_TIME      e.g. 30s, 5m, default 30s
#   LOCUST_WORKERS                 worker processes in distributed mode, default: CPU count
#   OUT                            CSV/JSON/HTML report prefix, default locust-report/run
#   DRY_RUN=1                      print the locust command lines instead of running them
# and every locustfile option as LOCUST_<OPTION>, e.g. LOCUST_ECHO_INTERVAL=0.5,
# LOCUST_PAYLOAD_BYTES=256, LOCUST_PUBSUB=off.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE="${1:-local}"
[ $# -gt 0 ] && shift

HOST="${LOCUST_HOST:-${HOST:-http://127.0.0.1:8080}}"
USERS="${LOCUST_USERS:-${USERS:-100}}"
SPAWN_RATE="${LOCUST_SPAWN_RATE:-${SPAWN_RATE:-50}}"
RUN_TIME="${LOCUST_RUN_TIME:-${RUN_TIME:-30s}}"
OUT="${OUT:-locust-report/run}"
LOCUSTFILE="$HERE/locustfile.py"

# DRY_RUN=1: show what would run (tests/ops/test_locust.py reads it), start nothing.
run() {
  if [ "${DRY_RUN:-}" = 1 ]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

# One user holds one socket: lift the soft open-files limit as far as allowed.
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

headless_args=(--headless -u "$USERS" -r "$SPAWN_RATE" -t "$RUN_TIME"
               --csv "$OUT" --json-file "$OUT" --html "$OUT.html" --only-summary)

case "$MODE" in
  local)
    run mkdir -p "$(dirname "$OUT")"
    run locust -f "$LOCUSTFILE" --host "$HOST" "${headless_args[@]}" "$@"
    ;;
  distributed)
    run mkdir -p "$(dirname "$OUT")"
    workers="${LOCUST_WORKERS:-$(nproc)}"
    pids=()
    cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
    trap cleanup EXIT
    for _ in $(seq "$workers"); do
      run locust -f "$LOCUSTFILE" --worker --master-host 127.0.0.1 "$@" &
      pids+=("$!")
    done
    [ "${DRY_RUN:-}" = 1 ] && wait
    run locust -f "$LOCUSTFILE" --master --host "$HOST" --expect-workers "$workers" \
      --expect-workers-max-wait 60 "${headless_args[@]}" "$@"
    ;;
  k8s)
    kubectl apply -k "$HERE"
    kubectl -n locust rollout status deployment/locust-master --timeout=180s
    kubectl -n locust rollout status deployment/locust-worker --timeout=300s
    echo "Web UI: kubectl -n locust port-forward svc/locust-master 8089  ->  http://localhost:8089"
    echo "More load: kubectl -n locust scale deployment/locust-worker --replicas=N (<= ~50k users per worker)"
    ;;
  *)
    echo "usage: $0 [local|distributed|k8s] [locust args...]" >&2
    exit 2
    ;;
esac
