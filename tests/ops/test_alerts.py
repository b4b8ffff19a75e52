"""deploy/prometheus/alerts.yml: promtool accepts the rules, its unit tests (alerts.test.yml) pass and can
fail, every rule has a firing and a quiet case, every series named is one the server exports, and the
Kubernetes PrometheusRule carries the same rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from opshelpers import DEPLOY, K8S, LOCAL, by_kind, promql_metric_names
from prometheus_client.parser import text_string_to_metric_families

from millionws import metrics

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool missing: run tests/ops/install-prometheus.sh"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


def test_promtool_unit_tests_pass() -> None:
    r = promtool("test", "rules", str(ALERT_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("old", "new"), [
    ("rate(millionws_loop_turn_seconds_sum[5m])) > 0.8", "rate(millionws_loop_turn_seconds_sum[5m])) > 0.95"),
    ("sum by (job, instance, namespace, pod, worker) (rate(millionws_loop_turn_seconds_sum",
     "sum by (job, instance, namespace, pod) (rate(millionws_loop_turn_seconds_sum"),  # a pod's sum
    ("and on (job, instance) millionws_bus_configured == 1", ""),
    ("millionws_process_open_fds / millionws_process_max_fds > 0.9", "millionws_process_open_fds > 15000"),
    ("> 3 * sum by (job, namespace, reason)", "> 0 * sum by (job, namespace, reason)"),
    ("* 60 > 5", "* 60 > 0.5"),
])  # fmt: skip
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    """Negative controls: each change breaks a rule the way a careless edit would; promtool's tests fail."""
    text = ALERTS.read_text()
    assert text.count(old) == 1, old
    (tmp_path / "alerts.yml").write_text(text.replace(old, new))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    assert promtool("check", "rules", str(tmp_path / "alerts.yml")).returncode == 0  # still valid rules
    r = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr, r.stdout


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]  # fmt: skip
    for rule in rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: no case where it must not fire"
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]


def test_rules_name_only_series_the_server_exports() -> None:
    shared = metrics.SharedStats(1)
    metrics.WorkerStats(shared, 0).flush()
    exported = {"up"}
    for family in text_string_to_metric_families(metrics.render(shared).decode()):
        exported |= {sample.name for sample in family.samples}
    for rule in rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, (rule["alert"], names - exported)


def test_saturation_is_per_worker() -> None:
    """The issue's point: a sum over the pod hides one hot worker, so the loop-turn rules keep `worker`."""
    for rule in rules():
        if "millionws_loop_turn_seconds" in rule["expr"]:
            assert "worker" in rule["expr"].split("by (", 1)[1].split(")", 1)[0], rule["alert"]


def test_kubernetes_prometheusrule_carries_the_same_rules() -> None:
    rule = by_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], \
        "deploy/millionws/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: copy the groups over"
    servicemonitor = by_kind("ServiceMonitor")
    assert rule["metadata"]["labels"]["release"] == servicemonitor["metadata"]["labels"]["release"], \
        "kube-prometheus-stack selects both by the same release label"


def test_local_prometheus_loads_the_rules() -> None:
    (config,) = yaml.safe_load_all((LOCAL / "prometheus.yml").read_text())
    assert [(LOCAL / path).resolve() for path in config["rule_files"]] == [ALERTS.resolve()]
    compose = yaml.safe_load((LOCAL / "compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "../prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    # inside the container the same relative path reaches the mounted file
    assert Path("/etc/prometheus", config["rule_files"][0]).resolve() == Path("/etc/prometheus/alerts.yml")
    assert K8S.is_dir()
