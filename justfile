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

# install the benchmark extras (peer servers) into .venv
bench-setup:
    scripts/setup && .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'

# memory per idle connection (GUIDE §4): millionws and the peers, median of runs
bench-memory connections="10000" runs="3": bench-setup
    .venv/bin/python -m benchmarks.memory --connections {{connections}} --runs {{runs}} --pin 0 --loadgen-cpus 1 --peers --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0'

# echo messages/s and RTT percentiles: millionws and the peers
bench-echo runs="3" args="--connections 100 --inflight 8 --size 64 --duration 5": bench-setup
    .venv/bin/python -m benchmarks.throughput --mode echo --runs {{runs}} --pin 0 --loadgen-cpus 1 --peers --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0' --loadgen-args "{{args}}"

# WebSocket handshakes per second: millionws and the peers
bench-connect runs="3" args="--concurrency 64 --duration 5": bench-setup
    .venv/bin/python -m benchmarks.throughput --mode connect-rate --runs {{runs}} --pin 0 --loadgen-cpus 1 --peers --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0' --loadgen-args "{{args}}"

# every load generator mode against millionws and the peers (about 20 s)
bench-smoke: bench-setup
    .venv/bin/python -m benchmarks.smoke --peers --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0'

# the load generator itself, e.g. just loadgen idle --url ws://127.0.0.1:8080/echo --connections 10000 --hold 30
loadgen *ARGS:
    .venv/bin/python -m benchmarks.loadgen {{ARGS}}
