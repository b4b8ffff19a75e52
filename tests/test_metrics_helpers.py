"""Reading a live /metrics in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import http_get


def metric_samples(port: int) -> list:
    status, body = http_get(port, "/metrics")
    assert status == 200
    return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def metric_total(port: int, name: str, **labels: str) -> float:
    """Sum of ``name`` over every worker, restricted to ``labels``."""
    return sum(s.value for s in metric_samples(port)
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
