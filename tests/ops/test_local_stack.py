"""deploy/local: compose.yml, prometheus.yml, Grafana provisioning, the Dockerfile."""

from __future__ import annotations

import re
import shutil
import subprocess

from opshelpers import DEPLOY, LOCAL, ROOT, load_json, load_yaml_docs, server_env_vars


def _compose() -> dict:
    (doc,) = load_yaml_docs(LOCAL / "compose.yml")
    return doc


def test_compose_services_and_mounts() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"millionws", "prometheus", "grafana", "nats"} <= services.keys()
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (LOCAL / src).exists(), f"{name}: mounted file {src} does not exist"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        assert "image" in svc or "build" in svc, name


def test_compose_builds_the_project_image() -> None:
    build = _compose()["services"]["millionws"]["build"]
    context = (LOCAL / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).is_file()


def test_compose_server_settings_are_real_flags() -> None:
    env = _compose()["services"]["millionws"]["environment"]
    unknown = set(env) - server_env_vars()
    assert not unknown, f"`millionws serve --help` documents no {sorted(unknown)}"
    svc = _compose()["services"]["millionws"]
    assert int(svc["ulimits"]["nofile"]["soft"]) >= 65536
    grace = float(env["MILLIONWS_GRACE"])
    stop = int(re.fullmatch(r"(\d+)s", svc["stop_grace_period"]).group(1))
    assert stop > grace, "docker must wait longer than the server's drain before SIGKILL"


def test_prometheus_scrapes_the_compose_service() -> None:
    (prom,) = load_yaml_docs(LOCAL / "prometheus.yml")
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "millionws")
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    svc = _compose()["services"][host]
    published = {p.split(":")[-1] for p in svc["ports"]}
    assert port in published
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # the dashboard groups by "pod": the local config must set that label
    assert any(r.get("target_label") == "pod" for r in job["relabel_configs"])


def test_promtool_accepts_prometheus_yml() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run tests/ops/install-prometheus.sh"
    r = subprocess.run([promtool, "check", "config", str(LOCAL / "prometheus.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_provisioning_points_at_prometheus_and_dashboard() -> None:
    (ds,) = load_yaml_docs(LOCAL / "datasource.yml")
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (prov,) = load_yaml_docs(LOCAL / "dashboards.yml")
    path = prov["providers"][0]["options"]["path"]
    grafana = _compose()["services"]["grafana"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert any(dst.startswith(path + "/") and src.endswith("dashboard.json") for dst, src in mounted.items())
    assert load_json(LOCAL / "dashboard.json")["title"]


def test_dockerfile_runs_the_entrypoint_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert "docker-entrypoint.sh" in text
    entry = (DEPLOY / "docker-entrypoint.sh").read_text()
    assert 'exec python -m millionws "$@"' in entry
    r = subprocess.run(["sh", "-n", str(DEPLOY / "docker-entrypoint.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_entrypoint_raises_soft_nofile_to_hard(tmp_path) -> None:
    """The entrypoint's ulimit logic, run for real with a stand-in for python."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\necho "soft=$(ulimit -Sn) hard=$(ulimit -Hn) args=$*"\n')
    (fake / "python").chmod(0o755)
    cmd = f'ulimit -Sn 256; PATH="{fake}:$PATH" sh {DEPLOY / "docker-entrypoint.sh"} serve --port 1'
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = re.search(r"soft=(\S+) hard=(\S+) args=-m millionws serve --port 1", r.stdout)
    assert m, r.stdout
    assert m.group(1) == m.group(2) and m.group(1) != "256"


def test_podman_override_names_existing_services_and_builds_on_the_dockerfiles_base() -> None:
    """compose.podman.yml (no registry here): it only overrides services of compose.yml, its stand-ins build
    from files that exist, on the same base image as deploy/Dockerfile (the one install-podman.sh builds)."""
    (override,) = load_yaml_docs(LOCAL / "compose.podman.yml")
    services = _compose()["services"]
    assert set(override["services"]) <= set(services)
    base = re.search(r"^FROM\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M).group(1)
    for name, svc in override["services"].items():
        if "build" in svc:
            assert svc["image"].startswith("localhost/"), f"{name}: a stand-in must not shadow a registry name"
            containerfile = LOCAL / svc["build"]["context"] / svc["build"]["dockerfile"]
            assert re.search(r"^FROM\s+(\S+)", containerfile.read_text(), re.M).group(1) == base, name
    assert "grafana" not in override["services"]
