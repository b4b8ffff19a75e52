"""The reference deployment is what SECURITY.md recommends for a server on the internet.

Each ``check_*`` reads the committed files (deploy/millionws, deploy/nats, deploy/Dockerfile and
every other file under deploy/) through one ``Reference`` and asserts one recommendation:
credentials from a Kubernetes Secret and none committed, metrics on an admin port that only
Prometheus reaches, explicit origins, rate limits, the NATS bus, readiness that includes the bus,
and an image with the broker extras. ``test_each_check_can_fail`` hands every check a copy broken
the way that check exists to catch, so no check passes vacuously.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import tomllib
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from opshelpers import (
    DEPLOY,
    K8S,
    ROOT,
    by_kind,
    env_of,
    example_kubernetes_version,
    kustomize_resources,
    load_yaml_docs,
)

SECRET_NAME = "millionws"
# environment variable -> key of the Secret
SECRET_ENV = {"MILLIONWS_AUTH_JWT_SECRET": "jwt-secret", "MILLIONWS_BACKEND_TOKEN": "backend-token"}
RATE_LIMITS = (
    "MILLIONWS_RATE_LIMIT_MESSAGES",
    "MILLIONWS_RATE_LIMIT_BYTES",
    "MILLIONWS_RATE_LIMIT_PUBLISHES",
    "MILLIONWS_MAX_CONNECT_RATE_PER_IP",
    "MILLIONWS_MAX_CONNECTIONS_PER_IP",
)
BROKER_EXTRAS = {"nats", "redis"}
NOT_IN_THE_IMAGE = {"test", "bench"}
NATS_VALUES = DEPLOY / "nats" / "values.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"


@dataclasses.dataclass
class Reference:
    deployment: dict
    services: list[dict]
    servicemonitor: dict
    networkpolicy: dict
    nats_values: dict
    prometheus_namespace: str
    dockerfile: str
    # every text file under deploy/, by path relative to deploy/
    texts: dict[str, str]

    @property
    def container(self) -> dict:
        (container,) = self.deployment["spec"]["template"]["spec"]["containers"]
        return container

    @property
    def env(self) -> dict[str, dict]:
        return env_of(self.container)

    def value(self, name: str) -> str:
        entry = self.env.get(name)
        assert entry is not None, f"deployment.yaml does not set {name}"
        assert "value" in entry, f"{name} has no literal value"
        return str(entry["value"])

    def container_port(self, name: str) -> int | None:
        ports = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
        return ports.get(name)

    def target_ports(self, svc: dict) -> set[int]:
        """Container ports a Service sends traffic to (named target ports resolved)."""
        out = set()
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            out.add(self.container_port(target) if isinstance(target, str) else target)
        return out


def load_reference() -> Reference:
    services = [d for path in kustomize_resources(K8S) for d in load_yaml_docs(path) if d["kind"] == "Service"]
    (adapter,) = load_yaml_docs(K8S / "prometheus-adapter-values.yaml")
    # http://kube-prometheus-stack-prometheus.monitoring.svc: the namespace Prometheus runs in
    prometheus_namespace = urllib.parse.urlsplit(adapter["prometheus"]["url"]).hostname.split(".")[1]
    (nats_values,) = load_yaml_docs(NATS_VALUES)
    texts = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            try:
                texts[str(path.relative_to(DEPLOY))] = path.read_text()
            except UnicodeDecodeError:
                continue
    return Reference(
        deployment=by_kind("Deployment"),
        services=services,
        servicemonitor=by_kind("ServiceMonitor"),
        networkpolicy=by_kind("NetworkPolicy"),
        nats_values=nats_values,
        prometheus_namespace=prometheus_namespace,
        dockerfile=(DEPLOY / "Dockerfile").read_text(),
        texts=texts,
    )


# --- the checks ---------------------------------------------------------------------------


def check_credentials_come_from_the_secret(ref: Reference) -> None:
    for name, key in SECRET_ENV.items():
        entry = ref.env.get(name)
        assert entry is not None, f"deployment.yaml does not set {name}"
        assert "value" not in entry, f"{name} is a literal: it must come from the Secret"
        ref_ = entry.get("valueFrom", {}).get("secretKeyRef")
        assert ref_ is not None, f"{name} does not come from a secretKeyRef"
        assert (ref_.get("name"), ref_.get("key")) == (SECRET_NAME, key), f"{name}: {ref_}"
        assert not ref_.get("optional", False), f"{name}: an optional key would start the pod without it"
    # an empty key counts as unset: auth_required makes the server refuse to start instead of serving open
    assert ref.value("MILLIONWS_AUTH_REQUIRED").lower() in ("1", "true", "yes", "on")


_SECRET_ASSIGNMENTS = (
    # MILLIONWS_BACKEND_TOKEN=x, MILLIONWS_BACKEND_TOKEN: x (compose, shell, Dockerfile ENV k=v)
    re.compile(r"\b(?:MILLIONWS_AUTH_JWT_SECRET|MILLIONWS_BACKEND_TOKEN)\b[\"'`]?[ \t]*[=:][ \t]*(?P<v>[^\s,}|`]*)"),
    # Dockerfile ENV k v
    re.compile(r"^\s*ENV\s+(?:MILLIONWS_AUTH_JWT_SECRET|MILLIONWS_BACKEND_TOKEN)\s+(?P<v>\S+)", re.M),
    # command lines
    re.compile(r"--(?:auth-jwt-secret|backend-token)(?:=|[ \t]+)(?P<v>\S+)"),
    re.compile(r"--from-literal=(?:jwt-secret|backend-token)=(?P<v>\S+)"),
)


def _literal_secrets(node: Any, where: str) -> list[str]:
    """Literal credentials in parsed YAML: env entries with a value, compose mappings, Secret data."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and node["name"] in SECRET_ENV and "value" in node:
            found.append(f"{where}: env {node['name']} has a literal value")
        if node.get("kind") == "Secret":
            for section in ("data", "stringData"):
                for key, value in (node.get(section) or {}).items():
                    if value not in (None, ""):
                        found.append(f"{where}: Secret {node['metadata']['name']} holds a value for {key}")
        for key, value in node.items():
            if (
                key in SECRET_ENV
                and isinstance(value, str | int | float)
                and str(value)
                and not str(value).startswith("$")
            ):
                found.append(f"{where}: {key} = {value!r}")
            found += _literal_secrets(value, where)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str):
                m = re.match(r"(MILLIONWS_AUTH_JWT_SECRET|MILLIONWS_BACKEND_TOKEN)=(.+)", item)
                if m and not m.group(2).startswith("$"):
                    found.append(f"{where}: {item!r}")
            found += _literal_secrets(item, where)
    return found


def check_no_secret_value_is_committed(ref: Reference) -> None:
    found = []
    for path, text in ref.texts.items():
        for pattern in _SECRET_ASSIGNMENTS:
            for m in pattern.finditer(text):
                value = m.group("v").strip("\"'")
                if value and not value.startswith("$"):  # "$(openssl rand ...)", "${TOKEN}": made at run time
                    found.append(f"deploy/{path}: {m.group(0)!r}")
        if path.endswith((".yaml", ".yml")):
            for doc in yaml.safe_load_all(text):
                found += _literal_secrets(doc, f"deploy/{path}")
    assert not found, "credentials committed:\n" + "\n".join(found)


def check_admin_port_is_separate(ref: Reference) -> None:
    admin, main = int(ref.value("MILLIONWS_ADMIN_PORT")), int(ref.value("MILLIONWS_PORT"))
    assert 0 < admin <= 65535, "MILLIONWS_ADMIN_PORT 0 serves /metrics and /stats on the public port"
    assert admin != main, "MILLIONWS_ADMIN_PORT equals MILLIONWS_PORT"
    assert ref.container_port("admin") == admin, "the container port named 'admin' is not MILLIONWS_ADMIN_PORT"
    annotations = ref.deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == admin


def check_public_service_hides_the_admin_port(ref: Reference) -> None:
    admin, main = int(ref.value("MILLIONWS_ADMIN_PORT")), int(ref.value("MILLIONWS_PORT"))
    public = [s for s in ref.services if s["spec"].get("type") in ("LoadBalancer", "NodePort")
              or s["spec"].get("externalIPs")]  # fmt: skip
    assert public, "no Service reaches the outside"
    for svc in public:
        targets = ref.target_ports(svc)
        assert main in targets, f"{svc['metadata']['name']} does not expose the main port"
        assert admin not in targets, f"{svc['metadata']['name']} exposes the admin port {admin}"


def check_servicemonitor_scrapes_the_admin_port(ref: Reference) -> None:
    sm = ref.servicemonitor
    admin = int(ref.value("MILLIONWS_ADMIN_PORT"))
    labels = sm["spec"]["selector"]["matchLabels"]
    namespaces = sm["spec"]["namespaceSelector"]["matchNames"]
    selected = [
        s
        for s in ref.services
        if labels.items() <= s["metadata"]["labels"].items() and s["metadata"]["namespace"] in namespaces
    ]
    assert selected, "the ServiceMonitor selects no Service"
    scraped = set()
    for ep in sm["spec"]["endpoints"]:
        assert ep["path"] == "/metrics"
        for svc in selected:
            for port in svc["spec"]["ports"]:
                if port.get("name") == ep["port"]:
                    scraped |= ref.target_ports({"spec": {"ports": [port]}})
    assert scraped == {admin}, f"the ServiceMonitor scrapes container ports {scraped}, not the admin port {admin}"


def _admits(rule: dict, port: int, name: str | None) -> bool:
    """Whether a NetworkPolicy rule lets traffic to this container port through."""
    if not rule.get("ports"):
        return True  # no ports: every port
    for p in rule["ports"]:
        if "port" not in p or p["port"] == name:
            return True
        if isinstance(p["port"], int) and p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def check_networkpolicy_admits_the_admin_port_only_from_prometheus(ref: Reference) -> None:
    np = ref.networkpolicy
    pod_labels = ref.deployment["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "Ingress" in np["spec"]["policyTypes"]
    admin, main = int(ref.value("MILLIONWS_ADMIN_PORT")), int(ref.value("MILLIONWS_PORT"))
    ingress = np["spec"].get("ingress", [])
    to_admin = [r for r in ingress if _admits(r, admin, "admin")]
    assert to_admin, "no ingress rule lets Prometheus reach the admin port"
    for rule in to_admin:
        peers = rule.get("from")
        assert peers, f"the admin port is open to everyone: {rule}"
        for peer in peers:
            assert "ipBlock" not in peer, f"an address range reaches the admin port: {peer}"
            ns = (peer.get("namespaceSelector") or {}).get("matchLabels", {})
            pods = (peer.get("podSelector") or {}).get("matchLabels", {})
            assert ns == {"kubernetes.io/metadata.name": ref.prometheus_namespace}, f"not Prometheus's: {peer}"
            assert pods.get("app.kubernetes.io/name") == "prometheus", f"not the Prometheus pods: {peer}"
    assert any(_admits(r, main, "http") and not r.get("from") for r in ingress), "clients cannot reach the main port"


def check_allowed_origins_are_explicit(ref: Reference) -> None:
    raw = ref.value("MILLIONWS_ALLOWED_ORIGINS")
    origins = [o.strip() for o in raw.split(",")]
    assert raw.strip() and all(origins), f"empty origin in {raw!r}: empty means any origin"
    for origin in origins:
        assert "*" not in origin, f"{origin!r} lets any site in"
        url = urllib.parse.urlsplit(origin)
        assert url.scheme == "https" and url.netloc and url.path in ("", "/"), f"{origin!r} is not an https origin"


def check_rate_limits_are_on(ref: Reference) -> None:
    for name in RATE_LIMITS:
        value = float(ref.value(name))
        assert math.isfinite(value) and value > 0, f"{name}={value}: 0 turns the limit off"


def check_bus_is_nats_and_reachable(ref: Reference) -> None:
    """Every server of the NATS cluster is listed (a pod whose server died reconnects to another one at once),
    each reachable through the NetworkPolicy, and the streams are made with 3 replicas."""
    name = ref.nats_values["fullnameOverride"]
    servers = ref.nats_values["config"]["cluster"]["replicas"]
    urls = [urllib.parse.urlsplit(item) for item in ref.value("MILLIONWS_BUS").split(",")]
    hosts = set()
    for bus in urls:
        assert bus.scheme == "nats", f"MILLIONWS_BUS {bus.geturl()!r} is not nats://"
        pod, service, namespace, *_ = bus.hostname.split(".")
        assert service == f"{name}-headless", f"{bus.hostname}: not a pod of the StatefulSet the NATS values create"
        hosts.add(pod)
        port = bus.port or 4222
        assert port == ref.nats_values.get("config", {}).get("nats", {}).get("port", 4222)
        egress = [r for r in ref.networkpolicy["spec"].get("egress", []) if _admits(r, port, None)]
        assert any(not r.get("to") or any((peer.get("namespaceSelector") or {}).get("matchLabels")
                                          == {"kubernetes.io/metadata.name": namespace} for peer in r["to"])
                   for r in egress), f"the NetworkPolicy lets no traffic out to {namespace}:{port}"  # fmt: skip
    assert hosts == {f"{name}-{k}" for k in range(servers)}, f"MILLIONWS_BUS lists {sorted(hosts)}, not every server"
    replicas = int(ref.value("MILLIONWS_BUS_REPLICAS"))
    assert replicas == 3 <= servers, "JetStream streams with 3 replicas: one server lost loses no acknowledged publish"
    shards = int(ref.value("MILLIONWS_BUS_SHARDS"))
    assert 1 <= shards <= 4096, "--bus-shards: a stream per channel holds a million users' channels for ever"


def check_nats_is_a_jetstream_cluster_on_disk(ref: Reference) -> None:
    config = ref.nats_values["config"]
    assert config["cluster"]["enabled"] is True
    assert config["cluster"]["replicas"] >= 3 and config["cluster"]["replicas"] % 2 == 1, "a quorum needs 3, 5..."
    js = config["jetstream"]
    assert js["enabled"] is True, "millionws's NATS bus needs JetStream"
    assert js["fileStore"]["enabled"] is True and js["fileStore"]["pvc"]["enabled"] is True, "streams on disk"
    assert not js.get("memoryStore", {}).get("enabled", False), "memory streams lose the window on restart"


def check_readiness_includes_the_bus(ref: Reference) -> None:
    ready, live = ref.container["readinessProbe"]["httpGet"], ref.container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/health?ready", "readiness must drop a pod that drains or lost the bus"
    assert ready["port"] == "http" and ref.container_port("http") == int(ref.value("MILLIONWS_PORT"))
    assert live["path"] == "/health", "liveness must not restart every pod when the bus is down"


def check_image_installs_the_broker_extras(ref: Reference) -> None:
    text = re.sub(r"\\\n", " ", ref.dockerfile)
    installs = [line for line in text.splitlines() if re.match(r"\s*RUN\b", line) and "pip install" in line]
    assert installs, "the Dockerfile installs nothing with pip"
    extras = {e.strip() for line in installs for group in re.findall(r"\.\[([^\]]*)\]", line) for e in group.split(",")}
    assert BROKER_EXTRAS <= extras, f"the image lacks the extras {sorted(BROKER_EXTRAS - extras)}"
    assert not extras & NOT_IN_THE_IMAGE, f"the image installs {sorted(extras & NOT_IN_THE_IMAGE)}"
    with open(ROOT / "pyproject.toml", "rb") as f:
        declared = set(tomllib.load(f)["project"]["optional-dependencies"])
    assert extras <= declared, f"pyproject.toml has no extra {sorted(extras - declared)}"
    for line in installs:
        assert not re.search(r"\b(pytest|hypothesis|locust)\b", line), line


CHECKS: list[Callable[[Reference], None]] = [
    check_credentials_come_from_the_secret,
    check_no_secret_value_is_committed,
    check_admin_port_is_separate,
    check_public_service_hides_the_admin_port,
    check_servicemonitor_scrapes_the_admin_port,
    check_networkpolicy_admits_the_admin_port_only_from_prometheus,
    check_allowed_origins_are_explicit,
    check_rate_limits_are_on,
    check_bus_is_nats_and_reachable,
    check_nats_is_a_jetstream_cluster_on_disk,
    check_readiness_includes_the_bus,
    check_image_installs_the_broker_extras,
]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return load_reference()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_reference_deployment(check: Callable[[Reference], None], reference: Reference) -> None:
    check(reference)


# --- negative controls: each check rejects the deployment it exists to prevent ------------------


def _set_env(name: str, value: str | None) -> Callable[[Reference], None]:
    def mutate(ref: Reference) -> None:
        env = ref.container["env"]
        env[:] = [e for e in env if e["name"] != name]
        if value is not None:
            env.append({"name": name, "value": value})

    return mutate


def _public(ref: Reference) -> dict:
    return next(s for s in ref.services if s["spec"].get("type") == "LoadBalancer")


def _rule_for(ref: Reference, port: int) -> dict:
    return next(r for r in ref.networkpolicy["spec"]["ingress"] if any(p.get("port") == port for p in r["ports"]))


def _add_text(path: str, text: str) -> Callable[[Reference], None]:
    def mutate(ref: Reference) -> None:
        ref.texts[path] = text

    return mutate


def _replace_in(path: str, old: str, new: str) -> Callable[[Reference], None]:
    def mutate(ref: Reference) -> None:
        assert old in ref.texts[path], f"the control expects {old!r} in deploy/{path}"
        ref.texts[path] = ref.texts[path].replace(old, new)

    return mutate


def _set_dockerfile(old: str, new: str) -> Callable[[Reference], None]:
    def mutate(ref: Reference) -> None:
        assert old in ref.dockerfile
        ref.dockerfile = ref.dockerfile.replace(old, new)

    return mutate


def _nats(path: str, value: Any) -> Callable[[Reference], None]:
    def mutate(ref: Reference) -> None:
        *parents, last = path.split(".")
        node = ref.nats_values
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _probe(probe: str, path: str) -> Callable[[Reference], None]:
    def mutate(ref: Reference) -> None:
        ref.container[probe]["httpGet"]["path"] = path

    return mutate


MUTATIONS: list[tuple[str, Callable[[Reference], None], Callable[[Reference], None]]] = [
    ("jwt secret literal", check_credentials_come_from_the_secret, _set_env("MILLIONWS_AUTH_JWT_SECRET", "hunter2")),
    ("backend token unset", check_credentials_come_from_the_secret, _set_env("MILLIONWS_BACKEND_TOKEN", None)),
    (
        "secret key optional",
        check_credentials_come_from_the_secret,
        lambda ref: ref.env["MILLIONWS_AUTH_JWT_SECRET"]["valueFrom"]["secretKeyRef"].update(optional=True),
    ),
    ("auth not required", check_credentials_come_from_the_secret, _set_env("MILLIONWS_AUTH_REQUIRED", None)),
    (
        "k8s env literal",
        check_no_secret_value_is_committed,
        _add_text("millionws/x.yaml", ("env:\n  - name: MILLIONWS_BACKEND_TOKEN\n    value: hunter2\n")),
    ),
    (
        "compose literal",
        check_no_secret_value_is_committed,
        _add_text("local/x.yml", ("environment:\n  MILLIONWS_AUTH_JWT_SECRET: hunter2\n")),
    ),
    (
        "example secret filled",
        check_no_secret_value_is_committed,
        _replace_in("millionws/secret.example.yaml", 'jwt-secret: ""', "jwt-secret: aHVudGVyMg=="),
    ),
    (
        "dockerfile env",
        check_no_secret_value_is_committed,
        _add_text("Dockerfile.x", "ENV MILLIONWS_BACKEND_TOKEN a\n"),
    ),
    (
        "docs literal",
        check_no_secret_value_is_committed,
        _add_text("x.md", "kubectl create secret generic millionws --from-literal=jwt-secret=hunter2\n"),
    ),
    ("flag literal", check_no_secret_value_is_committed, _add_text("x.sh", "millionws serve --backend-token abc\n")),
    ("admin port off", check_admin_port_is_separate, _set_env("MILLIONWS_ADMIN_PORT", "0")),
    ("admin port = main", check_admin_port_is_separate, _set_env("MILLIONWS_ADMIN_PORT", "8080")),
    (
        "public admin port",
        check_public_service_hides_the_admin_port,
        lambda ref: _public(ref)["spec"]["ports"].append({"name": "admin", "port": 9090, "targetPort": "admin"}),
    ),
    (
        "public by number",
        check_public_service_hides_the_admin_port,
        lambda ref: _public(ref)["spec"]["ports"].append({"name": "m", "port": 9091, "targetPort": 9090}),
    ),
    (
        "scrape main port",
        check_servicemonitor_scrapes_the_admin_port,
        lambda ref: ref.servicemonitor["spec"]["endpoints"][0].update(port="http"),
    ),
    (
        "scrape nothing",
        check_servicemonitor_scrapes_the_admin_port,
        lambda ref: ref.servicemonitor["spec"]["selector"]["matchLabels"].update(nothing="here"),
    ),
    (
        "admin from anywhere",
        check_networkpolicy_admits_the_admin_port_only_from_prometheus,
        lambda ref: _rule_for(ref, 9090).pop("from"),
    ),
    (
        "admin from any pod",
        check_networkpolicy_admits_the_admin_port_only_from_prometheus,
        lambda ref: _rule_for(ref, 9090)["from"][0].pop("podSelector"),
    ),
    (
        "every port open",
        check_networkpolicy_admits_the_admin_port_only_from_prometheus,
        lambda ref: _rule_for(ref, 8080).pop("ports"),
    ),
    (
        "no prometheus rule",
        check_networkpolicy_admits_the_admin_port_only_from_prometheus,
        lambda ref: ref.networkpolicy["spec"]["ingress"].remove(_rule_for(ref, 9090)),
    ),
    ("origins any", check_allowed_origins_are_explicit, _set_env("MILLIONWS_ALLOWED_ORIGINS", "*")),
    ("origins empty", check_allowed_origins_are_explicit, _set_env("MILLIONWS_ALLOWED_ORIGINS", "")),
    (
        "origins wildcard",
        check_allowed_origins_are_explicit,
        _set_env("MILLIONWS_ALLOWED_ORIGINS", "https://app.example.com,https://*.example.com"),
    ),
    ("origins http", check_allowed_origins_are_explicit, _set_env("MILLIONWS_ALLOWED_ORIGINS", "http://example.com")),
    *((f"{name} off", check_rate_limits_are_on, _set_env(name, "0")) for name in RATE_LIMITS),
    ("rate limit unset", check_rate_limits_are_on, _set_env("MILLIONWS_RATE_LIMIT_PUBLISHES", None)),
    ("bus unset", check_bus_is_nats_and_reachable, _set_env("MILLIONWS_BUS", None)),
    ("bus redis", check_bus_is_nats_and_reachable, _set_env("MILLIONWS_BUS", "redis://redis.redis.svc:6379")),
    ("bus elsewhere", check_bus_is_nats_and_reachable, _set_env("MILLIONWS_BUS", "nats://nats.broker.svc:4222")),
    (
        "bus one server",
        check_bus_is_nats_and_reachable,
        _set_env("MILLIONWS_BUS", "nats://nats-0.nats-headless.nats.svc:4222"),
    ),
    ("bus replicas 1", check_bus_is_nats_and_reachable, _set_env("MILLIONWS_BUS_REPLICAS", "1")),
    ("bus shards unset", check_bus_is_nats_and_reachable, _set_env("MILLIONWS_BUS_SHARDS", None)),
    ("bus shards 0", check_bus_is_nats_and_reachable, _set_env("MILLIONWS_BUS_SHARDS", "0")),
    (
        "bus port closed",
        check_bus_is_nats_and_reachable,
        lambda ref: ref.networkpolicy["spec"]["egress"][-1]["ports"][0].update(port=4223),
    ),
    ("no jetstream", check_nats_is_a_jetstream_cluster_on_disk, _nats("config.jetstream.enabled", False)),
    ("one server", check_nats_is_a_jetstream_cluster_on_disk, _nats("config.cluster.replicas", 1)),
    ("memory only", check_nats_is_a_jetstream_cluster_on_disk, _nats("config.jetstream.fileStore.enabled", False)),
    ("ready ignores bus", check_readiness_includes_the_bus, _probe("readinessProbe", "/health")),
    ("live on bus", check_readiness_includes_the_bus, _probe("livenessProbe", "/health?ready")),
    ("no extras", check_image_installs_the_broker_extras, _set_dockerfile("'.[nats,redis]'", ".")),
    ("test extra", check_image_installs_the_broker_extras, _set_dockerfile("[nats,redis]", "[nats,redis,test]")),
    ("redis missing", check_image_installs_the_broker_extras, _set_dockerfile("[nats,redis]", "[nats]")),
    ("unknown extra", check_image_installs_the_broker_extras, _set_dockerfile("[nats,redis]", "[nats,redis,natz]")),
]


@pytest.mark.parametrize(("check", "mutate"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_each_check_can_fail(check: Callable[[Reference], None], mutate: Callable[[Reference], None],
                             reference: Reference) -> None:  # fmt: skip
    broken = copy.deepcopy(reference)
    mutate(broken)
    with pytest.raises(AssertionError):
        check(broken)


def test_every_check_has_a_negative_control() -> None:
    assert {c.__name__ for c in CHECKS} == {m[1].__name__ for m in MUTATIONS}


def test_secret_example_is_valid_and_not_deployed() -> None:
    """The template validates for the cluster's version, has the keys the Deployment reads, and is never applied."""
    from kubernetes_validate import utils

    (secret,) = load_yaml_docs(SECRET_EXAMPLE)
    utils.validate(secret, example_kubernetes_version(), strict=True)
    assert secret["metadata"]["name"] == SECRET_NAME
    assert set(secret["stringData"]) == set(SECRET_ENV.values())
    assert SECRET_EXAMPLE not in kustomize_resources(K8S)
    assert "kubectl" in SECRET_EXAMPLE.read_text() and "create secret generic millionws" in SECRET_EXAMPLE.read_text()
