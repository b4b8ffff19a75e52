"""Whole-pod metrics from any worker: per-worker counters in shared memory.

Theory of operation: a scrape of ``/metrics`` lands on one worker (SO_REUSEPORT picks
it), yet must report every worker.  prometheus-client's multiprocess mode solves this
with one mmap file per process and metric, written on every increment through a lock;
on this server's hot path (several counters per message) that costs more than the
message itself.  Instead:

* The supervisor maps one anonymous shared region before it forks (``SharedStats``):
  a header (workers, restarts) and one fixed slot of int64 per worker index.
* A worker counts into a plain Python list (:class:`WorkerStats`, ``c[...] += 1`` is the
  cheapest counter CPython has) and copies the list into its slot every quarter second
  and right before it answers a scrape.  Only the worker writes its slot; anyone reads.
* The scraped worker reads every slot and renders them with prometheus-client's
  exposition code (a custom collector), labelling each series with ``worker``.  Process
  figures (resident memory, open fds) come from psutil for each worker's pid.
* A slot belongs to a worker *index*, not a pid: a restarted worker continues its
  predecessor's counters, so counters stay monotonic across restarts; the supervisor
  zeroes the gauges of a worker that died.
"""

from __future__ import annotations

import array
import bisect
import mmap
import os
import time
from collections.abc import Iterator
from typing import Any

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from .auth import AUTH_REASONS
from .core.tls import FAILURES as TLS_FAILURES
from .protocol.http import HANDSHAKE_REASONS
from .protocol.lifecycle import REASONS
from .protocol.proxy import REASONS as PROXY_REASONS

HTTP_STATUSES = (101, 200, 202, 400, 401, 403, 404, 405, 408, 413, 426, 429, 431, 500, 501, 503, 0)  # 0: any other
ACCEPT_ERRORS = ("emfile", "other")
TLS_RELOADS = ("ok", "failed")
RATE_LIMITS = ("messages", "bytes", "publishes", "connect_rate", "connections_per_ip")
LOOP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Where an unexpected exception was caught (millionws_internal_errors_total{where}): the unit of work it ended.
INTERNAL_ERROR_SITES = ("connection", "http", "mesh", "broker", "timer", "handler")
# Records from another process dropped before they reached the core (millionws_records_dropped_total).
DROPPED_RECORDS = ("mesh_malformed", "mesh_outbox_full", "broker_malformed", "presence_sources")
# Error codes of /pubsub replies and HTTP 4xx/5xx bodies for refused input (millionws_input_refused_total{code}).
INPUT_CODES = ("bad_json", "too_deep", "bad_unicode", "bad_number", "bad_request", "bad_id", "unknown_op",
               "bad_channel", "bad_since", "bad_user", "forbidden", "too_many_channels", "too_many_subscribers",
               "binary_not_supported", "rate_limited", "unavailable", "publish_timeout", "channel_limit",
               "publish_forbidden", "bad_token", "history_disabled", "bad_code", "presence_disabled")
FANOUT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

FIELDS: tuple[str, ...] = (
    "pid", "started", "draining", "connections", "accepted",
    "messages_in", "messages_out", "bytes_in", "bytes_out",
    *(f"disconnect_{r}" for r in REASONS),
    *(f"handshake_failed_{r}" for r in HANDSHAKE_REASONS),
    *(f"http_{s}" for s in HTTP_STATUSES),
    *(f"accept_error_{e}" for e in ACCEPT_ERRORS),
    *(f"auth_failed_{r}" for r in AUTH_REASONS),
    *(f"proxy_refused_{r}" for r in PROXY_REASONS),
    "tls_handshakes", *(f"tls_failed_{r}" for r in TLS_FAILURES), *(f"tls_reload_{r}" for r in TLS_RELOADS),
    *(f"rate_limited_{k}" for k in RATE_LIMITS),
    *(f"loop_bucket_{i}" for i in range(len(LOOP_BUCKETS) + 1)),
    "loop_sum_ns", "loop_count",
    "channels", "subscriptions", "publishes", "deliveries", "slow_consumers", "replay_hits", "replay_misses",
    *(f"fanout_bucket_{i}" for i in range(len(FANOUT_BUCKETS) + 1)),
    "fanout_sum_ns", "fanout_count",
    "bus_up", "bus_reconnects", "bus_published", "bus_received", "bus_dropped", "bus_catchups", "channels_evicted",
    *(f"internal_error_{w}" for w in INTERNAL_ERROR_SITES),
    *(f"dropped_{k}" for k in DROPPED_RECORDS),
    *(f"refused_{code}" for code in INPUT_CODES),
    "bus_outbox", "publishes_pending", "replay_holds_expired", "admission_keys",
    # permessage-deflate (protocol/deflate.py): each pair is (compressed, uncompressed), adjacent on purpose
    "compressed_in", "uncompressed_in", "compressed_out", "uncompressed_out",
    # the control plane (pubsub/control.py)
    "control_partial", "control_peers",
    "presence_members", "presence_frames", "presence_batches",
)
F = {name: i for i, name in enumerate(FIELDS)}
GAUGES = ("pid", "started", "draining", "connections", "channels", "subscriptions", "bus_up", "bus_outbox",
          "publishes_pending", "admission_keys", "control_peers", "presence_members")
DISCONNECT0 = F["disconnect_normal"]
HANDSHAKE0 = F["handshake_failed_bad_request"]
TLS_FAILED0 = F["tls_failed_" + TLS_FAILURES[0]]
INTERNAL0 = F["internal_error_connection"]
REFUSED = {code: F[f"refused_{code}"] for code in INPUT_CODES}
HTTP_INDEX = {s: F[f"http_{s}"] for s in HTTP_STATUSES}
LOOP0 = F["loop_bucket_0"]
FANOUT0 = F["fanout_bucket_0"]
_LOOP_SUM, _LOOP_COUNT = LOOP0 + len(LOOP_BUCKETS) + 1, LOOP0 + len(LOOP_BUCKETS) + 2
_bisect_left = bisect.bisect_left

HEADER = ("workers", "restarts")
SLOT = len(FIELDS)


class SharedStats:
    """The shared region: ``HEADER`` then ``workers`` slots of ``FIELDS`` (int64 each)."""

    def __init__(self, workers: int, bus: bool = False) -> None:
        self.workers = workers
        # Whether --bus is set: fixed before the fork, so a plain attribute the workers inherit. It tells an
        # alert that bus_up 0 means a broker down, not a node without one.
        self.bus = bus
        self._map = mmap.mmap(-1, 8 * (len(HEADER) + SLOT * workers))
        self.view = memoryview(self._map).cast("q")
        self.view[0] = workers

    def base(self, index: int) -> int:
        return len(HEADER) + index * SLOT

    def get(self, index: int, field: str) -> int:
        return self.view[self.base(index) + F[field]]

    def slot(self, index: int) -> list[int]:
        base = self.base(index)
        return self.view[base:base + SLOT].tolist()

    @property
    def restarts(self) -> int:
        return self.view[1]

    def count_restart(self) -> None:
        self.view[1] += 1

    def worker_gone(self, index: int) -> None:
        """Zero the gauges of a worker that exited; its counters stay for the next one."""
        base = self.base(index)
        for name in GAUGES:
            self.view[base + F[name]] = 0


class WorkerStats:
    """One worker's counters, as a list ``c`` indexed by ``F[...]`` constants."""

    __slots__ = ("shared", "index", "c", "_base")

    def __init__(self, shared: SharedStats, index: int) -> None:
        self.shared = shared
        self.index = index
        self._base = shared.base(index)
        # Continue the predecessor's counters (monotonic across restarts); reset gauges.
        self.c = shared.slot(index)
        for name in GAUGES:
            self.c[F[name]] = 0
        self.c[F["pid"]] = os.getpid()
        self.c[F["started"]] = int(time.time())
        self.flush()

    def flush(self) -> None:
        self.shared.view[self._base:self._base + SLOT] = array.array("q", self.c)

    def observe_turn(self, seconds: float) -> None:
        """Once per loop turn: the constants below are module globals, not sums made per call."""
        c = self.c
        c[LOOP0 + _bisect_left(LOOP_BUCKETS, seconds)] += 1
        c[_LOOP_SUM] += int(seconds * 1e9)
        c[_LOOP_COUNT] += 1

    def observe_fanout(self, seconds: float) -> None:
        """Publish accepted -> frame handed to send() for the last local subscriber of a message."""
        if not 0.0 <= seconds <= 3600.0:  # a clock from elsewhere must not push a counter past int64
            seconds = 0.0 if seconds < 0.0 else 3600.0
        c = self.c
        c[FANOUT0 + bisect.bisect_left(FANOUT_BUCKETS, seconds)] += 1
        c[FANOUT0 + len(FANOUT_BUCKETS) + 1] += int(seconds * 1e9)
        c[FANOUT0 + len(FANOUT_BUCKETS) + 2] += 1

    def http_status(self, status: int) -> None:
        self.c[HTTP_INDEX.get(status, HTTP_INDEX[0])] += 1


def _process_figures(pid: int) -> tuple[int, int, int] | None:
    """Resident bytes, open descriptors and the descriptor limit (soft RLIMIT_NOFILE) of a worker."""
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        return proc.memory_info().rss, proc.num_fds(), proc.rlimit(psutil.RLIMIT_NOFILE)[0]
    except (psutil.Error, OSError):
        return None


class _Collector:
    def __init__(self, shared: SharedStats) -> None:
        self.shared = shared

    def collect(self) -> Iterator[Any]:
        shared = self.shared
        slots = [(str(i), shared.slot(i)) for i in range(shared.workers)]

        def family(cls: Any, name: str, doc: str, field: str) -> Any:
            metric = cls(name, doc, labels=["worker"])
            for worker, s in slots:
                metric.add_metric([worker], s[F[field]])
            return metric

        yield GaugeMetricFamily("millionws_workers", "Worker processes configured.", value=shared.workers)
        yield CounterMetricFamily("millionws_worker_restarts", "Workers the supervisor restarted after they died.",
                                  value=shared.restarts)
        yield GaugeMetricFamily("millionws_bus_configured", "1 when --bus names a broker (then bus_up 0 is an "
                                "outage), 0 for a node alone.", value=int(shared.bus))
        yield family(GaugeMetricFamily, "millionws_draining", "1 while the worker drains after SIGTERM.",
                     "draining")
        yield family(CounterMetricFamily, "millionws_connections_accepted", "TCP connections accepted.",
                     "accepted")
        yield family(GaugeMetricFamily, "millionws_connections_active", "Open WebSocket connections.",
                     "connections")
        for cls, name, doc, field in (
            (CounterMetricFamily, "millionws_messages_received", "WebSocket messages received.", "messages_in"),
            (CounterMetricFamily, "millionws_messages_sent", "WebSocket messages sent.", "messages_out"),
            (CounterMetricFamily, "millionws_bytes_received", "Bytes read from client sockets.", "bytes_in"),
            (CounterMetricFamily, "millionws_bytes_sent", "Bytes written to client sockets.", "bytes_out"),
            (CounterMetricFamily, "millionws_tls_handshakes", "TLS handshakes completed (wss://).", "tls_handshakes"),
        ):
            yield family(cls, name, doc, field)

        def labelled(name: str, doc: str, label: str, values: tuple[Any, ...], prefix: str) -> Any:
            metric = CounterMetricFamily(name, doc, labels=["worker", label])
            for worker, s in slots:
                for value in values:
                    metric.add_metric([worker, str(value) if value != 0 else "other"], s[F[f"{prefix}{value}"]])
            return metric

        yield labelled("millionws_disconnections", "WebSocket connections ended, by reason.", "reason",
                       REASONS, "disconnect_")
        yield labelled("millionws_handshake_failures", "Refused or failed WebSocket handshakes, by reason.",
                       "reason", HANDSHAKE_REASONS, "handshake_failed_")
        yield labelled("millionws_http_requests", "HTTP responses sent, by status (101: upgrades).", "status",
                       HTTP_STATUSES, "http_")
        yield labelled("millionws_accept_errors", "accept() failures, by reason (emfile: out of descriptors).",
                       "reason", ACCEPT_ERRORS, "accept_error_")
        yield labelled("millionws_auth_failures", "Upgrades refused for their token (401), by reason.", "reason",
                       AUTH_REASONS, "auth_failed_")
        yield labelled("millionws_proxy_refused", "Connections closed for their PROXY protocol header "
                       "(--proxy-protocol), by reason.", "reason", PROXY_REASONS, "proxy_refused_")
        yield labelled("millionws_tls_handshake_failures", "TLS handshakes that failed or never finished, by "
                       "reason (incomplete: closed or timed out mid-handshake).", "reason", TLS_FAILURES, "tls_failed_")
        yield labelled("millionws_tls_reloads", "Certificate reloads (SIGHUP or the files changed), by result "
                       "(failed: the old pair stays in use).", "result", TLS_RELOADS, "tls_reload_")
        yield labelled("millionws_internal_errors", "Unexpected exceptions caught by an exception boundary, by the "
                       "unit of work they ended (a connection closed 1011/500, a record or timer skipped).", "where",
                       INTERNAL_ERROR_SITES, "internal_error_")
        yield labelled("millionws_records_dropped", "Records from another process dropped: malformed, or the "
                       "outbox to a peer worker full, or a presence source beyond --presence-max-sources.", "kind",
                       DROPPED_RECORDS, "dropped_")
        yield labelled("millionws_input_refused", "Client input refused with an error reply or HTTP error, by "
                       "error code (docs/protocol.md).", "code", INPUT_CODES, "refused_")
        for name, doc, prefix in (
            ("millionws_compressed_bytes", "permessage-deflate payload bytes as compressed on the wire, by "
             "direction (in: inflated by the server, out: compressed by it).", "compressed_"),
            ("millionws_uncompressed_bytes", "The same messages' payload bytes uncompressed, by direction "
             "(the ratio of the two is the compression ratio).", "uncompressed_"),
        ):
            yield labelled(name, doc, "direction", ("in", "out"), prefix)
        yield labelled("millionws_rate_limited", "Requests refused or connections closed by a rate limit, by kind.",
                       "kind", RATE_LIMITS, "rate_limited_")

        rss = GaugeMetricFamily("millionws_process_resident_memory_bytes", "Resident memory of the worker.",
                                labels=["worker"])
        fds = GaugeMetricFamily("millionws_process_open_fds", "Open file descriptors of the worker.",
                                labels=["worker"])
        max_fds = GaugeMetricFamily("millionws_process_max_fds", "Descriptor limit of the worker (soft "
                                    "RLIMIT_NOFILE): one per connection; at it accept() fails.", labels=["worker"])
        for worker, s in slots:
            figures = _process_figures(s[F["pid"]])
            if figures is not None:
                rss.add_metric([worker], figures[0])
                fds.add_metric([worker], figures[1])
                max_fds.add_metric([worker], figures[2])
        yield rss
        yield fds
        yield max_fds

        def histogram(name: str, doc: str, bounds: tuple[float, ...], base: int) -> Any:
            metric = HistogramMetricFamily(name, doc, labels=["worker"])
            for worker, s in slots:
                buckets, total = [], 0
                for i, bound in enumerate((*bounds, float("inf"))):
                    total += s[base + i]
                    buckets.append((str(bound) if bound != float("inf") else "+Inf", total))
                metric.add_metric([worker], buckets, s[base + len(bounds) + 1] / 1e9)
            return metric

        yield histogram("millionws_loop_turn_seconds", "Work done in one reactor loop turn (waiting excluded).",
                        LOOP_BUCKETS, LOOP0)
        yield histogram("millionws_fanout_latency_seconds",
                        "Publish accepted to frame handed to send() for the last subscriber on a worker.",
                        FANOUT_BUCKETS, FANOUT0)
        for cls, name, doc, field in (
            (GaugeMetricFamily, "millionws_channels", "Channels with a subscriber on this worker.", "channels"),
            (GaugeMetricFamily, "millionws_subscriptions", "Channel subscriptions of this worker's connections.",
             "subscriptions"),
            (CounterMetricFamily, "millionws_publishes", "Messages accepted for publication on this worker "
             "(WebSocket and HTTP).", "publishes"),
            (CounterMetricFamily, "millionws_deliveries", "Channel messages handed to subscriber connections "
             "(live and replayed).", "deliveries"),
            (CounterMetricFamily, "millionws_slow_consumers", "Subscribers closed (1013) for falling more than "
             "max-pending-bytes behind.", "slow_consumers"),
            (CounterMetricFamily, "millionws_replay_hits", "Subscribes with since answered exactly from the "
             "replay buffer.", "replay_hits"),
            (CounterMetricFamily, "millionws_replay_misses", "Subscribes with since older than the replay buffer "
             "(or unknown): answered with a gap.", "replay_misses"),
            (CounterMetricFamily, "millionws_channels_evicted", "Idle channel states (no subscriber, replay "
             "window over) forgotten by their owner worker.", "channels_evicted"),
            (GaugeMetricFamily, "millionws_bus_up", "1 while the worker is connected to the --bus broker.", "bus_up"),
            (CounterMetricFamily, "millionws_bus_reconnects", "Reconnections to the broker after losing it.",
             "bus_reconnects"),
            (CounterMetricFamily, "millionws_bus_published", "Messages the broker acknowledged from this worker.",
             "bus_published"),
            (CounterMetricFamily, "millionws_bus_received", "Live messages received from the broker.",
             "bus_received"),
            (CounterMetricFamily, "millionws_bus_dropped", "Publishes refused because the outbox to the "
             "broker was full.", "bus_dropped"),
            (GaugeMetricFamily, "millionws_bus_outbox", "Publishes handed to the broker thread and not yet "
             "acknowledged by the broker.", "bus_outbox"),
            (GaugeMetricFamily, "millionws_publishes_pending", "Publishes waiting for their seq (HTTP answer or "
             "published reply held until the sequencer confirms).", "publishes_pending"),
            (CounterMetricFamily, "millionws_replay_holds_expired", "Subscribes with since whose replay answer "
             "never came (owner worker or broker away): resolved with gap unknown.", "replay_holds_expired"),
            (GaugeMetricFamily, "millionws_admission_keys", "Source addresses and channels tracked by rate "
             "limits (swept when idle).", "admission_keys"),
            (CounterMetricFamily, "millionws_control_partial", "Questions to every worker (API calls across "
             "workers and nodes) that ended without every answer: deadline, an error answer, or the bus down.",
             "control_partial"),
            (GaugeMetricFamily, "millionws_control_peers", "Workers of other nodes this worker knows on the bus "
             "(announced within 3 intervals).", "control_peers"),
            (GaugeMetricFamily, "millionws_presence_members", "Memberships (connection x channel) of presence "
             "channels on this worker.", "presence_members"),
            (CounterMetricFamily, "millionws_presence_frames", "Presence frames handed to subscribers that asked "
             "for join and leave events.", "presence_frames"),
            (CounterMetricFamily, "millionws_presence_batches", "Presence batches (a channel's count, joins and "
             "leaves of one interval) sent to the other workers and nodes.", "presence_batches"),
            (CounterMetricFamily, "millionws_bus_catchups", "Missed ranges read back from the broker's stream "
             "(after a loss on the live path or an outage).", "bus_catchups"),
        ):
            yield family(cls, name, doc, field)


def render(shared: SharedStats) -> bytes:
    """Prometheus text exposition of every worker's slot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(shared))  # type: ignore[arg-type]
    return generate_latest(registry)


def snapshot(shared: SharedStats) -> dict[str, Any]:
    """The JSON of ``/stats``: per worker and total."""
    keys = ("connections", "accepted", "messages_in", "messages_out", "bytes_in", "bytes_out", "channels",
            "subscriptions", "publishes", "deliveries")
    workers = []
    total: dict[str, int] = dict.fromkeys((*keys, "rss", "fds"), 0)
    for i in range(shared.workers):
        s = shared.slot(i)
        entry: dict[str, Any] = {"worker": i, "pid": s[F["pid"]], "draining": bool(s[F["draining"]])}
        for key in keys:
            entry[key] = s[F[key]]
            total[key] += s[F[key]]
        entry["disconnections"] = {r: s[DISCONNECT0 + j] for j, r in enumerate(REASONS)}
        figures = _process_figures(s[F["pid"]])
        entry["rss"], entry["fds"] = figures[:2] if figures else (None, None)
        if figures:
            total["rss"] += figures[0]
            total["fds"] += figures[1]
        workers.append(entry)
    return {"workers": workers, "total": total, "worker_restarts": shared.restarts, "time": time.time()}
