#!/usr/bin/env bash
# Prometheus (server + promtool) from Debian, for tests/ops; the tests start their own on free ports.
exec bash "$(dirname "$0")/../install-service.sh" prometheus prometheus promtool
