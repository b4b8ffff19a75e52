"""deploy/millionws and locust/ manifests: schema-valid for the cluster's Kubernetes version, linted,
and consistent with each other, with the server's flags and with the Terraform node group."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
from opshelpers import (
    K8S,
    LOCUST,
    ROOT,
    SERVER_METRICS,
    TERRAFORM,
    by_kind,
    env_of,
    example_kubernetes_version,
    kustomize_resources,
    load_yaml_docs,
    server_env_vars,
    tf_blocks,
)

# Kinds served by CRDs (no schema in kubernetes-validate): checked structurally below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

# Namespaced sysctls Kubernetes treats as safe (allowed without kubelet flags) in 1.29+,
# and that the baseline/restricted Pod Security Standards admit.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def manifest_docs() -> list[tuple[str, dict]]:
    docs = []
    for directory in (K8S, LOCUST):
        for path in kustomize_resources(directory):
            for doc in load_yaml_docs(path):
                docs.append((str(path.relative_to(ROOT)), doc))
    return docs


@pytest.fixture(scope="module")
def k8s_version() -> str:
    return example_kubernetes_version()


def test_kustomization_lists_every_manifest() -> None:
    # secret.example.yaml: the operator creates the real Secret (deploy/PRODUCTION.md)
    not_resources = {"kustomization.yaml", "prometheus-adapter-values.yaml", "secret.example.yaml"}
    for directory in (K8S, LOCUST):
        listed = {p.name for p in kustomize_resources(directory)}
        present = {p.name for p in directory.glob("*.yaml")} - not_resources
        assert listed == present, f"{directory}: kustomization resources {listed} vs files {present}"


BUILTIN_DOCS = [(p, d) for p, d in manifest_docs() if (d["apiVersion"], d["kind"]) not in CRD_KINDS]


@pytest.mark.parametrize(("path", "doc"), BUILTIN_DOCS, ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_is_valid_for_cluster_version(path: str, doc: dict, k8s_version: str) -> None:
    from kubernetes_validate import utils

    utils.validate(doc, k8s_version, strict=True)


def test_validator_rejects_a_broken_deployment(k8s_version: str) -> None:
    """Negative control: the schema check above can fail."""
    from kubernetes_validate import utils

    broken = copy.deepcopy(by_kind("Deployment"))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 50  # typo
    with pytest.raises(utils.ValidationError):
        utils.validate(broken, k8s_version, strict=True)


def test_yamllint_is_clean() -> None:
    config = Path(__file__).with_name("yamllint.yaml")
    r = subprocess.run(
        [sys.executable, "-m", "yamllint", "-s", "-c", str(config), str(ROOT / "deploy"), str(LOCUST)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_selectors_ports_and_probes_line_up() -> None:
    dep, pdb = by_kind("Deployment"), by_kind("PodDisruptionBudget")
    services = [by_kind("Service", name=n) for n in ("millionws", "millionws-admin")]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    (container,) = dep["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for svc in services:
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names
    env = env_of(container)
    assert int(env["MILLIONWS_PORT"]["value"]) == port_names["http"]
    assert int(env["MILLIONWS_ADMIN_PORT"]["value"]) == port_names["admin"]
    # readiness also asks for the bus (test_reference_deployment.py); the others only for the process
    paths = {"startupProbe": "/health", "readinessProbe": "/health?ready", "livenessProbe": "/health"}
    for probe, path in paths.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["port"] == "http", probe
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port_names["admin"]


def test_env_names_are_server_flags() -> None:
    (container,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    unknown = set(env_of(container)) - server_env_vars()
    assert not unknown, f"`millionws serve --help` documents no {sorted(unknown)}"


def test_termination_grace_matches_prestop_and_drain() -> None:
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    grace = float(env_of(container)["MILLIONWS_GRACE"]["value"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    total = spec["terminationGracePeriodSeconds"]
    margin = total - pre_stop - grace
    assert 5 <= margin <= 15, f"terminationGracePeriodSeconds {total} != preStop {pre_stop} + grace {grace} + 5..15"
    # readiness must notice the 503 quickly; liveness must outlast the drain
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= pre_stop
    assert live["periodSeconds"] * live["failureThreshold"] > grace


def test_rollout_never_drops_capacity() -> None:
    dep = by_kind("Deployment")
    assert "replicas" not in dep["spec"], "the HPA owns replicas; a fixed count fights it on every apply"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_sysctls_are_safe_and_security_context_is_restricted() -> None:
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    names = {s["name"] for s in spec["securityContext"]["sysctls"]}
    assert "net.ipv4.ip_local_port_range" in names
    assert names <= SAFE_SYSCTLS, f"unsafe sysctls need kubelet --allowed-unsafe-sysctls: {names - SAFE_SYSCTLS}"
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    ns = by_kind("Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pods_land_on_the_terraform_connection_node_group() -> None:
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    tf_locals = tf_blocks(TERRAFORM / "clusters" / "example" / "main.tf", "locals")
    assert spec["nodeSelector"].items() <= tf_locals["connection_labels"].items()
    effects = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}
    for taint in tf_locals["connection_taints"]:
        assert {"key": taint["key"], "operator": "Equal", "value": taint["value"],
                "effect": effects[taint["effect"]]} in spec["tolerations"]  # fmt: skip
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_service_is_an_nlb_with_local_traffic_and_long_idle_timeout() -> None:
    svc = by_kind("Service", name="millionws")
    ann = svc["metadata"]["annotations"]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert ann["service.beta.kubernetes.io/aws-load-balancer-type"] == "external"
    assert ann["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"] == "instance"
    for port in svc["spec"]["ports"]:
        key = f"service.beta.kubernetes.io/aws-load-balancer-listener-attributes.{port['protocol']}-{port['port']}"
        attrs = dict(kv.split("=") for kv in ann[key].split(","))
        assert int(attrs["tcp.idle_timeout.seconds"]) >= 3600


def test_hpa_custom_metric_is_served_by_the_adapter_rule() -> None:
    hpa, dep = by_kind("HorizontalPodAutoscaler"), by_kind("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    metric_name = kinds["Pods"]["pods"]["metric"]["name"]

    (values,) = load_yaml_docs(K8S / "prometheus-adapter-values.yaml")
    rules = values["rules"]["custom"]
    served = {r["name"]["as"]: r for r in rules}
    assert metric_name in served, f"no adapter rule serves {metric_name}"
    rule = served[metric_name]
    series = rule["seriesQuery"].split("{")[0]
    assert series in SERVER_METRICS
    assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"
    assert rule["metricsQuery"].startswith("sum(")  # over the pod's workers

    (container,) = dep["spec"]["template"]["spec"]["containers"]
    per_pod_cap = int(env_of(container)["MILLIONWS_MAX_CONNECTIONS"]["value"])
    assert int(kinds["Pods"]["pods"]["target"]["averageValue"]) < per_pod_cap
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_servicemonitor_selects_the_service() -> None:
    sm, svc = by_kind("ServiceMonitor"), by_kind("Service", name="millionws-admin")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports and ep["path"] == "/metrics"
    assert set(sm["spec"].keys()) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "podTargetLabels"}


def test_every_manifest_is_in_the_kustomization_namespace() -> None:
    for directory in (K8S, LOCUST):
        (kust,) = load_yaml_docs(directory / "kustomization.yaml")
        for path in kustomize_resources(directory):
            for doc in load_yaml_docs(path):
                if doc["kind"] == "Namespace":
                    assert doc["metadata"]["name"] == kust["namespace"]
                else:
                    assert doc["metadata"].get("namespace") == kust["namespace"], f"{path.name} {doc['kind']}"
