"""``--bus`` URLs: the one table from URL scheme to broker, and the check before the workers start.

Theory of operation.

**One place chooses the broker.**  :data:`SCHEMES` maps ``nats://``, ``redis://`` and
``redis+sentinel://`` to the client library they need (the pip extra), the parser of the URL (a list of
cluster servers, Sentinels and a service), the :class:`backend.Backend` subclass the bridge thread runs,
and the probe :func:`preflight` runs.  The bridge asks :func:`backend_for`, the
supervisor :func:`preflight`; adding a broker is one module and one row here.  The table
lives in its own module rather than in the package's ``__init__`` because the bridge needs
it and the package imports the bridge: the one-way import rule (``tests/test_layers.py``)
forbids the cycle.

**Fail fast and loud.**  :func:`preflight` runs once in the supervisor before it forks: a
missing client library, a NATS server without JetStream or a Redis older than 7 raise
:class:`base.BusConfigError` (the server refuses to start: it could never deliver across
nodes); an unreachable broker is a warning, since it may come up later.  The bridge checks
the same at every connect, so a server started anyway says why in ``/health``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ...config import DEFAULTS
from . import nats as nats_broker
from . import nats_shards
from . import redis as redis_broker
from .backend import Backend
from .base import BridgeSide, BusConfigError, describe, redact, require_libraries


@dataclass(frozen=True)
class Scheme:
    """One kind of broker, as a ``--bus`` URL names it."""

    extra: str  # pip install 'millionws[<extra>]' brings its client library
    libraries: tuple[str, ...]  # the modules imported to check that it is there
    parse: Callable[[str], object]  # BusConfigError for a URL that cannot work (a malformed list of hosts)
    backend: Callable[[BridgeSide], Backend]
    probe: Callable[[str, float, int], Awaitable[None]]  # url, timeout, --bus-shards: connect, check, close


def _nats_backend(bridge: BridgeSide) -> Backend:
    """A stream per channel, or with ``--bus-shards N`` N shard streams (:mod:`nats_shards`)."""
    if getattr(bridge, "shards", 0):
        return nats_shards.ShardedNatsBackend(bridge)
    return nats_broker.NatsBackend(bridge)


_NATS = Scheme(nats_broker.EXTRA, nats_broker.LIBRARIES, nats_broker.servers_of, _nats_backend, nats_broker.probe)
_REDIS = Scheme(redis_broker.EXTRA, redis_broker.LIBRARIES, redis_broker.sentinel_of, redis_broker.RedisBackend,
                redis_broker.probe)
SCHEMES: dict[str, Scheme] = {"nats://": _NATS, "redis://": _REDIS, redis_broker.SENTINEL: _REDIS}


def scheme_of(url: str) -> Scheme:
    """The broker ``url`` names, or BusConfigError."""
    for prefix, scheme in SCHEMES.items():
        if url.startswith(prefix):
            return scheme
    raise BusConfigError(f"--bus {redact(url)}: must be {' or '.join(prefix + 'host:port' for prefix in SCHEMES)}")


def require(url: str) -> Scheme:
    """The broker ``url`` names, its hosts well-formed and its client library imported, or BusConfigError."""
    scheme = scheme_of(url)
    scheme.parse(url)
    require_libraries(url, scheme.extra, scheme.libraries)
    return scheme


def backend_for(bridge: BridgeSide) -> Backend:
    """The bridge thread's broker-specific half, for ``bridge.url``."""
    return scheme_of(bridge.url).backend(bridge)


def preflight(url: str, timeout: float = 2.0, shards: int = DEFAULTS.bus_shards) -> str | None:
    """Check ``--bus`` once before the workers start.

    Raises :class:`BusConfigError` when the configuration cannot work (client library missing, NATS
    without JetStream or holding streams of another layout than ``shards``, Redis < 7); returns a one-line
    warning when the broker cannot be reached right now (the server starts and reports not ready); None
    when all is well.  Synchronous, bounded by about ``timeout``."""
    scheme = require(url)

    async def bounded() -> None:
        await asyncio.wait_for(scheme.probe(url, timeout, shards), timeout)

    try:
        _run_sync(bounded)
    except BusConfigError:
        raise
    except TimeoutError:
        return (f"bus {redact(url)}: no answer within {timeout:g} s; serving local traffic only, "
                "not ready until it connects")
    except Exception as exc:
        return (f"bus {redact(url)}: unreachable ({describe(exc)}); serving local traffic only, "
                "not ready until it connects")
    return None


def _run_sync(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(factory())
        return
    failure: list[BaseException] = []  # called from a running loop (a test): use a thread

    def run() -> None:
        try:
            asyncio.run(factory())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="millionws-preflight", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
