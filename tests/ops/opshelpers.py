"""Helpers for the operations tests (deploy/, infra/, locust/).

Static tests read files only. Tests marked ``e2e`` start the real server as
``python -m millionws serve --host 127.0.0.1 --port P --workers 2`` and wait
for ``/health`` with a deadline (never a bare sleep).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
LOCAL = DEPLOY / "local"
K8S = DEPLOY / "millionws"
TERRAFORM = ROOT / "infra" / "terraform"
LOCUST = ROOT / "locust"

# The metric families the server exports (issue 5 / the server's interface).
# Histograms are listed by family name; PromQL uses the _bucket/_sum/_count series.
SERVER_METRICS = {
    "millionws_connections_accepted_total",
    "millionws_connections_active",
    "millionws_disconnections_total",
    "millionws_handshake_failures_total",
    "millionws_messages_received_total",
    "millionws_messages_sent_total",
    "millionws_bytes_received_total",
    "millionws_bytes_sent_total",
    "millionws_http_requests_total",
    "millionws_process_resident_memory_bytes",
    "millionws_process_open_fds",
    "millionws_process_max_fds",
    "millionws_loop_turn_seconds",
    "millionws_accept_errors_total",
    "millionws_draining",
    "millionws_worker_restarts_total",
    "millionws_workers",
    # refusals
    "millionws_proxy_refused_total",
    "millionws_rate_limited_total",
    "millionws_auth_failures_total",
    "millionws_input_refused_total",
}
CHANNEL_METRICS = {
    "millionws_fanout_latency_seconds",
    "millionws_slow_consumers_total",
    "millionws_deliveries_total",
    "millionws_publishes_total",
    "millionws_subscriptions",
}
HISTOGRAMS = {"millionws_loop_turn_seconds", "millionws_fanout_latency_seconds"}


def series_names(families: set[str]) -> set[str]:
    """Every series name a PromQL expression may use for these families."""
    out = set()
    for name in families:
        if name in HISTOGRAMS:
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, ValueError, KeyError) as e:  # not up yet, partial output...
            last_exc = e
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, wait for the process to exit (the server drains), SIGKILL if it does not."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        self.ws_base = f"ws://127.0.0.1:{port}"

    def metrics_text(self) -> str:
        status, body = http_get(self.base + "/metrics")
        assert status == 200, status
        return body.decode()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def run_server(tmp_path: Path, workers: int = 2, extra: list[str] | None = None) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / f"millionws-{port}.log"
    cmd = [
        sys.executable, "-m", "millionws", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        *(extra or []),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLIONWS_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{server.output()}")
            status, body = http_get(server.base + "/health", timeout=1)
            return status == 200 and json.loads(body).get("status") == "ok"

        wait_until(healthy, 30, "millionws /health")
        yield server
    finally:
        stop_process(proc)


def load_yaml_docs(path: Path) -> list[dict]:
    import yaml

    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomize_resources(directory: Path) -> list[Path]:
    """The manifest files a kustomization.yaml lists, in order."""
    (kust,) = load_yaml_docs(directory / "kustomization.yaml")
    return [directory / r for r in kust["resources"]]


def by_kind(kind: str, directory: Path = K8S, name: str | None = None) -> dict:
    """The one object of ``kind`` (and ``name``, when several share the kind) a kustomization deploys."""
    found = [d for path in kustomize_resources(directory) for d in load_yaml_docs(path)
             if d["kind"] == kind and name in (None, d["metadata"]["name"])]  # fmt: skip
    assert len(found) == 1, f"expected one {kind} {name or ''} in {directory}, found {len(found)}"
    return found[0]


def env_of(container: dict) -> dict[str, dict]:
    """A container's env entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


def load_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


# --- PromQL -------------------------------------------------------------------

_PROMQL_WORDS = {
    # aggregation operators and modifiers
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
}  # fmt: skip
_GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${__rate_interval}": "1m",
    "${__interval}": "15s",
    "${__range}": "1h",
}


def substitute_grafana_vars(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana's built-in and dashboard variables so the text is plain PromQL."""
    for k, v in _GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    for name, value in (values or {}).items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a small lexer, enough for dashboard queries).

    Drops string literals, label matchers ``{...}``, range/subquery brackets ``[...]``,
    grouping clauses ``by (...)``/``without (...)``/``on (...)``/``ignoring (...)``/
    ``group_left (...)``/``group_right (...)``, function names (an identifier before
    ``(``), keywords and numbers. What is left are the metric names.
    """
    import re

    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        rest = s[m.end() :].lstrip()
        if rest.startswith("("):  # function call
            continue
        if word.lower() in _PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]?", word):
            continue
        # exponent part of a number such as 1e6
        if m.start() > 0 and s[m.start() - 1].isdigit():
            continue
        names.add(word)
    return names


def parse_metrics_text(text: str) -> set[str]:
    """Series names a Prometheus text exposition offers (samples and declared families)."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        if fam.type == "histogram":
            names |= {fam.name + "_bucket", fam.name + "_sum", fam.name + "_count"}
        for sample in fam.samples:
            names.add(sample.name)
    return names


def dashboard_targets(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows included."""
    out = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


# --- Terraform (python-hcl2) --------------------------------------------------


def unquote(value: Any) -> Any:
    """python-hcl2 keeps HCL string quotes ('"1.33"'); strip them, recursively."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


def load_hcl(path: Path) -> dict:
    import hcl2

    with open(path) as f:
        return hcl2.load(f)


def tf_blocks(path: Path, kind: str) -> dict[str, dict]:
    """{name: body} for the blocks of one kind (variable, output, module, locals...) in a .tf file."""
    out: dict[str, dict] = {}
    for block in load_hcl(path).get(kind, []):
        for name, body in unquote(block).items():
            out[name] = body
    return out


def example_kubernetes_version() -> str:
    """The Kubernetes version the example cluster runs (and the manifests are validated for)."""
    variables = tf_blocks(TERRAFORM / "clusters" / "example" / "variables.tf", "variable")
    return variables["kubernetes_version"]["default"]


# --- the server's command line -----------------------------------------------

_ENV_VARS: set[str] | None = None


def server_env_vars() -> set[str]:
    """MILLIONWS_* variables `millionws serve --help` documents (one per flag)."""
    global _ENV_VARS
    if _ENV_VARS is None:
        import re

        r = subprocess.run([sys.executable, "-m", "millionws", "serve", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        _ENV_VARS = set(re.findall(r"MILLIONWS_[A-Z0-9_]+", r.stdout))
        assert "MILLIONWS_PORT" in _ENV_VARS, r.stdout
    return _ENV_VARS
