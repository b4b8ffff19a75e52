"""deploy/local/dashboard.json: every panel query names metrics the server really exports."""

from __future__ import annotations

import pytest
from opshelpers import (
    CHANNEL_METRICS,
    LOCAL,
    SERVER_METRICS,
    dashboard_targets,
    load_json,
    parse_metrics_text,
    promql_metric_names,
    series_names,
    substitute_grafana_vars,
)

DASHBOARD = LOCAL / "dashboard.json"

# Metric series the dashboard may use although a live /metrics does not show them
# yet. Only channel metrics may ever be listed here, e.g.
#     ALLOWED_MISSING = series_names({"millionws_fanout_latency_seconds"})
# and the live test fails as soon as a listed name appears, so the set only shrinks.
# Empty: the server exports every metric the dashboard uses.
ALLOWED_MISSING: set[str] = set()


def _exprs() -> list[tuple[str, str]]:
    return [(title, substitute_grafana_vars(e, {"pod": ".*", "datasource": "prometheus"})) for title, e in
            dashboard_targets(load_json(DASHBOARD))]  # fmt: skip


def _names_used() -> set[str]:
    names: set[str] = set()
    for _, expr in _exprs():
        names |= promql_metric_names(expr)
    return names


def test_dashboard_is_grafana_json_with_unique_ids() -> None:
    d = load_json(DASHBOARD)
    assert d["uid"] == "millionws"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "pod"} <= variables
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys()


def test_every_expression_names_at_least_one_metric() -> None:
    for title, expr in _exprs():
        assert promql_metric_names(expr), f"{title}: no metric in {expr!r}"
        assert expr.count("(") == expr.count(")"), f"{title}: unbalanced parentheses in {expr!r}"


def test_dashboard_uses_only_declared_server_metrics() -> None:
    """Catches typos offline: every name is one of the server's documented series."""
    unknown = _names_used() - series_names(SERVER_METRICS | CHANNEL_METRICS)
    assert not unknown, f"dashboard uses metrics the server does not document: {sorted(unknown)}"


@pytest.mark.parametrize(
    ("subject", "needles"),
    [
        ("active connections per pod", ["sum by (pod) (millionws_connections_active"]),
        ("active connections total", ["sum(millionws_connections_active"]),
        ("accept rate", ["rate(millionws_connections_accepted_total"]),
        ("disconnect rate by reason", ["sum by (reason) (rate(millionws_disconnections_total"]),
        ("messages per second", ["rate(millionws_messages_received_total", "rate(millionws_messages_sent_total"]),
        ("bytes per second", ["rate(millionws_bytes_received_total", "rate(millionws_bytes_sent_total"]),
        ("memory per connection", ["millionws_process_resident_memory_bytes{pod=~\".*\"}) / clamp_min(sum by (pod) "
                                   "(millionws_connections_active"]),
        ("open fds", ["millionws_process_open_fds"]),
        ("loop-turn quantiles", ["histogram_quantile(0.99, sum by (le) (rate(millionws_loop_turn_seconds_bucket"]),
        ("fan-out latency", ["histogram_quantile(0.99, sum by (le) (rate(millionws_fanout_latency_seconds_bucket"]),
        ("slow consumers", ["millionws_slow_consumers_total"]),
        # saturation per worker, not only a sum over the pod that hides one hot worker
        ("worker saturation per worker", ["sum by (pod, worker) (rate(millionws_loop_turn_seconds_sum"]),
        ("loop-turn p99 per worker", ["sum by (pod, worker, le) (rate(millionws_loop_turn_seconds_bucket"]),
        ("descriptors against the limit per worker", ["millionws_process_open_fds{pod=~\".*\"} / "
                                                      "millionws_process_max_fds"]),
    ],
)  # fmt: skip
def test_dashboard_covers(subject: str, needles: list[str]) -> None:
    exprs = [e for _, e in _exprs()]
    for needle in needles:
        assert any(needle in e for e in exprs), f"no panel for {subject}: nothing contains {needle!r}"


def test_allowed_missing_is_only_channel_metrics() -> None:
    assert ALLOWED_MISSING <= series_names(CHANNEL_METRICS)


@pytest.mark.e2e
def test_dashboard_metrics_exist_in_live_metrics(millionws_server) -> None:
    exported = parse_metrics_text(millionws_server.metrics_text())
    missing = _names_used() - exported
    unexpected = missing - ALLOWED_MISSING
    assert not unexpected, f"dashboard queries metrics that /metrics lacks: {sorted(unexpected)}"
    # Shrink ALLOWED_MISSING once the server exports a name (keeps the set honest).
    now_present = ALLOWED_MISSING & exported
    assert not now_present, f"remove from ALLOWED_MISSING, /metrics has them now: {sorted(now_present)}"
