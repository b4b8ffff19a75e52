"""In-process: does a join cost more when the channel already has many members?

For each size M (1 000 and 100 000 by default): a :class:`Hub` with presence on (``chat:* presence=on
join-leave=on``), M members of ``chat:bench`` already in and their interval flushed; then the time of 1 000
more subscribes (``Hub.subscribe``, the registry and presence together) and of their 1 000 unsubscribes, and
the same with presence off (no rule) for the difference.  ``perf_counter`` around the loop, gc frozen (the
existing members are not re-scanned by a collection that a join happens to trigger: what the server's gc
would do is measured by the server benchmark), median of ``repeat`` runs, each on a fresh hub.

A join that walked the members (a list, a broadcast of the member list) would cost 100 times more at 100 000
than at 1 000; an O(1) join costs the same.

:func:`record_costs`: what one batch (100 joins) costs to build and to check on arrival, as the binary record
of :mod:`presence_records` and as the JSON document a generic notice (the control plane's ``notify``) would
carry, parsed by :func:`jsonsafe.parse` as everything from another process is.  Per receiving worker.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

from millionws import jsonsafe, metrics
from millionws.namespaces import ChannelOptions, Namespaces
from millionws.pubsub import presence_records as wire
from millionws.pubsub.channels import Hub
from millionws.pubsub.records import USER_RE, valid_internal

CHANNEL = "chat:bench"


class Conn:
    __slots__ = ("__weakref__", "i")

    def __init__(self, i: int) -> None:
        self.i = i


def _hub(presence: bool) -> Hub:
    shared = metrics.SharedStats(1)
    hub = Hub(0, 1, lambda dest, record: None, lambda conn, data: None, lambda conns, frame: 0,
              metrics.WorkerStats(shared, 0))
    if presence:
        hub.enable_presence(Namespaces("chat:* presence=on join-leave=on",
                                       ChannelOptions("", 120.0, 1000, 4 << 20, 0.0)))
    return hub


def once(members: int, joins: int, presence: bool) -> tuple[float, float]:
    """Seconds for ``joins`` subscribes, then for their unsubscribes, with ``members`` in the channel already."""
    hub = _hub(presence)
    channels = [CHANNEL]
    for i in range(members):
        hub.subscribe(Conn(i), channels, user=f"u{i}")
    if hub.presence is not None:
        hub.presence.tick()  # the storm that filled the channel is flushed: what follows is a fresh interval
    new = [Conn(members + i) for i in range(joins)]
    users = [f"u{members + i}" for i in range(joins)]
    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter()
        for conn, user in zip(new, users, strict=True):
            hub.subscribe(conn, channels, user=user)
        t1 = time.perf_counter()
        for conn in new:
            hub.unsubscribe(conn, channels)
        t2 = time.perf_counter()
    finally:
        gc.unfreeze()
    return t1 - t0, t2 - t1


def measure(sizes: tuple[int, ...] = (1_000, 100_000), joins: int = 1_000, repeat: int = 5) -> dict[str, Any]:
    """Median microseconds per subscribe and per unsubscribe, presence on and off, at each size."""
    rows = []
    for members in sizes:
        for presence in (False, True):
            runs = [once(members, joins, presence) for _ in range(repeat)]
            rows.append({"members": members, "presence": presence, "joins": joins, "repeat": repeat,
                         "join_us": statistics.median(r[0] for r in runs) / joins * 1e6,
                         "leave_us": statistics.median(r[1] for r in runs) / joins * 1e6,
                         "join_us_runs": [r[0] / joins * 1e6 for r in runs]})
    by = {(r["members"], r["presence"]): r for r in rows}
    small, large = sizes[0], sizes[-1]
    return {
        "rows": rows,
        "presence_join_us": {str(m): by[(m, True)]["join_us"] - by[(m, False)]["join_us"] for m in sizes},
        "presence_leave_us": {str(m): by[(m, True)]["leave_us"] - by[(m, False)]["leave_us"] for m in sizes},
        "join_ratio_large_vs_small": by[(large, True)]["join_us"] / by[(small, True)]["join_us"],
    }


def record_costs(joins: int = 100, repeat: int = 2000) -> dict[str, float]:
    """Microseconds to build one batch of ``joins`` names and to check it on arrival: binary and JSON."""
    names = {f"3f9a0c1b2d4e-{i:x}": f"user{i}@example.com" for i in range(joins)}

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) / repeat * 1e6

    record = wire.batch("3f9a0c1b2d4e", CHANNEL, 12345, names, {}, False)
    document = {"kind": "presence.batch", "args": {"source": "3f9a0c1b2d4e", "channel": CHANNEL, "count": 12345,
                                                   "joins": [{"user": u, "client": c} for c, u in names.items()],
                                                   "leaves": []}}
    encoded = jsonsafe.dump(document)

    def check_json() -> None:  # what a handler of the notice must check before it believes it
        args = jsonsafe.parse(encoded, 32)["args"]
        if not (wire.SOURCE_RE.match(args["source"]) and valid_internal(args["channel"])
                and type(args["count"]) is int):
            raise ValueError
        for entry in args["joins"]:
            user, client = entry["user"], entry["client"]
            if type(user) is not str or (user and not USER_RE.match(user)) or not wire.CLIENT_RE.match(client):
                raise ValueError
    return {"joins": joins, "bytes_binary": len(record), "bytes_json": len(encoded),
            "build_binary_us": timed(lambda: wire.batch("3f9a0c1b2d4e", CHANNEL, 12345, names, {}, False)),
            "check_binary_us": timed(lambda: wire.decode(record)),
            "build_json_us": timed(lambda: jsonsafe.dump(document)),
            "check_json_us": timed(check_json)}


if __name__ == "__main__":
    import json

    print(json.dumps({"joins": measure(), "records": record_costs()}, indent=1))
