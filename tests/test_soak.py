"""benchmarks/soak.py for 20 seconds: churn, echo and fan-out without a single error, memory flat, fds back.

The real soak runs for minutes (``python -m benchmarks.soak``) or hours (``--hours``); this short run proves
the instrument and catches what shows up fast: a leaked descriptor per closed connection, a lost echo or
delivery, a counter that does not come back to zero, or memory that grows with churn (a few KB retained per
closed connection would add megabytes over the ~600 connections churned here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e

SECONDS, CONNECTIONS, CHURN, SUBSCRIBERS = 20, 200, 30, 30
# Bytes of anonymous PSS (slope x window, 14 s after a 6 s warm-up).  The file-backed part of PSS moves with
# every Python process that starts or exits on the machine, so only a loose bound applies to the total.
MAX_ANON_DRIFT_OVER_WINDOW = 1_500_000
MAX_PSS_DRIFT_OVER_WINDOW = 6_000_000


def test_short_soak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--seconds", str(SECONDS), "--connections", str(CONNECTIONS),
         "--churn", str(CHURN), "--echo-rate", "300", "--subscribers", str(SUBSCRIBERS), "--publish-rate", "5",
         "--sample-every", "1", "--warmup", "6", "--quiet", "--json-out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.exists(), done.stdout + done.stderr
    result = json.loads(out.read_text())
    summary = {k: v for k, v in result.items() if k != "samples"}
    assert result["errors"] == {}, (result["errors"], result["error_examples"])
    assert done.returncode == 0 and result["ok"], summary
    counts = result["counts"]
    # Churn really happened, and every connection we opened ended with a clean closing handshake.
    assert counts["churned_echo"] >= CHURN * (SECONDS - 4), counts
    opened = sum(v for k, v in counts.items() if k.startswith("opened_"))
    assert counts["closed_clean"] == opened, counts
    assert counts["echoes"] >= 300 * (SECONDS - 4), counts
    if result["pubsub"]:
        assert counts["publishes"] >= 5 * (SECONDS - 4)
        assert counts["deliveries"] >= counts["publishes"] * SUBSCRIBERS // 2, counts
    # No descriptor left behind, no worker lost, memory flat after the warm-up.
    fds = result["fds"]
    assert fds["after_close"] == fds["baseline"], fds
    assert fds["steady_max"] - fds["steady_min"] <= 2 * CHURN, fds
    assert result["worker_restarts"] == 0
    memory = result["memory"]
    assert memory["samples_in_window"] >= 10, memory
    anon, pss = memory["pss_anon"], memory["pss"]
    assert anon["drift_over_window_bytes"] < MAX_ANON_DRIFT_OVER_WINDOW, memory
    assert pss["drift_over_window_bytes"] < MAX_PSS_DRIFT_OVER_WINDOW, memory
    print(f"soak {result['duration_s']} s: {opened} connections opened and closed, {counts['echoes']} echoes, "
          f"{counts.get('deliveries', 0)} deliveries; PSS/connection {pss['per_connection']} B; drift over "
          f"{memory['window_s']} s: anon PSS {anon['drift_over_window_bytes'] / 1e3:.0f} kB, PSS "
          f"{pss['drift_over_window_bytes'] / 1e3:.0f} kB; fds {fds}")
