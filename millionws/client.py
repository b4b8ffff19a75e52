"""A small asyncio client for ``/pubsub`` (docs/protocol.md), built on ``websockets``.

::

    from millionws.client import Client

    async with Client("ws://localhost:8080/pubsub") as client:
        await client.subscribe("news", since=0)        # since: the last seq you saw, 0 = from the start
        await client.publish("news", {"title": "hello"})
        async for event in client:                      # Message or Gap, in order, each once
            print(event.channel, event.seq, event.data)

What it does for you:

* It remembers the last ``seq`` seen per channel (``client.last``) and drops a message it
  already gave you, so each message reaches the application once.
* When the connection ends (a node drains with 1001, a restart, a network error) it
  reconnects with exponential backoff and **full jitter** (a uniform delay in
  ``[0, min(max_delay, min_delay * 2**attempt)]``): when a node with many clients drains
  they come back spread over the interval instead of all at once.  It then subscribes
  again with ``since`` = the last seq of each channel, so the server replays what was
  missed (from the broker's stream with ``--bus``; a single node without a bus loses its
  replay buffer when it restarts: the server then answers ``gap`` ``unknown`` and the
  client passes that :class:`Gap` on).
* A channel subscribed without ``since`` and with no message seen yet is subscribed again
  without ``since`` (there is no position to resume from).
* Server errors to a request with an ``id`` raise :class:`ServerError` from that call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

log = logging.getLogger("millionws.client")

MIN_DELAY = 0.1  # seconds: bound of the first reconnect delay
MAX_DELAY = 10.0  # seconds: largest reconnect delay


def backoff_delay(attempt: int, min_delay: float = MIN_DELAY, max_delay: float = MAX_DELAY) -> float:
    """The delay before reconnect ``attempt`` (0 after a connection that worked): full jitter, a uniform
    draw in ``[0, min(max_delay, min_delay * 2**attempt)]``, so clients dropped together come back spread."""
    return random.uniform(0, min(max_delay, min_delay * 2 ** min(attempt, 64)))


@dataclass(frozen=True)
class Message:
    channel: str
    seq: int
    data: Any


@dataclass(frozen=True)
class Gap:
    """Messages ``since+1 .. first-1`` of ``channel`` cannot be delivered (``reason``: expired, unknown)."""

    channel: str
    since: int
    first: int
    reason: str


class ServerError(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.code = reply.get("code")
        self.reply = reply


class Client:
    """See the module docstring.  Use as ``async with``, or call :meth:`start` / :meth:`close`."""

    def __init__(self, url: str, *, min_delay: float = MIN_DELAY, max_delay: float = MAX_DELAY,
                 request_timeout: float = 10.0, **connect_kwargs: Any) -> None:
        self.url = url
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.request_timeout = request_timeout
        self.connect_kwargs = {"compression": None, "max_queue": None, **connect_kwargs}
        self.last: dict[str, int] = {}  # channel -> last seq given to the application
        self.channels: dict[str, int | None] = {}  # subscribed channel -> since asked at subscribe
        self.reconnects = 0
        self._events: asyncio.Queue[Message | Gap] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task | None = None
        self._closing = False

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Message | Gap:
        return await self._events.get()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), self.request_timeout)

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def next(self, timeout: float | None = None) -> Message | Gap:
        """The next message or gap (``asyncio.TimeoutError`` after ``timeout``)."""
        return await asyncio.wait_for(self._events.get(), timeout)

    # -- requests ---------------------------------------------------------------------------
    async def subscribe(self, *channels: str, since: int | None = None) -> None:
        """Subscribe; ``since``: the last seq already seen (the same for each channel named)."""
        for channel in channels:
            self.channels[channel] = since
            if since is not None:
                self.last[channel] = max(self.last.get(channel, 0), since)
        await self._request(self._subscribe_request(list(channels)))

    async def unsubscribe(self, *channels: str) -> None:
        for channel in channels:
            self.channels.pop(channel, None)
        await self._request({"op": "unsubscribe", "channels": list(channels)})

    async def publish(self, channel: str, data: Any) -> None:
        """Returns once the server accepted the message (waits for a connection if there is none)."""
        await self._request({"op": "publish", "channel": channel, "data": data})

    def _subscribe_request(self, channels: list[str]) -> dict[str, Any]:
        since = {ch: self.last[ch] for ch in channels if ch in self.last}
        doc: dict[str, Any] = {"op": "subscribe", "channels": channels}
        if since:
            doc["since"] = since
        return doc

    async def _request(self, doc: dict[str, Any]) -> dict[str, Any]:
        while True:
            await asyncio.wait_for(self._connected.wait(), None)
            ws = self._ws
            assert ws is not None
            request_id = next(self._ids)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            try:
                await ws.send(json.dumps({**doc, "id": request_id}))
                reply = await asyncio.wait_for(future, self.request_timeout)
            except (ConnectionClosed, ConnectionError):
                continue  # sent again on the next connection (subscriptions are replayed anyway)
            finally:
                self._pending.pop(request_id, None)
            if reply.get("op") == "error":
                raise ServerError(reply)
            return reply

    # -- the connection ------------------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                async with connect(self.url, **self.connect_kwargs) as ws:
                    self._ws = ws
                    if self.channels:  # resubscribe before anyone else may send
                        await ws.send(json.dumps({**self._subscribe_request(list(self.channels)), "id": 0}))
                    self._connected.set()
                    attempt = 0
                    await self._read(ws)
            except (TimeoutError, OSError, ConnectionClosed, InvalidHandshake) as exc:
                log.debug("connection to %s ended: %s", self.url, exc)
            finally:
                self._connected.clear()
                self._ws = None
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(ConnectionError("connection lost"))
            if self._closing:
                return
            delay = backoff_delay(attempt, self.min_delay, self.max_delay)
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(delay)

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            doc = json.loads(raw)
            op = doc.get("op")
            if op == "message":
                channel, seq = doc["channel"], doc["seq"]
                if seq <= self.last.get(channel, 0) and channel in self.last:
                    continue  # seen already (replayed after a reconnect)
                self.last[channel] = seq
                self._events.put_nowait(Message(channel, seq, doc.get("data")))
            elif op == "gap":
                channel = doc["channel"]
                self.last[channel] = doc["first"] - 1
                self._events.put_nowait(Gap(channel, doc["since"], doc["first"], doc["reason"]))
            else:
                future = self._pending.get(doc.get("id"))  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(doc)
                elif op == "error":
                    log.warning("server error: %s", doc)
