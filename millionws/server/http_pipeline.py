"""The HTTP/1.1 side of a connection: its requests, their answers, and the upgrade to WebSocket.

Theory of operation:

* Every connection starts here, in the ``HTTP`` state, with no parser (``http.UNSTARTED``).  Its first read,
  if it holds a plain body-less GET head (:mod:`fast_head`, a strict subset of what h11 accepts), is handed
  to the application without h11: the upgrade of a reconnect storm builds no parser at all.  Any other first
  read, and any answer but an upgrade to such a head, continues on an h11 parser in the state h11 would be in.
* The h11 parser lives only until the connection upgrades or ends.  Bytes read go to the parser; each
  complete request (head, body within ``max_request_body``) is handed to the application (``handle``),
  which answers with a response, a refusal (``HttpError``: rendered here, and the connection ends), or
  ``None``: deferred.
* Limits are checked where h11 cannot: a head that arrived whole is measured here (h11 bounds only an
  incomplete one), and the framing is checked at the head, before any body is waited for.
* Keep-alive and pipelining: a new parser takes the bytes pipelined behind an answered request and the
  handshake timeout is re-armed.  At most ``pipeline_budget`` requests are answered per connection per
  loop turn; a deeper pipeline continues in the next turn, so one client cannot hold the loop.  While
  the connection is paused by backpressure (its answers pile up unread) nothing is parsed; the worker
  resumes the pipeline when the output says the pause ended (:meth:`HttpPipeline.resume`).
* A deferred answer (a publish waiting for its ``seq``) stops reading (``F_WAITING``, epoll asked for
  nothing but pending output) until :meth:`HttpPipeline.answer`; the deadline of the connection becomes a
  backstop a second after ``--publish-timeout``, so a bug on the way back can never leave a client
  waiting on a descriptor forever.
* The upgrade: the 101 is written, the connection moves to OPEN through ``advance(UPGRADED)``, the
  WebSocket application receives ``on_open`` and then any frames that arrived in the same read as the
  request (handed to the worker's ``ws_in``).  A token with an expiry is registered for
  :mod:`keepalive`'s check.  The first keepalive ping is armed here (at a fraction of the interval that
  spreads a burst of upgrades, :func:`keepalive.first_ping_delay`), or the deadline cancelled.
* Every deadline of this state (handshake, idle keep-alive, deferred answer) is the connection's one
  wheel slot: :meth:`HttpPipeline.on_timer` says what it meant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h11

from ..apps.host import Response
from ..config import Config
from ..core.reactor import EPOLLIN, EPOLLOUT, Reactor, monotonic
from ..metrics import HANDSHAKE0, F, WorkerStats
from ..protocol import fast_head, http
from ..protocol.lifecycle import HTTP, LAST_ANSWER, OPEN, UPGRADED, advance
from .closing import Closer
from .connection import F_ADMIN, F_PAUSED, F_WAITING, Connection, deflate_flags
from .expiry import Expiries
from .keepalive import first_ping_delay

_CONNECTIONS = F["connections"]

Write = Callable[[Connection, bytes], None]


class HttpPipeline:
    """The HTTP requests of every connection of one worker; see the module docstring.

    ``handle(request, body, admin, conn)`` is the application's; ``ws_in(conn, data)`` the worker's
    WebSocket input, for the frames that came with the upgrade request.
    """

    __slots__ = ("c", "stats", "reactor", "handle", "write", "closer", "expiries", "ws_in", "max_head",
                 "max_body", "budget", "handshake_timeout", "publish_timeout", "ping_interval", "upgrades")

    def __init__(self, config: Config, stats: WorkerStats, reactor: Reactor, handle: Callable[..., Response | None],
                 write: Write, closer: Closer, expiries: Expiries, ws_in: Callable[[Connection, bytes], None]) -> None:
        self.c = stats.c
        self.stats = stats
        self.reactor = reactor
        self.handle = handle
        self.write = write
        self.closer = closer
        self.expiries = expiries
        self.ws_in = ws_in
        self.max_head = config.max_request_head
        self.max_body = config.max_request_body
        self.budget = config.pipeline_budget  # pipelined HTTP requests per connection per loop turn
        self.handshake_timeout = config.handshake_timeout
        # The backstop of a deferred answer: a publish waits for its seq, an API call for every worker's answer.
        self.publish_timeout = max(config.publish_timeout, config.control_timeout)
        self.ping_interval = config.ping_interval
        self.upgrades = 0  # WebSockets opened by this worker: the k of first_ping_delay

    def http_in(self, conn: Connection, data: bytes | None, budget: int = 0) -> None:
        """Parse and answer requests; ``data`` None resumes what the parser already holds.  ``budget``: requests
        still allowed this turn (0: the whole ``pipeline_budget``)."""
        parser = conn.http
        if parser is http.UNSTARTED:  # the first bytes of the connection
            if data is None:
                return
            if not conn.flags & (F_PAUSED | F_WAITING) and self.fast_request(conn, data):
                return
            conn.http = parser = http.new_parser(self.max_head)
        if data is not None:
            parser.receive_data(data)
        budget = budget or self.budget
        while conn.state == HTTP:
            if conn.flags & (F_PAUSED | F_WAITING):
                return  # answers are piling up unread, or one is deferred: resumed when that ends
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                reason = http.HS_TOO_LARGE if status == 431 else http.HS_BAD_REQUEST
                self.refuse(conn, http.HttpError(status, str(exc) or "malformed request", reason))
                return
            kind = type(event)
            if kind is h11.Request:
                # h11 bounds a head that is still incomplete; one that arrived whole is measured here.
                if http.head_size(event) > self.max_head:
                    self.refuse(conn, http.HttpError(431, "request head too large", http.HS_TOO_LARGE))
                    return
                try:  # before the body: h11 would otherwise wait for a chunked body the client never meant
                    http.check_framing(event)
                except http.HttpError as error:
                    self.refuse(conn, error, event.method == b"HEAD")
                    return
                conn.msg = [event]
                conn.msg_size = 0
            elif kind is h11.Data:
                conn.msg.append(event.data)
                conn.msg_size += len(event.data)
                if conn.msg_size > self.max_body:
                    self.refuse(conn, http.HttpError(413, "request body too large"))
                    return
            elif kind is h11.EndOfMessage:
                self.dispatch(conn)
                parser = conn.http
                budget -= 1
                if budget == 0 and conn.state == HTTP:
                    # A deep pipeline: give the other connections this turn, continue in the next.
                    self.reactor.call_later(0, lambda: self.resume(conn))
                    return
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return
            elif kind is h11.ConnectionClosed:
                self.closer.close(conn)
                return

    def fast_request(self, conn: Connection, data: bytes) -> bool:
        """The first read of a connection, if it holds a head :mod:`fast_head` reads: answered without an h11
        parser when it is an upgrade.  False: not such a head, h11 reads the same bytes."""
        parsed = fast_head.parse(data, self.max_head)
        if parsed is None:
            return False
        request, trailing = parsed
        # Within max_head (fast_head's rule), so head_size is too; framing: no body, one valid Host.
        try:
            response = self.handle(request, b"", bool(conn.flags & F_ADMIN), conn)
        except http.HttpError as error:
            self.refuse(conn, error)
            return True
        if response is not None and response.websocket is not None:
            self.stats.http_status(response.status)
            self.open_websocket(conn, response, trailing)
            return True
        # A page or a deferred answer: from here the connection is h11's, in the state it would be in had h11
        # read this request (it accepts whatever fast_head accepts), so keep-alive and pipelining are its.
        conn.http = parser = http.new_parser(self.max_head)
        parser.receive_data(data)
        parser.next_event()  # the Request
        parser.next_event()  # its EndOfMessage
        self.answered(conn, response)
        if conn.state == HTTP:  # requests pipelined behind it, within the budget of this turn
            if self.budget > 1:
                self.http_in(conn, None, self.budget - 1)
            else:
                self.reactor.call_later(0, lambda: self.resume(conn))
        return True

    def resume(self, conn: Connection) -> None:
        """Go on with requests already read, after a pause, a deferred answer or the pipeline budget."""
        if conn.state == HTTP and conn.http is not None and not conn.flags & F_WAITING:
            self.http_in(conn, None)

    def refuse(self, conn: Connection, error: http.HttpError, head: bool = False) -> None:
        """Answer an error (no body to a HEAD request) and end the connection."""
        self.c[HANDSHAKE0 + error.reason] += 1
        self.stats.http_status(error.status)
        conn.msg = None
        conn.http = None
        advance(conn, LAST_ANSWER)
        self.write(conn, http.render_error(error, head=head))
        self.closer.state_changed(conn)

    def dispatch(self, conn: Connection) -> None:
        """Hand the complete request to the application and answer, or wait for its deferred answer."""
        request, *body = conn.msg
        conn.msg = None
        try:
            response = self.handle(request, b"".join(body), bool(conn.flags & F_ADMIN), conn)
        except http.HttpError as error:
            self.refuse(conn, error, request.method == b"HEAD")
            return
        self.answered(conn, response)

    def answered(self, conn: Connection, response: Response | None) -> None:
        """Write the application's answer, or wait for it (None: deferred)."""
        if response is None:
            # Deferred: stop reading; answer() resumes.  The app answers within --publish-timeout; the
            # deadline a second later is the backstop (see on_timer).
            conn.flags |= F_WAITING
            self.reactor.wheel.schedule(conn, monotonic() + self.publish_timeout + 1.0)
            self.reactor.modify(conn.fd, EPOLLOUT if conn.pending is not None else 0)
            return
        self.respond(conn, response)

    def answer(self, conn: Connection, response: Response | http.HttpError) -> None:
        """The deferred answer of ``conn``'s request; ignored if the connection ended meanwhile."""
        if conn.state != HTTP or not conn.flags & F_WAITING:
            return
        conn.flags &= ~F_WAITING
        self.reactor.modify(conn.fd, EPOLLIN | EPOLLOUT if conn.pending is not None else EPOLLIN)
        if isinstance(response, http.HttpError):
            self.refuse(conn, response)
            return
        self.respond(conn, response)
        if conn.state == HTTP:
            self.resume(conn)  # requests pipelined behind it

    def respond(self, conn: Connection, response: Response) -> None:
        """Write the application's response: the upgrade, the end of the connection, or the next request."""
        self.stats.http_status(response.status)
        trailing = conn.http.trailing_data[0]
        if response.websocket is not None:
            self.open_websocket(conn, response, trailing)
            return
        self.write(conn, response.data)
        if not response.keep_alive:
            conn.http = None
            advance(conn, LAST_ANSWER)
            self.closer.state_changed(conn)
            return
        conn.http = parser = http.new_parser(self.max_head)
        if trailing:
            parser.receive_data(trailing)
        self.reactor.wheel.schedule(conn, monotonic() + self.handshake_timeout)

    def open_websocket(self, conn: Connection, response: Response, trailing: bytes) -> None:
        """The upgrade, and the token's expiry registered for keepalive's check."""
        self.upgraded(conn, response.data, response.websocket, trailing, response.deflate)
        expires = response.identity.expires if response.identity is not None else None
        if expires is not None and conn.state == OPEN:
            self.expiries.add(conn, expires)

    def upgraded(self, conn: Connection, response: bytes, ws_app: Any, trailing: bytes, deflate: int = 0) -> None:
        """Write the 101 and open the WebSocket; frames that came with the request go to ``ws_in``.
        ``deflate``: the server window bits of a negotiated permessage-deflate (0: none)."""
        conn.http = None
        advance(conn, UPGRADED)
        if deflate:  # before on_open and the frames that came along: both may already be compressed
            conn.flags |= deflate_flags(deflate)
        conn.app = ws_app
        self.c[_CONNECTIONS] += 1
        if self.ping_interval > 0:
            self.upgrades = k = self.upgrades + 1
            self.reactor.wheel.schedule(conn, monotonic() + first_ping_delay(self.ping_interval, k))
        else:
            self.reactor.wheel.cancel(conn)
        self.write(conn, response)
        on_open = getattr(ws_app, "on_open", None)
        if on_open is not None and conn.state == OPEN:
            on_open(conn)
        if trailing and conn.state == OPEN:
            self.ws_in(conn, trailing)

    def on_timer(self, conn: Connection) -> None:
        """The deadline of a connection still in HTTP fired."""
        if conn.flags & F_WAITING:  # the deferred answer never came (see dispatch)
            conn.flags &= ~F_WAITING
            self.refuse(conn, http.HttpError(503, "the publish was not confirmed in time", http.HS_UNAVAILABLE,
                                             (("Retry-After", "1"),), "publish_timeout"))
            return
        parser = conn.http
        if parser.their_state is h11.IDLE and not parser.trailing_data[0]:
            self.closer.close(conn)  # an idle keep-alive connection: nothing to report
        else:
            self.refuse(conn, http.HttpError(408, "request not completed in time", http.HS_TIMEOUT))
