#!/usr/bin/env bash
# Debian's chromium, for tests/e2e/test_compression.py (a browser's permessage-deflate, driven headless
# over the DevTools protocol; the test starts its own instance).
exec bash "$(dirname "$0")/install-service.sh" chromium chromium
