"""A real Prometheus (Debian package, tests/ops/install-prometheus.sh) scrapes a real millionws
with 2 workers every second; its HTTP API must report what the test did."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from opshelpers import (
    LOCAL,
    dashboard_targets,
    free_port,
    http_get,
    load_json,
    promql_metric_names,
    stop_process,
    substitute_grafana_vars,
    wait_until,
)
from websockets.sync.client import connect

pytestmark = pytest.mark.e2e


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> list[dict]:
        status, body = http_get(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=5)
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", f"{expr}: {status} {reply}"
        return reply["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def prometheus(millionws_server, tmp_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: run tests/ops/install-prometheus.sh"
    # The shipped local config, pointed at the test server and sped up to 1 s.
    (config,) = yaml.safe_load_all((LOCAL / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "millionws")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{millionws_server.port}"]}]
    config["scrape_configs"] = [job]
    # The shipped rule file, by its absolute path (the config names it relative to deploy/local/).
    config["rule_files"] = [str((LOCAL / rule).resolve()) for rule in config["rule_files"]]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))

    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited:\n{log.read_text()}"
            return http_get(prom.base + "/-/ready", timeout=1)[0] == 200

        wait_until(ready, 30, "prometheus /-/ready")
        wait_until(lambda: prom.scalar('up{job="millionws"}') == 1, 30, "first successful scrape")
        yield prom
    finally:
        stop_process(proc, timeout=10)


def test_active_connections_arrive_through_prometheus(millionws_server, prometheus: Prometheus) -> None:
    n = 7
    with contextlib.ExitStack() as stack:
        clients = []
        for i in range(n):
            ws = stack.enter_context(connect(f"{millionws_server.ws_base}/echo", open_timeout=5))
            ws.send(f"hello {i}")
            assert ws.recv(timeout=5) == f"hello {i}"
            clients.append(ws)

        wait_until(lambda: prometheus.scalar("sum(millionws_connections_active)") == n, 30,
                   f"sum(millionws_connections_active) == {n}")  # fmt: skip
        # one series per worker, all from the same pod (target)
        assert prometheus.scalar("count(millionws_connections_active)") == 2
        assert prometheus.scalar("count(count by (pod) (millionws_connections_active))") == 1
        wait_until(lambda: (prometheus.scalar("sum(millionws_messages_received_total)") or 0) >= n, 30,
                   "messages received counted")  # fmt: skip
        assert prometheus.scalar("sum(millionws_connections_accepted_total)") >= n

        for ws in clients[:3]:
            ws.close()
        wait_until(lambda: prometheus.scalar("sum(millionws_connections_active)") == n - 3, 30,
                   f"sum(millionws_connections_active) == {n - 3} after closing 3")  # fmt: skip
        wait_until(lambda: (prometheus.scalar("sum(millionws_disconnections_total)") or 0) >= 3, 30,
                   "disconnections counted")  # fmt: skip


def test_every_dashboard_query_runs_in_prometheus(millionws_server, prometheus: Prometheus) -> None:
    """The dashboard's PromQL is valid for a real Prometheus and the core panels have data."""
    with connect(f"{millionws_server.ws_base}/echo", open_timeout=5) as ws:
        ws.send("x")
        ws.recv(timeout=5)
        # rate() needs two samples inside the window
        wait_until(lambda: prometheus.query("count_over_time(millionws_connections_active[1m]) >= 3"), 30,
                   "three scrapes")  # fmt: skip
        for title, raw in dashboard_targets(load_json(LOCAL / "dashboard.json")):
            expr = substitute_grafana_vars(raw, {"pod": ".*"})
            result = prometheus.query(expr)  # raises on a syntax error
            core = {"millionws_connections_active", "millionws_connections_accepted_total",
                    "millionws_process_open_fds", "millionws_process_resident_memory_bytes",
                    "millionws_loop_turn_seconds_bucket", "millionws_messages_received_total"}  # fmt: skip
            if promql_metric_names(expr) & core and "histogram_quantile" not in expr:
                assert result, f"panel {title!r}: no data for {expr}"


def test_alert_rules_load_and_evaluate_without_error(millionws_server, prometheus: Prometheus) -> None:
    """The shipped alert rules run against a real server's series: every rule evaluates cleanly (a label
    clash in a join, say, is an evaluation error only real series show) and none fires on a healthy idle server."""

    def rules() -> list[dict]:
        status, body = http_get(f"{prometheus.base}/api/v1/rules?type=alert", timeout=5)
        assert status == 200
        found = [rule for group in json.loads(body)["data"]["groups"] for rule in group["rules"]]
        # before its first evaluation a rule's lastEvaluation is the zero time, 0001-01-01...
        return found if found and all(rule.get("lastEvaluation", "").startswith("2") for rule in found) else []

    # rate() windows need a few scrapes; every rule has then been evaluated at least once
    wait_until(lambda: prometheus.query("count_over_time(millionws_connections_active[1m]) >= 3"), 30, "three scrapes")
    evaluated = wait_until(rules, 30, "every alert rule evaluated")
    names = {rule["name"] for rule in evaluated}
    assert {"MillionwsWorkerSaturated", "MillionwsBrokerDown", "MillionwsFileDescriptorsNearLimit"} <= names
    for rule in evaluated:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert rule["state"] == "inactive", (rule["name"], rule["alerts"])
    # the series the descriptor and broker rules read are there, per worker, with the node's own values
    assert prometheus.scalar("count(millionws_process_max_fds)") == 2
    assert prometheus.scalar("max(millionws_bus_configured)") == 0
