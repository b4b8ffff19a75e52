# millionws tasks. `just --list` shows them; each is a one-liner over scripts/ and .venv/.

set shell := ["bash", "-uc"]

# install into .venv and run the server (extra flags go to `millionws serve`)
serve *FLAGS:
    ./scripts/serve {{FLAGS}}

# install test dependencies and run lint + the whole suite (what CI runs)
test *ARGS:
    ./scripts/test {{ARGS}}

# the image built and run with podman, deploy/local/compose.yml up with podman-compose, conntrack vs the million run (root; `test` ends with it)
test-containers *ARGS:
    ./scripts/test-containers {{ARGS}}

# ruff over the whole repository
lint:
    .venv/bin/ruff check .

# local stack: millionws + Prometheus + Grafana + NATS (needs a Docker engine)
deploy-local:
    docker compose -f deploy/local/compose.yml up --build

# the same stack with podman, no registry (stand-in NATS and Prometheus, no Grafana; root): see deploy/PRODUCTION.md
deploy-local-podman:
    bash tests/ops/install-podman.sh && "$(bash tests/ops/install-podman-compose.sh)" -f deploy/local/compose.yml -f deploy/local/compose.podman.yml up --build millionws nats prometheus

# validate (pinned Kubernetes version) and lint the Kubernetes manifests, offline
k8s-validate:
    .venv/bin/python -m pytest -q tests/ops/test_kubernetes.py

# parse and cross-check the Terraform code and run checkov, offline
tf-check:
    bash tests/ops/install-checkov.sh >/dev/null && .venv/bin/python -m pytest -q tests/ops/test_terraform.py

# Locust load test against a running server
load host="http://127.0.0.1:8080" users="100" time="30s":
    HOST={{host}} USERS={{users}} RUN_TIME={{time}} locust/run.sh local

# install the benchmark extras (peer servers) into .venv, and the system packages of the uws and gorilla peers
bench-setup:
    scripts/setup && .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]' && scripts/bench-system-deps

# memory per idle connection (GUIDE §4): millionws and the peers, median of runs
bench-memory connections="10000" runs="3": bench-setup
    .venv/bin/python -m benchmarks.memory --connections {{connections}} --runs {{runs}} --pin 0 --loadgen-cpus 1 --peers --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0'

# echo messages/s and RTT percentiles: millionws and the peers
bench-echo runs="3" args="--connections 100 --inflight 8 --size 64 --duration 5": bench-setup
    .venv/bin/python -m benchmarks.throughput --mode echo --runs {{runs}} --pin 0 --loadgen-cpus 1 --peers --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0' --loadgen-args "{{args}}"

# WebSocket handshakes per second: millionws and the peers
bench-connect runs="3" args="--concurrency 64 --duration 5": bench-setup
    .venv/bin/python -m benchmarks.throughput --mode connect-rate --runs {{runs}} --pin 0 --loadgen-cpus 1 --peers --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0' --loadgen-args "{{args}}"

# issue 11 (wss://), one run: memory per idle connection at 10 000 for millionws ws/wss and picows/websockets over wss, echo over TLS at 1 and 8 in flight vs picows; into benchmarks/results/issue11_tls_*.json (~20 min; e.g. --deflate-flags '...' adds millionws with deflate negotiated)
bench-tls *ARGS: bench-setup
    .venv/bin/python -m benchmarks.tls {{ARGS}}

# every load generator mode against millionws and the peers (about 20 s)
bench-smoke: bench-setup
    .venv/bin/python -m benchmarks.smoke --peers --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0'

# reduced benchmark set, < 3 min, 1 run each, into benchmarks/results/quick/: memory 10 000, echo 100x8x64 B, connect-rate
bench: bench-setup
    .venv/bin/python -m benchmarks.run --quick

# every scenario of issue 3 (memory 10^4..10^5, echo matrix, handshakes, profiles, side-by-side), medians of 3, ~15 min
bench-full: bench-setup
    .venv/bin/python -m benchmarks.run

# 1 000 000 idle WebSockets here, <= 20 min: self-paced ramp, server pings every 120 s, each verified; root: sets/restores sysctls and exempts loopback from conntrack (nft); see benchmarks/million.py
bench-million *ARGS: bench-setup
    timeout --signal=INT --kill-after=120 1200 .venv/bin/python -m benchmarks.million {{ARGS}}

# reconnect storm (issue 12, target 4): node A holding N subscribers drains, they come back on node B over NATS; <= 15 min
bench-storm *ARGS: bench-setup
    timeout --signal=INT --kill-after=60 900 .venv/bin/python -m benchmarks.storm {{ARGS}}

# the load generator itself, e.g. just loadgen idle --url ws://127.0.0.1:8080/echo --connections 10000 --hold 30
loadgen *ARGS:
    .venv/bin/python -m benchmarks.loadgen {{ARGS}}

# issue 12's side-by-side runs with uWebSockets and Go gorilla (echo 1 and 8 in flight, memory, fan-out at 10 000), medians of 3, then the README table (~15 min)
bench-peers: bench-setup
    .venv/bin/python -m benchmarks.throughput --mode echo --runs 3 --pin 0 --loadgen-cpus 1 --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0' --peer picows --peer uws --peer gorilla --loadgen-args '--connections 100 --inflight 1 --size 64 --duration 5' --json-out benchmarks/results/issue12_echo1_peers.json
    .venv/bin/python -m benchmarks.throughput --mode echo --runs 3 --pin 0 --loadgen-cpus 1 --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0' --peer picows --peer uws --peer gorilla --loadgen-args '--connections 100 --inflight 8 --size 64 --duration 5' --json-out benchmarks/results/issue12_echo8_peers.json
    .venv/bin/python -m benchmarks.memory --connections 10000 --runs 3 --pin 0 --loadgen-cpus 1 --server millionws='.venv/bin/millionws serve --host {host} --port {port} --workers 1 --ping-interval 0' --peer picows --peer uws --peer gorilla --json-out benchmarks/results/issue12_memory.json
    .venv/bin/python -m benchmarks.fanout --servers millionws:1,uws,gorilla --n 10000 --runs 3 --json-out benchmarks/results/issue12_fanout10000.json --md-out benchmarks/results/issue12_fanout10000.md
    .venv/bin/python -m benchmarks.table --write

# broadcast fan-out (issue 4, seed 002): N subscribers, a message every 200 ms; millionws 1/2 workers, the peers, the bare-send floor
bench-fanout runs="3" n="100,1000,10000": bench-setup
    .venv/bin/python -m benchmarks.fanout --servers millionws:1,millionws:2,websockets,aiohttp,picows,floor --n {{n}} --runs {{runs}} --json-out benchmarks/results/fanout.json --md-out benchmarks/results/fanout.md --png benchmarks/results/fanout.png

# presence (issue 13): 10 000 members of one channel, 1 and 2 workers, presence off / on / every subscriber asking: server CPU per join, PSS per member, presence frames per subscriber per interval during the join storm, presence_list of all; medians of 3 (~8 min)
bench-presence runs="3" members="10000":
    .venv/bin/python -m benchmarks.presence --members {{members}} --runs {{runs}} --json-out benchmarks/results/presence.json --md-out benchmarks/results/presence.md

# coverage-guided fuzzing (atheris) of the HTTP-upgrade and frame layers, /pubsub and the HTTP endpoints; findings and corpus in .fuzz/
fuzz seconds="3600":
    mkdir -p .fuzz/corpus && .venv/bin/python fuzz/fuzz_server.py -dict=fuzz/http.dict -max_len=8192 -artifact_prefix=.fuzz/ -max_total_time={{seconds}} .fuzz/corpus fuzz/seeds

# soak: churn + echo + fan-out, memory drift and fds (default 2 minutes; e.g. just soak --hours 4)
soak *ARGS:
    .venv/bin/python -m benchmarks.soak {{ARGS}}

# the Autobahn testsuite against millionws --compression deflate (compliance/run.sh; all groups 12-25 min)
compliance cases="*":
    PYTHON=.venv/bin/python compliance/run.sh "{{cases}}"

# issue 14 §2: a NATS cluster and Redis Sentinel lose a server under load (kill -9), 3 runs; figures as JSON lines
failover seconds="2":
    rm -f /tmp/millionws-failover.jsonl; for run in 1 2 3; do FAILOVER_SECONDS={{seconds}} FAILOVER_REPORT=/tmp/millionws-failover.jsonl .venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_failover.py || exit 1; done; cat /tmp/millionws-failover.jsonl

# many channels across nodes (issue 14 §3): 2 nodes' broker sides, N user channels (one subscriber each) + 1 000 shared, NATS --bus-shards 16 / Redis at 10 000 and 100 000 users, the stream-per-channel layout at 10 000; broker memory, streams/keys, publish latency, delivery, replay, the line to 1 000 000; medians of 3 runs (~15 min)
bench-channels users="10000,100000":
    PATH=.venv/bin:$PATH .venv/bin/python -m benchmarks.channels_scale --users {{users}} --layouts nats-shards,redis,nats --old-at 10000 --runs 3 --json-out benchmarks/results/channels_scale.json
