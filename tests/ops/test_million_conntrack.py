"""benchmarks.million keeps loopback out of connection tracking, which podman's networking loads (the container
tests run just before this one in ``just test-containers``): with the run's nft table in place, new loopback
connections leave no nf_conntrack entry; once restored, the table is gone and tracking is back.

The table is renamed for the test, so a million run going on at the same time keeps its own.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from benchmarks import million
from tests.ops.podmanhelpers import unavailable

pytestmark = pytest.mark.e2e

PROC = Path("/proc/net/nf_conntrack")


def tracked_to(port: int) -> int:
    return sum(1 for line in PROC.read_text().splitlines() if f"dport={port} " in line and "src=127.0.0.1" in line)


def connect_some(n: int = 20) -> tuple[int, int]:
    """n loopback connections to a fresh port, held open while counted; the port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(n)
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        accepted = [server.accept()[0] for _ in range(n)]
        try:
            return tracked_to(port), port
        finally:
            for s in clients + accepted:
                s.close()


def test_loopback_is_untracked_during_the_run_and_tracked_after(monkeypatch) -> None:
    if os.geteuid() != 0:
        unavailable("the million run's conntrack exemption needs root (nft)")
    if not shutil.which("nft"):
        unavailable("no nft: scripts/bench-system-deps installs nftables")
    if million.sysctl_get("net.netfilter.nf_conntrack_max") is None or not PROC.exists():
        unavailable("nf_conntrack is not loaded: nothing to exempt loopback from (podman's networking loads it)")
    table = f"millionws_notrack_test{os.getpid()}"
    monkeypatch.setattr(million, "NOTRACK_TABLE", table)
    monkeypatch.setattr(million, "NOTRACK_NFT", million.NOTRACK_NFT.replace("millionws_notrack", table))
    concurrent_run = million.run_tool(["nft", "list", "table", "inet", "millionws_notrack"])[0]

    before, _ = connect_some()
    if not concurrent_run:
        assert before >= 20, "loopback connections should be tracked while nf_conntrack is loaded"

    entry = million.exempt_loopback_from_conntrack(1_000_000)
    try:
        assert entry["applied"] and entry["method"].startswith("nft"), entry
        assert entry["nf_conntrack_loaded"] is True
        during, port = connect_some()
        assert during == 0, f"{during} conntrack entries for port {port} with the notrack table in place"
    finally:
        million.restore_conntrack(entry)
    assert entry["restored"] is True
    assert not million.run_tool(["nft", "list", "table", "inet", table])[0], "the table outlived the run"
    after, _ = connect_some()
    if not concurrent_run:
        assert after >= 20, "tracking should be back after the restore"
