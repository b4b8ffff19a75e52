"""locust/: the locustfile loads, its manifests line up, and a distributed headless run
(one master + one worker process) against the real server has successes and no failures."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opshelpers import LOCUST, TERRAFORM, free_port, load_yaml_docs, stop_process, tf_blocks, wait_until

LOCUSTFILE = LOCUST / "locustfile.py"


def locust_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]


def locust_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}


def test_locustfile_defines_the_users() -> None:
    r = subprocess.run(locust_cmd("--list"), capture_output=True, text=True, timeout=60, env=locust_env())
    assert r.returncode == 0, r.stdout + r.stderr
    users = {line.strip() for line in r.stdout.splitlines()}
    assert {"EchoUser", "SubscriberUser", "PublisherUser"} <= users


def test_requirements_pin_the_clients() -> None:
    reqs = dict(line.split("==") for line in (LOCUST / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))  # fmt: skip
    assert {"locust", "websocket-client"} <= reqs.keys()
    image_tag = next(line for line in (LOCUST / "Dockerfile").read_text().splitlines() if line.startswith("FROM"))
    assert image_tag.endswith(":" + reqs["locust"]), "image and requirements must pin the same Locust"


def test_manifests_wire_workers_to_master() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in load_yaml_docs(LOCUST / "locusttest.yaml")}
    svc = docs[("Service", "locust-master")]
    master = docs[("Deployment", "locust-master")]["spec"]["template"]
    worker = docs[("Deployment", "locust-worker")]["spec"]["template"]
    assert svc["spec"]["selector"].items() <= master["metadata"]["labels"].items()
    (w,) = worker["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in w["env"]}
    assert env["LOCUST_MASTER_NODE_HOST"] == svc["metadata"]["name"]
    comm = next(p for p in svc["spec"]["ports"] if p["name"] == "comm")
    assert int(env["LOCUST_MASTER_NODE_PORT"]) == comm["port"]
    (m,) = master["spec"]["containers"]
    assert {p["name"] for p in m["ports"]} >= {comm["targetPort"], "web"}
    (kust,) = load_yaml_docs(LOCUST / "kustomization.yaml")
    (gen,) = kust["configMapGenerator"]
    for f in gen["files"]:
        assert (LOCUST / f).is_file()
    for c in (m, w):
        mounts = {v["mountPath"] for v in c["volumeMounts"]}
        assert os.path.dirname(next(e["value"] for e in c["env"] if e["name"] == "LOCUST_LOCUSTFILE")) in mounts


def test_locust_runs_on_the_terraform_system_nodes() -> None:
    modules = tf_blocks(TERRAFORM / "clusters" / "example" / "main.tf", "module")
    system_labels = modules["system_nodes"]["labels"]
    for d in load_yaml_docs(LOCUST / "locusttest.yaml"):
        if d["kind"] == "Deployment":
            assert d["spec"]["template"]["spec"]["nodeSelector"].items() <= system_labels.items()


def test_run_sh_is_valid_shell() -> None:
    r = subprocess.run(["bash", "-n", str(LOCUST / "run.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.access(LOCUST / "run.sh", os.X_OK)


def has_pubsub(ws_base: str) -> bool:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(f"{ws_base}/pubsub", open_timeout=5):
            return True
    except InvalidStatus:
        return False


def read_stats(prefix: Path) -> dict[str, dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {f"{row['Type']} {row['Name']}".strip(): row for row in csv.DictReader(f)}


@pytest.mark.e2e
def test_distributed_headless_run_against_real_server(millionws_server, tmp_path: Path) -> None:
    comm_port = free_port()
    prefix = tmp_path / "locust"
    master_log, worker_log = tmp_path / "master.log", tmp_path / "worker.log"
    # One channel: every publish reaches every subscriber (when the server has /pubsub).
    common = ["--host", millionws_server.base, "--echo-interval", "0.1", "--payload-bytes", "64", "--channels", "1"]
    with open(master_log, "wb") as out:
        master = subprocess.Popen(
            locust_cmd("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(comm_port),
                       "--headless", "--expect-workers", "1", "--expect-workers-max-wait", "30",
                       "-u", "8", "-r", "8", "-t", "5s", "--stop-timeout", "3",
                       "--csv", str(prefix), "--json-file", str(prefix), "--only-summary", *common),
            stdout=out, stderr=subprocess.STDOUT, env=locust_env(),
        )  # fmt: skip
    with open(worker_log, "wb") as out:
        worker = subprocess.Popen(
            locust_cmd("--worker", "--master-host", "127.0.0.1", "--master-port", str(comm_port), *common),
            stdout=out, stderr=subprocess.STDOUT, env=locust_env(),
        )  # fmt: skip
    try:
        code = master.wait(timeout=90)
        worker.wait(timeout=30)
    finally:
        stop_process(master, timeout=10)
        stop_process(worker, timeout=10)
    logs = f"--- master\n{master_log.read_text()}\n--- worker\n{worker_log.read_text()}"
    assert code == 0, logs

    stats = read_stats(prefix)
    total = stats["Aggregated"]
    assert int(total["Request Count"]) > 0, logs
    assert int(total["Failure Count"]) == 0, logs
    assert int(stats["WS echo"]["Request Count"]) > 10, logs
    assert 1 <= int(stats["WS connect"]["Request Count"]) <= 8, logs
    # The channel users run exactly when the server has /pubsub.
    if has_pubsub(millionws_server.ws_base):
        assert int(stats["SUB fanout"]["Request Count"]) > 0, logs
        assert int(stats["POST /publish/[channel]"]["Request Count"]) > 0, logs
    else:
        assert "SUB fanout" not in stats and "POST /publish/[channel]" not in stats, logs

    entries = json.loads(Path(f"{prefix}.json").read_text())
    echo = next(e for e in entries if e["method"] == "WS" and e["name"] == "echo")
    assert echo["num_failures"] == 0 and echo["num_requests"] == int(stats["WS echo"]["Request Count"])
    # the server counted what Locust sent (one message per echo)
    text = millionws_server.metrics_text()
    received = sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("millionws_messages_received_total{")
    )
    assert received >= echo["num_requests"]
    wait_until(lambda: worker.poll() is not None, 5, "worker exit")


def run_sh_env(**settings: str) -> dict[str, str]:
    """The environment of run.sh: no inherited Locust or run.sh settings, locust on PATH (this interpreter's)."""
    env = {k: v for k, v in locust_env().items() if k not in ("HOST", "USERS", "SPAWN_RATE", "RUN_TIME", "OUT")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return {**env, **settings}


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, ["--host", "http://127.0.0.1:8080", "-u", "100", "-r", "50", "-t", "30s"]),
    ({"HOST": "http://short:1", "USERS": "7", "SPAWN_RATE": "3", "RUN_TIME": "9s"},
     ["--host", "http://short:1", "-u", "7", "-r", "3", "-t", "9s"]),
    # Locust's own names, as the README and the Kubernetes manifest use them, win over the short ones
    ({"HOST": "http://short:1", "LOCUST_HOST": "http://nlb.example:80", "USERS": "7", "LOCUST_USERS": "11",
      "LOCUST_SPAWN_RATE": "5", "LOCUST_RUN_TIME": "2m"},
     ["--host", "http://nlb.example:80", "-u", "11", "-r", "5", "-t", "2m"]),
])  # fmt: skip
def test_run_sh_honours_its_variables(tmp_path: Path, settings: dict[str, str], expected: list[str]) -> None:
    for mode in ("local", "distributed"):
        r = subprocess.run(["bash", str(LOCUST / "run.sh"), mode], capture_output=True, text=True, timeout=30,
                           env=run_sh_env(DRY_RUN="1", LOCUST_WORKERS="1", OUT=str(tmp_path / "r"), **settings))
        assert r.returncode == 0, r.stderr
        (command,) = [line.split() for line in r.stdout.splitlines() if "--headless" in line]
        for flag, value in zip(expected[::2], expected[1::2], strict=True):
            assert command[command.index(flag) + 1] == value, (mode, flag, command)
    assert not (tmp_path / "r.json").exists()  # a dry run runs nothing


@pytest.mark.e2e
def test_run_sh_targets_locust_host(millionws_server, tmp_path: Path) -> None:
    """LOCUST_HOST reaches the real run: HOST points at a closed port, so ignoring LOCUST_HOST fails every request."""
    prefix = tmp_path / "run"
    r = subprocess.run(["bash", str(LOCUST / "run.sh"), "local", "--stop-timeout", "2"], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path,
                       env=run_sh_env(LOCUST_HOST=millionws_server.base, HOST=f"http://127.0.0.1:{free_port()}",
                                      LOCUST_USERS="2", LOCUST_SPAWN_RATE="2", LOCUST_RUN_TIME="4s",
                                      LOCUST_PUBSUB="off", LOCUST_ECHO_INTERVAL="0.1", OUT=str(prefix)))
    logs = r.stdout + r.stderr
    assert r.returncode == 0, logs
    stats = read_stats(prefix)
    assert int(stats["WS echo"]["Request Count"]) > 5, logs
    assert int(stats["Aggregated"]["Failure Count"]) == 0, logs
    assert 1 <= int(stats["WS connect"]["Request Count"]) <= 2, logs
