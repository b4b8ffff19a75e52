"""Real clients against a real server, over ``ws://`` and ``wss://``: one server per module and scheme.

``target`` is module-scoped and parametrized by scheme, so every test of a module runs once over plain
TCP and once over TLS against the same two servers (2 workers each, ``/metrics`` on a plain admin port).
The TLS server presents ``test_ca.server`` (a leaf for localhost and 127.0.0.1 signed by the CA made for
this run); clients verify it against ``test_ca.ca_path``.  A module may add server flags with a
module-level ``SERVER_ARGS`` list.

When a module is done with a server, its counters are checked (:meth:`Target.check_counters`): TLS
handshakes happened (wss) or none did (ws), no TLS handshake failed except those a test announced in
``target.expected_tls_failures``, no WebSocket handshake was refused, every connection ended normally
and no exception reached an exception boundary (``millionws_internal_errors_total`` all 0).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, Server, free_port, wait_for
from tests.test_metrics_helpers import metric_samples
from tests.tlsca import TestCA

SCHEMES = ("ws", "wss")
STATS_INTERVAL = 0.05  # counters reach /metrics this late at most
# Sizes around the frame header's length encodings (7 bits, 16 bits, 64 bits) and the server's
# default --max-message-size (1 MiB): the largest message it accepts.
SIZES = (0, 125, 126, 65535, 65536, (1 << 20) - 1)


class Target:
    """One running server of a module and how a client reaches it."""

    def __init__(self, scheme: str, test_ca: TestCA, args: list[str]) -> None:
        self.scheme = scheme
        self.ca = test_ca
        self.ca_path = str(test_ca.ca_path)
        admin = free_port()
        tls = ["--tls-cert", str(test_ca.server[0]), "--tls-key", str(test_ca.server[1])] if scheme == "wss" else []
        self.server = Server(free_port(), 2, [*tls, "--admin-port", str(admin), "--stats-interval",
                                               str(STATS_INTERVAL), *args], stats_port=admin)
        self.port = self.server.port
        self.admin_port = admin
        self.expected_tls_failures: Counter[str] = Counter()

    @property
    def tls(self) -> bool:
        return self.scheme == "wss"

    def url(self, path: str = "/echo", host: str = "localhost") -> str:
        """``host``: ``localhost`` (the leaf's DNS name) or ``127.0.0.1`` (its IP address SAN)."""
        return f"{self.scheme}://{host}:{self.port}{path}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the test CA only, hostname checked; ``None`` over ws://."""
        return self.ca.client_context() if self.tls else None

    def counters(self, name: str, label: str) -> Counter[str]:
        """``name`` summed over the workers, by the value of ``label``."""
        totals: Counter[str] = Counter()
        for sample in metric_samples(self.admin_port):
            if sample.name == name:
                totals[sample.labels.get(label, "")] += sample.value
        return totals

    def total(self, name: str) -> float:
        return sum(self.counters(name, "worker").values())

    def wait_disconnected(self, reason: str, at_least: float) -> None:
        """The server saw ``at_least`` WebSockets end for ``reason`` (``normal``: the peer's Close)."""
        wait_for(lambda: self.counters("millionws_disconnections_total", "reason")[reason] >= at_least, 10,
                 what=f"{at_least} disconnections ({reason}) counted by the server")

    def check_counters(self) -> None:
        wait_for(lambda: self.total("millionws_connections_active") == 0, 10, what="every WebSocket closed")
        time.sleep(3 * STATS_INTERVAL)  # the last flush of every worker is in
        handshakes = self.total("millionws_tls_handshakes_total")
        assert handshakes > 0 if self.tls else handshakes == 0, handshakes
        failures = +self.counters("millionws_tls_handshake_failures_total", "reason")
        assert failures == +self.expected_tls_failures, "TLS handshake failures"
        assert not +self.counters("millionws_handshake_failures_total", "reason"), "WebSocket handshakes refused"
        ended = +self.counters("millionws_disconnections_total", "reason")
        assert set(ended) <= {"normal"}, f"WebSockets that did not end with a closing handshake: {ended}"
        assert not +self.counters("millionws_internal_errors_total", "where"), "internal errors"

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module", params=SCHEMES)
def target(request: pytest.FixtureRequest, test_ca: TestCA) -> Iterator[Target]:
    target = Target(request.param, test_ca, list(getattr(request.module, "SERVER_ARGS", [])))
    try:
        yield target
        target.check_counters()
    finally:
        target.stop()


def text_of(size: int) -> str:
    """A text message of exactly ``size`` bytes of UTF-8, mostly 2-byte characters (split across frames
    and reads, they must still be validated as a whole)."""
    return "é" * (size // 2) + "a" * (size % 2)


def blob_of(size: int) -> bytes:
    """A binary message of ``size`` bytes, every byte value present."""
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def install(script: str, what: str, folder: str = "interop") -> None:
    """Run the idempotent installer ``tests/<folder>/<script>`` (what ``scripts/test-system-deps`` runs
    first); if it fails, skip saying why, unless on CI (``CI`` set), where every client must run."""
    proc = subprocess.run(["bash", str(ROOT / "tests" / folder / script)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = f"{what} not installed: bash tests/{folder}/{script} failed: {lines[-1] if lines else proc.returncode}"
        # On CI a missing client fails; elsewhere (no apt, no network) it skips, saying why.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
