#!/usr/bin/env bash
# redis-server from Debian, for tests/e2e/test_bus.py (--bus redis://); the tests start their own.
exec bash "$(dirname "$0")/install-service.sh" redis-server redis-server
