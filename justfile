# millionws tasks. `just --list` shows them; each is a one-liner over scripts/ and .venv/.

set shell := ["bash", "-uc"]

# install into .venv and run the server (extra flags go to `millionws serve`)
serve *FLAGS:
    ./scripts/serve {{FLAGS}}

# install test dependencies and run lint + the whole suite (what CI runs)
test *ARGS:
    ./scripts/test {{ARGS}}

# ruff over the whole repository
lint:
    .venv/bin/ruff check .

# local stack: millionws + Prometheus + Grafana + NATS (needs a Docker engine)
deploy-local:
    docker compose -f deploy/local/compose.yml up --build

# validate (pinned Kubernetes version) and lint the Kubernetes manifests, offline
k8s-validate:
    .venv/bin/python -m pytest -q tests/ops/test_kubernetes.py

# parse and cross-check the Terraform code and run checkov, offline
tf-check:
    bash tests/ops/install-checkov.sh >/dev/null && .venv/bin/python -m pytest -q tests/ops/test_terraform.py

# Locust load test against a running server
load host="http://127.0.0.1:8080" users="100" time="30s":
    HOST={{host}} USERS={{users}} RUN_TIME={{time}} locust/run.sh local
