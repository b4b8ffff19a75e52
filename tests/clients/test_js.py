"""The JavaScript client (``clients/js``, npm ``millionws-client``), tested by its own runner.

``node --test`` runs its files (clients/js/test/): the protocol, auth and resume tests against real
millionws servers they start from this tree (with the Python running this suite, 2 workers each, a real
``nats-server`` for ``--bus``), and headless Chromium (Debian's, driven by ``playwright-core``) loading a
page that uses the module through a drain and restart.  ``MILLIONWS_REQUIRE_ALL=1`` makes a missing
``nats-server`` or Chromium fail there instead of skipping; here, a Node or Chromium that cannot be installed
skips with the installer's reason (fails on CI).  A test the node runner skips for a reason of the server
(an API not on it yet) is reported as a warning, never silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.interop.browser import chromium_path
from tests.interop.conftest import install

pytestmark = pytest.mark.e2e

JS = ROOT / "clients" / "js"
BROWSER_TESTS = ["test/browser.test.mjs"]


@pytest.fixture(scope="module")
def node() -> str:
    install("install-js.sh", "node and the clients/js dev packages", folder="clients")
    path = shutil.which("node")
    assert path is not None
    return path


def nats_server() -> str | None:
    return shutil.which("nats-server") or next(
        (str(p) for p in [Path(sys.executable).parent / "nats-server"] if p.exists()), None)


def run(node: str, files: list[str], **env: str) -> str:
    environment = {**os.environ, "MILLIONWS_PYTHON": sys.executable, "MILLIONWS_REQUIRE_ALL": "1", **env}
    if nats := nats_server():
        environment["NATS_SERVER"] = nats
    proc = subprocess.run([node, "--test", *files], cwd=JS, env=environment, capture_output=True, text=True,
                          timeout=110)
    out = proc.stdout
    failed = [line for line in out.splitlines() if line.startswith("not ok")]
    assert proc.returncode == 0 and not failed, f"{failed}\n{out[-6000:]}\n{proc.stderr[-2000:]}"
    assert re.search(r"^# pass [1-9]", out, re.M), out[-2000:]
    for skipped in re.findall(r"^\s*ok \d+ - (.*# SKIP.*)$", out, re.M):
        warnings.warn(f"clients/js: {skipped}", stacklevel=1)
    return out


def test_node_suite(node):
    """Unit rules, the protocol against a real server, auth and token refresh, resume across a drain."""
    files = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.mjs"))
    run(node, [f for f in files if f not in BROWSER_TESTS])


def test_headless_chromium(node):
    install("install-chromium.sh", "chromium")
    chromium = chromium_path()
    assert chromium is not None
    run(node, BROWSER_TESTS, CHROMIUM=chromium)
