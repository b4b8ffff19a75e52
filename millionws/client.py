"""A small asyncio client for ``/pubsub`` (docs/protocol.md), built on ``websockets``.

::

    from millionws.client import Client

    async with Client("ws://localhost:8080/pubsub", get_token=fetch_token) as client:
        await client.subscribe("news", since=0)        # since: the last seq you saw, 0 = from the start
        await client.publish("news", {"title": "hello"})
        async for event in client:                      # Message, Gap or Unsubscribed, in order, each once
            print(event)

Its page, with every argument, the close-code rules and a runnable example: docs/clients/python.md.
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
* A connection with a user (a token's ``sub``, or ``?user=`` in the url) is subscribed by the server
  to the user's own channel ``@user:<id>`` when it opens (docs/protocol.md, *Users*).  The client
  resumes it like the others: it names it with ``since`` after a reconnect, once it saw one of its
  messages, so the user messages sent meanwhile are replayed.  Until the answer to that request it
  ignores the channel's messages: they come from the subscription the server made at the upgrade,
  ahead of the replay, which repeats them.
* Tokens: ``get_token`` is called before every (re)connect (the token goes in
  ``Authorization: Bearer``) and again shortly before the current token's ``exp``, when the
  new token is handed over the open connection (``refresh``), so short-lived tokens cost no
  reconnect.  A refused refresh falls back to a reconnect with a fresh token.
* It stops, rather than retry forever, where retrying cannot help: after
  ``max_auth_failures`` consecutive HTTP 401 answers (:class:`AuthFailed`), after a close the
  server means as final (:func:`reconnects_after`; :class:`Disconnected`), or when
  ``get_token`` raises (that exception).  Iteration raises it, after the events received
  before it; so do pending and later requests.
* Server errors to a request raise :class:`ServerError` from that call.

The token is never logged.  Only ``websockets`` is needed: a token's ``exp`` and ``sub`` are read from its
payload without verifying it (the server verifies; the client only needs to know when to refresh, and
which user channel is its own).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

log = logging.getLogger("millionws.client")

MIN_DELAY = 0.1  # seconds: bound of the first reconnect delay
MAX_DELAY = 10.0  # seconds: largest reconnect delay
MAX_AUTH_FAILURES = 5  # consecutive HTTP 401 answers before AuthFailed (0: never give up)
REFRESH_MARGIN = 30.0  # seconds: refresh at most this long before exp ...
REFRESH_FRACTION = 0.1  # ... and at most this share of the token's remaining life before it
WARN_INTERVAL = 10.0  # seconds: one warning of a kind per interval, the rest counted in the next one
TOKEN_EXPIRED = "token expired"  # the reason of millionws's 1008 at a token's exp (SECURITY.md)
# Close codes after which a reconnect would meet the same refusal: the server says the client sent what it
# does not accept (protocol error, unsupported or invalid data, policy, too big, missing extension).
REFUSAL_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
_RESUBSCRIBE_ID = 0  # requests count from 1: the resubscription after a reconnect is told apart by its id
USER_PREFIX = "@user:"  # a user's own channel, @user:<id> (docs/protocol.md, Users)

TokenSource = Callable[[], Awaitable[str | None] | str | None]


def backoff_delay(attempt: int, min_delay: float = MIN_DELAY, max_delay: float = MAX_DELAY) -> float:
    """The delay before reconnect ``attempt`` (0 after a connection that worked): full jitter, a uniform
    draw in ``[0, min(max_delay, min_delay * 2**attempt)]``, so clients dropped together come back spread."""
    return random.uniform(0, min(max_delay, min_delay * 2 ** min(attempt, 64)))


def token_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, read without verifying it; None when the token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return claims if type(claims) is dict else None


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it; None when the token is not a JWT or has none."""
    exp = (token_claims(token) or {}).get("exp")
    return float(exp) if type(exp) in (int, float) else None


def token_user(token: str) -> str | None:
    """The ``sub`` claim of a JWT (the connection's user), read without verifying it; None without one."""
    sub = (token_claims(token) or {}).get("sub")
    return sub if type(sub) is str and sub else None


def url_user(url: str) -> str | None:
    """The ``?user=`` of a ``/pubsub`` url (a server with ``--trust-user-param``); None without exactly one."""
    users = parse_qs(urlsplit(url).query).get("user")
    return users[0] if users is not None and len(users) == 1 and users[0] else None


def refresh_time(expires: float, received: float, margin: float = REFRESH_MARGIN,
                 fraction: float = REFRESH_FRACTION) -> float:
    """When to refresh a token that expires at ``expires`` and was received at ``received`` (Unix times):
    ``min(margin, fraction * its life)`` before ``expires``, so an hour-long token is refreshed 30 s
    before its end and a 20-second one 2 s before (early enough to be answered, late enough to be rare)."""
    return expires - min(margin, fraction * max(0.0, expires - received))


def reconnects_after(code: int | None, reason: str = "") -> bool:
    """Whether the client reconnects after the server closed with ``code`` (None: no Close frame, the
    connection broke) and ``reason``.

    Reconnects: no Close frame (1006), 1000 and 1001 (the server or a proxy ended this connection, not
    the client's wish to be subscribed), 1011, 1012, 1013, 1014, 1008 ``token expired`` (with a fresh
    token), 4000-4499 (the application's "try again"), and any other code.  Stops: the other 1008s
    (policy: a rate limit, for instance) and the codes of :data:`REFUSAL_CODES`, which would be met
    again, and 4500-4999 (the application's "go away": the backend logged this user out or banned it).
    A close the client itself began (:meth:`Client.close`) ends iteration without an error.
    """
    if code is None:
        return True
    if 4500 <= code <= 4999:
        return False
    if code == 1008:
        return reason == TOKEN_EXPIRED
    return code not in REFUSAL_CODES


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


@dataclass(frozen=True)
class Unsubscribed:
    """The server ended these subscriptions (``reason`` ``forbidden``: the newest token no longer grants
    them).  The client has forgotten them: it will not subscribe to them again when it reconnects."""

    channels: tuple[str, ...]
    reason: str


Event = Message | Gap | Unsubscribed


class ServerError(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.code = reply.get("code")
        self.reply = reply


class AuthFailed(Exception):
    """The server refused the token ``attempts`` times in a row (HTTP 401); ``detail``: its last reason."""

    def __init__(self, attempts: int, detail: str) -> None:
        super().__init__(f"the server refused the token {attempts} times in a row (HTTP 401: {detail})")
        self.attempts = attempts
        self.detail = detail


class Disconnected(Exception):
    """The server closed with a code after which the client does not reconnect (:func:`reconnects_after`)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the server closed the connection for good: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


_END = object()  # in the event queue: iteration is over (the client stopped or was closed)


class Warnings:
    """Warnings at most one of each kind per ``interval`` seconds; the next one says how many were held back
    (a client retrying every 100 ms must not fill a log, nor hide that it keeps retrying)."""

    def __init__(self, interval: float = WARN_INTERVAL) -> None:
        self.interval = interval
        self._kinds: dict[str, tuple[float, int]] = {}  # kind -> (when one may be logged again, held back)

    def warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        until, held = self._kinds.get(kind, (0.0, 0))
        if now < until:
            self._kinds[kind] = (until, held + 1)
            return
        self._kinds[kind] = (now + self.interval, 0)
        if held:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, held, self.interval)
        log.warning(message, *args)


class TokenKeeper:
    """The token's side of a :class:`Client`: asks ``get_token``, counts the server's 401 answers, and hands a
    fresh token over an open connection before the current one expires.  Arguments as the Client's."""

    def __init__(self, get_token: TokenSource | None, max_auth_failures: int, refresh_margin: float,
                 refresh_fraction: float, warnings: Warnings) -> None:
        self.get_token = get_token
        self.max_auth_failures = max_auth_failures
        self.refresh_margin = refresh_margin
        self.refresh_fraction = refresh_fraction
        self.warn = warnings.warn
        self.auth_failures = 0  # consecutive HTTP 401 answers
        self.refreshes = 0  # tokens handed over an open connection

    async def fetch(self) -> str | None:
        """A token from ``get_token`` (None without one); what it raises is raised."""
        if self.get_token is None:
            return None
        token = self.get_token()
        if inspect.isawaitable(token):
            token = await token
        if token is not None and type(token) is not str:
            raise TypeError(f"get_token returned {type(token).__name__}, not a str or None")
        return token

    def unauthorized(self, url: str, detail: str) -> None:
        """The server answered an upgrade with 401: AuthFailed at the limit, else a warning."""
        self.auth_failures += 1
        if self.max_auth_failures and self.auth_failures >= self.max_auth_failures:
            raise AuthFailed(self.auth_failures, detail)
        self.warn("401", "%s refused the token (HTTP 401: %s), %d in a row; asking get_token again", url, detail,
                  self.auth_failures)

    @staticmethod
    def present(connect_kwargs: dict[str, Any], token: str | None) -> dict[str, Any]:
        """The keywords of ``connect`` that send ``token`` (replacing any Authorization given)."""
        kwargs = dict(connect_kwargs)
        if token is not None:
            headers = Headers(kwargs.get("additional_headers") or {})
            with contextlib.suppress(KeyError):
                del headers["Authorization"]  # the token of this attempt replaces any given
            headers["Authorization"] = f"Bearer {token}"
            kwargs["additional_headers"] = headers
        return kwargs

    def refused(self, url: str, exc: InvalidStatus) -> None:
        """The server answered the upgrade with an HTTP error: count a 401, stop at the limit."""
        status = exc.response.status_code
        detail = _reason(exc.response.body)
        if status == 401:
            self.unauthorized(url, detail)
        else:
            self.warn(f"http{status}", "%s refused the connection (HTTP %d: %s); retrying", url, status, detail)

    async def guard(self, ws: ClientConnection, reading: Coroutine[Any, Any, None], token: str | None,
                    ask: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> bool:
        """Run ``reading`` (the connection's read loop) to its end, refreshing ``token`` in band meanwhile when
        it has an ``exp``.  True when the server refused a refresh and the connection was closed here, to
        reconnect with a fresh token."""
        reader = asyncio.create_task(reading)
        expires = token_expiry(token) if token is not None else None
        if expires is None:
            await reader
            return False
        keeper = asyncio.create_task(self.keep_fresh(expires, ask))
        renewing = False
        try:
            await asyncio.wait({reader, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if keeper.done() and keeper.result():  # result() raises get_token's exception: the client ends
                renewing = True
                await ws.close(1000, "reconnecting with a fresh token")
            await reader
        finally:
            for task in (reader, keeper):
                task.cancel()
            await asyncio.gather(reader, keeper, return_exceptions=True)
        return renewing

    async def keep_fresh(self, expires: float, ask: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> bool:
        """Refresh the token in band (``ask`` sends a request on the connection and returns its answer) before
        each ``exp``.  True: the server refused the new token, reconnect with a fresh one; False: nothing more
        to do on this connection (it ends, or the server closes it at ``exp`` and the reconnect asks again)."""
        received = time.time()
        while True:
            at = refresh_time(expires, received, self.refresh_margin, self.refresh_fraction)
            await asyncio.sleep(max(0.0, at - time.time()))
            token = await self.fetch()
            later = token_expiry(token) if token is not None else None
            if token is None or (later is not None and later <= expires):
                # Handing it over would gain nothing: the server closes at exp and the reconnect asks again.
                self.warn("stale", "get_token gave no token expiring after the current one; reconnecting at exp")
                return False
            try:
                reply = await ask({"op": "refresh", "token": token})
            except ServerError as exc:
                if exc.code in ("bad_token", "forbidden"):
                    self.warn("refused", "the server refused the refreshed token (%s); reconnecting", exc)
                    return True
                self.warn("unsupported", "the server does not refresh tokens in band (%s); reconnecting at exp", exc)
                return False
            except TimeoutError:
                return True  # no answer: the connection is not well, start over
            except (ConnectionClosed, ConnectionError):
                return False  # ending anyway
            self.refreshes += 1
            received = time.time()
            new = reply.get("expires")
            if type(new) not in (int, float):
                return False  # a token without exp: nothing will expire
            expires = float(new)


class Positions:
    """Where the application is in each channel, and what to ask the server after a reconnect (no I/O).

    ``last``: channel -> last seq given to the application; ``channels``: subscribed channel -> the since
    asked at subscribe; ``user_channel``: the connection's own ``@user:<id>``, which the server subscribes
    it to at the upgrade (learnt from the token's sub, the url's ``?user=``, or else its first message),
    resumed like the subscribed channels.
    """

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.channels: dict[str, int | None] = {}
        self.user_channel: str | None = None
        # Ids of the requests of this connection that name the user channel with since, not answered yet.
        # Meanwhile the channel's messages are the live ones of the server's own subscription at the
        # upgrade, ahead of the replay that follows the answer: delivering one would move last past the
        # replay, whose messages would then all be dropped as seen.
        self.user_resumes: set[int] = set()

    def subscribed(self, channels: tuple[str, ...], since: int | None) -> None:
        for channel in channels:
            self.channels[channel] = since
            if since is not None:
                self.last[channel] = max(self.last.get(channel, 0), since)

    def subscribe_request(self, channels: list[str]) -> dict[str, Any]:
        since = {ch: self.last[ch] for ch in channels if ch in self.last}
        doc: dict[str, Any] = {"op": "subscribe", "channels": channels}
        if since:
            doc["since"] = since
        return doc

    def sent(self, request_id: int, doc: dict[str, Any]) -> None:
        """``doc`` went out with ``request_id``: a resume of the user channel holds its messages back."""
        if doc.get("op") == "subscribe" and self.user_channel is not None and self.user_channel in doc.get("since", ()):
            self.user_resumes.add(request_id)

    def identify(self, headers: Any, url: str) -> None:
        """Learn the user of the connection that just opened: the ``sub`` of the bearer token it sent (from
        ``get_token`` or ``additional_headers``), else the url's ``?user=``; unchanged when neither names one
        (a later ``@user:`` message may)."""
        user = None
        # get_all: a header given twice in additional_headers must not end the client (get would raise).
        for authorization in Headers(headers).get_all("Authorization") if headers is not None else ():
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer":
                user = token_user(token.strip())
                break
        user = user or url_user(url)
        if user is not None:
            self.own(USER_PREFIX + user)

    def own(self, channel: str) -> None:
        """``channel`` is this client's user channel.  Another user's (a token for someone else) is forgotten:
        naming it would have the whole resubscription refused (bad_channel)."""
        old = self.user_channel
        if old is not None and old != channel:
            self.channels.pop(old, None)
            self.last.pop(old, None)
        self.user_channel = channel

    def resubscription(self) -> list[str]:
        """The subscribed channels, and the user channel once a seq of it is known: the server subscribed it
        at the upgrade, without since; naming it with since replays what was sent while disconnected."""
        channels = list(self.channels)
        user = self.user_channel
        if user is not None and user not in self.channels and user in self.last:
            channels.append(user)
        return channels

    def early(self, channel: Any) -> bool:
        """Whether a message or gap of ``channel`` is to be ignored: one of the user channel before the answer
        to its resume (:attr:`user_resumes`).  The first ``@user:`` channel seen is the user's own."""
        if self.user_channel is None and type(channel) is str and channel.startswith(USER_PREFIX):
            self.own(channel)
        return bool(self.user_resumes) and channel == self.user_channel

    def message(self, channel: str, seq: int) -> bool:
        """Whether the message ``seq`` of ``channel`` goes to the application (not early, not seen)."""
        if self.early(channel) or (channel in self.last and seq <= self.last[channel]):
            return False  # early, or seen already (replayed after a reconnect)
        self.last[channel] = seq
        return True

    def gap(self, channel: str, first: int) -> bool:
        """Whether a gap goes to the application; the next message expected is ``first``."""
        if self.early(channel):
            return False  # the replay after the answer says the same (or brings the messages)
        self.last[channel] = first - 1
        return True

    def refused(self, error: dict[str, Any], asked: list[str]) -> tuple[str | None, list[str]]:
        """The resubscription ``asked`` was refused with ``error``: the channel forgotten (if any) and the
        channels to ask again.  A channel the (new) token no longer grants is forgotten and the rest asked
        again: one refused name refuses the whole request, and the others must not be lost with it.  Refused
        for another reason, the user channel is asked again alone, so that its replay is not lost."""
        channel = error.get("channel")
        if error.get("code") == "forbidden" and channel in self.channels:
            self.forget((channel,))
            return channel, self.resubscription()
        user = self.user_channel
        return None, [user] if user is not None and user in asked and len(asked) > 1 else []

    def forget(self, channels: tuple[str, ...]) -> None:
        for channel in channels:
            self.channels.pop(channel, None)
            self.last.pop(channel, None)


class Client:
    """A ``/pubsub`` client that resumes, reconnects and refreshes its token; see the module docstring.

    Use as ``async with``, or call :meth:`start` / :meth:`close`.

    Arguments (all but ``url`` by keyword):

    * ``url``: ``ws://`` or ``wss://`` address of ``/pubsub``.
    * ``get_token``: a callable, plain or ``async``, returning the JWT to present (or None: connect
      without one).  Called before every connection attempt and before each in-band refresh; if it
      raises, the client stops and the exception is raised from iteration.  Default None: no token
      (one may still be given in ``additional_headers``).
    * ``min_delay``, ``max_delay``: bounds of the reconnect backoff (0.1 s, 10 s), :func:`backoff_delay`.
    * ``request_timeout``: seconds to wait for the answer to a request, and for the first connection
      in :meth:`start` (10 s).
    * ``max_auth_failures``: consecutive HTTP 401 answers after which the client stops with
      :class:`AuthFailed` (5; 0: retry forever).
    * ``refresh_margin``, ``refresh_fraction``: the refresh is sent ``min(refresh_margin,
      refresh_fraction * life)`` before the token's ``exp`` (30 s, 0.1), :func:`refresh_time`.
    * any other keyword goes to ``websockets.asyncio.client.connect`` (``compression`` and ``max_queue``
      default to None here: the server does not compress unless configured, and a subscriber's queue is
      the application's to bound).
    """

    def __init__(self, url: str, *, get_token: TokenSource | None = None, min_delay: float = MIN_DELAY,
                 max_delay: float = MAX_DELAY, request_timeout: float = 10.0,
                 max_auth_failures: int = MAX_AUTH_FAILURES, refresh_margin: float = REFRESH_MARGIN,
                 refresh_fraction: float = REFRESH_FRACTION, **connect_kwargs: Any) -> None:
        self.url = url
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.request_timeout = request_timeout
        self.warnings = Warnings()
        self.tokens = TokenKeeper(get_token, max_auth_failures, refresh_margin, refresh_fraction, self.warnings)
        self.connect_kwargs = {"compression": None, "max_queue": None, **connect_kwargs}
        self.positions = Positions()
        self.reconnects = 0  # connection attempts after the first
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()  # closed, or ended by _failure: nothing will connect again
        self._failure: BaseException | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task | None = None
        self._closing = False
        self._renewing = False  # we closed this connection to reconnect with a fresh token
        self._resubscription: list[str] = []  # the channels of the resubscription in flight

    @property
    def last(self) -> dict[str, int]:
        """Channel -> the last seq given to the application."""
        return self.positions.last

    @property
    def channels(self) -> dict[str, int | None]:
        """Subscribed channel -> the since asked at subscribe."""
        return self.positions.channels

    @property
    def user_channel(self) -> str | None:
        """The connection's own ``@user:<id>``, once known."""
        return self.positions.user_channel

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Event:
        return await self.next()

    @property
    def refreshes(self) -> int:
        """Tokens handed over an open connection so far."""
        return self.tokens.refreshes

    @property
    def auth_failures(self) -> int:
        """Consecutive HTTP 401 answers (0 once a connection opens)."""
        return self.tokens.auth_failures

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (requests wait for one otherwise)."""
        return self._ws is not None and self._connected.is_set()

    async def start(self) -> None:
        """Connect; raises what stopped the client if it stopped first (AuthFailed, ...), TimeoutError
        after ``request_timeout`` (the client keeps trying in the background then)."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self._connection(), self.request_timeout)

    async def close(self) -> None:
        """Close the connection and stop; iteration ends (StopAsyncIteration) after what was received."""
        self._closing = True
        self._stopped.set()
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._events.put_nowait(_END)

    async def next(self, timeout: float | None = None) -> Event:
        """The next event (``asyncio.TimeoutError`` after ``timeout``).  Once the client stopped: what stopped
        it (AuthFailed, Disconnected, get_token's exception), or StopAsyncIteration after :meth:`close`."""
        event = await asyncio.wait_for(self._events.get(), timeout)
        if event is _END:
            self._events.put_nowait(_END)  # every later call ends the same way
            if self._failure is not None:
                raise self._failure
            raise StopAsyncIteration
        return event

    # -- requests ---------------------------------------------------------------------------
    async def subscribe(self, *channels: str, since: int | None = None) -> None:
        """Subscribe; ``since``: the last seq already seen (the same for each channel named)."""
        self.positions.subscribed(channels, since)
        await self._request(self.positions.subscribe_request(list(channels)))

    async def unsubscribe(self, *channels: str) -> None:
        for channel in channels:
            self.channels.pop(channel, None)
        await self._request({"op": "unsubscribe", "channels": list(channels)})

    async def publish(self, channel: str, data: Any) -> None:
        """Returns once the server accepted the message (waits for a connection if there is none)."""
        await self._request({"op": "publish", "channel": channel, "data": data})

    async def _request(self, doc: dict[str, Any]) -> dict[str, Any]:
        while True:
            ws = await self._connection()
            try:
                return await self._ask(ws, doc)
            except (ConnectionClosed, ConnectionError):
                continue  # sent again on the next connection (subscriptions are replayed anyway)

    async def _ask(self, ws: ClientConnection, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` on this connection, and its answer (ServerError for an error answer)."""
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.positions.sent(request_id, doc)
        try:
            await ws.send(json.dumps({**doc, "id": request_id}))
            reply = await asyncio.wait_for(future, self.request_timeout)
        finally:
            self._pending.pop(request_id, None)
            self.positions.user_resumes.discard(request_id)  # answered, or never will be: stop ignoring the channel
        if reply.get("op") == "error":
            raise ServerError(reply)
        return reply

    async def _connection(self) -> ClientConnection:
        """The open connection, once there is one; what stopped the client, if it stopped."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise ConnectionError("the client is closed")
            if self.connected:
                return self._ws  # type: ignore[return-value]  # connected: there is one
            waiters = {asyncio.ensure_future(self._connected.wait()), asyncio.ensure_future(self._stopped.wait())}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    # -- the connection ------------------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closing:
                if await self._connect_once():
                    attempt = 0
                if self._closing:
                    return
                delay = backoff_delay(attempt, self.min_delay, self.max_delay)
                attempt += 1
                self.reconnects += 1
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # AuthFailed, Disconnected, get_token's own error, or a bug: all end the client
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._stopped.set()
        self._events.put_nowait(_END)

    async def _connect_once(self) -> bool:
        """One connection attempt, from the token to the end of the connection; whether it opened.  Raises
        what ends the client (AuthFailed, Disconnected, get_token's exception)."""
        token = await self.tokens.fetch()
        kwargs = self.tokens.present(self.connect_kwargs, token)
        opened: ClientConnection | None = None
        try:
            async with connect(self.url, **kwargs) as ws:
                opened = self._ws = ws
                self.tokens.auth_failures = 0
                self._renewing = False
                self.positions.identify(kwargs.get("additional_headers"), self.url)
                await self._resubscribe(ws, self.positions.resubscription())  # before anyone else may send
                self._connected.set()
                await self._serve(ws, token)
        except InvalidStatus as exc:
            self.tokens.refused(self.url, exc)
        except (TimeoutError, OSError, InvalidHandshake, ConnectionClosed) as exc:
            log.debug("connection to %s ended: %s", self.url, exc)
        finally:
            self._connected.clear()
            self._ws = None
            self.positions.user_resumes.clear()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection lost"))
        if opened is None:
            return False
        if self._closing or self._renewing:
            return True
        received = opened.protocol.close_rcvd
        code, reason = (received.code, received.reason) if received is not None else (None, "")
        if not reconnects_after(code, reason):
            raise Disconnected(code, reason)  # type: ignore[arg-type]  # reconnects_after(None) is True
        log.debug("connection to %s closed (%s %s): reconnecting", self.url, code, reason)
        return True

    async def _resubscribe(self, ws: ClientConnection, channels: list[str]) -> None:
        self._resubscription = channels
        if not channels:
            return
        doc = self.positions.subscribe_request(channels)
        self.positions.sent(_RESUBSCRIBE_ID, doc)
        await ws.send(json.dumps({**doc, "id": _RESUBSCRIBE_ID}))

    async def _serve(self, ws: ClientConnection, token: str | None) -> None:
        """Read the connection until it ends; meanwhile keep its token fresh, if it has an ``exp``."""
        self._renewing = await self.tokens.guard(ws, self._read(ws), token, partial(self._ask, ws))

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    doc = json.loads(raw)
                except ValueError:
                    self.warnings.warn("json", "a frame from the server is not JSON: ignored")
                    continue
                if type(doc) is dict:
                    await self._dispatch(ws, doc)

    async def _dispatch(self, ws: ClientConnection, doc: dict[str, Any]) -> None:
        op = doc.get("op")
        request_id = doc.get("id")
        if type(request_id) is int:
            # The answer to a resume of the user channel: what follows is its replay, then its live messages.
            self.positions.user_resumes.discard(request_id)
        if op == "message":
            channel, seq = doc["channel"], doc["seq"]
            if self.positions.message(channel, seq):
                self._events.put_nowait(Message(channel, seq, doc.get("data")))
        elif op == "gap":
            channel = doc["channel"]
            if self.positions.gap(channel, doc["first"]):
                self._events.put_nowait(Gap(channel, doc["since"], doc["first"], doc["reason"]))
        elif op == "unsubscribed" and "id" not in doc:  # the server's push; the answer to ours has our id
            channels = tuple(ch for ch in doc.get("channels") or () if type(ch) is str)
            self.positions.forget(channels)
            self._events.put_nowait(Unsubscribed(channels, str(doc.get("reason", ""))))
        elif request_id == _RESUBSCRIBE_ID:
            await self._resubscribed(ws, doc)
        else:
            future = self._pending.get(doc.get("id"))  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(doc)
            elif op == "error":
                self.warnings.warn("error", "server error: %s", doc)

    async def _resubscribed(self, ws: ClientConnection, doc: dict[str, Any]) -> None:
        """The answer to the resubscription after a reconnect: after a refusal, what :meth:`Positions.refused`
        says to ask again."""
        if doc.get("op") != "error":
            return
        forgotten, again = self.positions.refused(doc, self._resubscription)
        if forgotten is not None:
            self._events.put_nowait(Unsubscribed((forgotten,), "forbidden"))
        else:
            self.warnings.warn("resubscribe", "the server refused the resubscription: %s", doc)
        if again:
            await self._resubscribe(ws, again)

def _reason(body: bytes | None) -> str:
    """The ``error`` of a millionws refusal body (``{"error": ...}``), or the start of any other body."""
    text = (body or b"").decode("utf-8", "replace")
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if type(doc) is dict and type(doc.get("error")) is str:
            return doc["error"]
    return text[:200] or "no reason given"
