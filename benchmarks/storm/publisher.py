"""The backend of the reconnect storm: ``POST /publish/{channel}`` at a fixed rate, round-robin over the channels.

One keep-alive HTTP connection to the surviving node, one request at a time (the answer carries the seq the
broker gave the message: an acknowledgement, docs/protocol.md *Ordering*). Every acknowledged seq is kept per
channel; that is what the subscribers are checked against. A request that fails (an error status, a timeout,
a broken connection) is counted and not retried: its message may or may not be stored, so it is neither
expected nor held against anyone (a subscriber that gets it counts it as "delivered, unacknowledged").
"""

from __future__ import annotations

import collections
import http.client
import json
import threading
import time


class Publisher(threading.Thread):
    """Publishes to ``channels`` in turn, ``rate`` per second, through ``host:port`` with ``token`` until stopped."""

    def __init__(self, host: str, port: int, token: str, channels: list[str], rate: float,
                 timeout: float = 15.0) -> None:
        super().__init__(name="storm-publisher", daemon=True)
        self.host, self.port, self.token = host, port, token
        self.channels = channels
        self.rate = rate
        self.timeout = timeout
        self.acked: dict[str, list[int]] = {ch: [] for ch in channels}
        self.sent = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.latency_max = 0.0
        self.late = 0  # turns that started more than a second behind the schedule (the schedule is then reset)
        self.timeline: list[tuple[float, int]] = []  # (time acknowledged, seq) for the plot
        self._halt = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def stop(self) -> None:
        self._halt.set()
        self.join(self.timeout + 5)

    def run(self) -> None:
        interval = 1.0 / self.rate
        due = time.monotonic()
        i = 0
        while not self._halt.is_set():
            now = time.monotonic()
            if due > now:
                self._halt.wait(due - now)
                continue
            if now - due > 1.0:
                self.late += 1
                due = now
            self.publish(self.channels[i % len(self.channels)], i)
            i += 1
            due += interval
        if self._conn is not None:
            self._conn.close()

    def publish(self, channel: str, i: int) -> None:
        body = json.dumps({"i": i, "t": time.time_ns()}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        self.sent += 1
        t0 = time.monotonic()
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn.request("POST", f"/publish/{channel}", body, headers)
            response = self._conn.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.errors[type(exc).__name__] += 1
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return
        self.latency_max = max(self.latency_max, time.monotonic() - t0)
        if response.status != 200:
            self.errors[f"http_{response.status}"] += 1
            return
        seq = json.loads(answer).get("seq")
        if not isinstance(seq, int):
            self.errors["no_seq"] += 1
            return
        self.acked[channel].append(seq)
        self.timeline.append((time.monotonic(), seq))
