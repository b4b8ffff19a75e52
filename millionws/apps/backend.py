"""The backend's HTTP API: ``POST /publish/{channel}``, ``POST /users/{id}/messages`` and
``GET /channels/{channel}/presence``.

Theory of operation: a backend (holding ``--backend-token`` when one is set; the check is in ``routes``)
publishes one JSON document per request.  The body is checked like any client input (``jsonsafe``), the
channel or user name is percent-decoded and checked against its alphabet, and the publish goes to the
channel's sequencer.  The answer is 200 with the ``seq`` the sequencer gave, so a backend that publishes
sequentially keeps its order; it is given at once when the sequencer is this worker, else later through
``host.answer`` (the server holds the request meanwhile, bounded by ``--publish-timeout``).  A presence
list is answered the same way, once every worker answered (bounded by ``--presence-list-timeout``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

import h11

from .. import jsonsafe
from ..core.reactor import monotonic
from ..jsonsafe import JsonError
from ..metrics import REFUSED, WorkerStats
from ..protocol import http
from ..protocol.http import HttpError
from ..pubsub.channels import ChannelError, user_channel, valid_channel, valid_user
from .host import Host, Response
from .pubsub import BAD_NAME, BAD_USER, PUBLISH_ERRORS, PubSub


def refused(stats: WorkerStats, status: int, message: str, code: str,
            headers: Iterable[tuple[str, str]] = ()) -> HttpError:
    """A refusal of client input: counted by its code, rendered by the server."""
    stats.c[REFUSED[code]] += 1
    return HttpError(status, message, http.HS_UNAVAILABLE if status == 503 else http.HS_BAD_REQUEST, headers, code)


def _segment(raw: bytes) -> str:
    """A percent-decoded path segment; "" (valid as nothing) when it does not decode to ASCII."""
    try:
        return unquote_to_bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        return ""


class Backend:
    __slots__ = ("answer", "config", "pubsub", "stats")

    def __init__(self, host: Host, pubsub: PubSub) -> None:
        self.config = host.config
        self.stats = host.stats
        self.answer = host.answer
        self.pubsub = pubsub

    def post(self, request: h11.Request, path: bytes, body: bytes, keep_alive: bool, conn: Any) -> Response | None:
        """``POST /publish/{channel}`` and ``POST /users/{id}/messages``: the body is the message's data.

        Answered once the channel's sequencer numbered the message: 200 with its ``seq``.
        """
        parts = path.split(b"/")
        if parts[1] == b"publish" and len(parts) == 3:
            name = _segment(parts[2])
            if not valid_channel(name):
                raise refused(self.stats, 400, BAD_NAME, "bad_channel")
            channel = name
        elif parts[1] == b"users" and len(parts) == 4 and parts[3] == b"messages":
            name = _segment(parts[2])  # ids like auth0|5f7c... arrive percent-encoded from careful clients
            if not valid_user(name):
                raise refused(self.stats, 400, BAD_USER, "bad_user")
            channel = user_channel(name)
        else:
            raise HttpError(404, "no such path", http.HS_NOT_FOUND)
        if request.method != b"POST":
            raise HttpError(405, "method not allowed", http.HS_METHOD, (("Allow", "POST"),))
        try:
            data = jsonsafe.dump(jsonsafe.parse(body, self.pubsub.max_depth))
        except JsonError as exc:
            message = f"the body must be one JSON document in UTF-8: {exc.message}"
            raise refused(self.stats, 400, message, exc.code) from None
        now = monotonic()
        if not self.pubsub.allow_publish(channel, now):
            raise HttpError(429, "too many publishes on this channel", http.HS_RATE_LIMITED, (("Retry-After", "1"),),
                            code="rate_limited")
        answer = _DeferredAnswer(self, conn, channel, name if channel != name else None, keep_alive)
        self.pubsub.hub.publish(channel, data, now, answer.done)
        return answer.returned()

    def presence(self, request: h11.Request, path: bytes, query: bytes, keep_alive: bool,
                 conn: Any) -> Response | None:
        """``GET /channels/{channel}/presence?limit=N``: ``{"channel","count","members","truncated","partial"}``,
        once every worker answered (``partial``: some did not within ``--presence-list-timeout``)."""
        parts = path.split(b"/")
        if len(parts) != 4 or parts[3] != b"presence":
            raise HttpError(404, "no such path", http.HS_NOT_FOUND)
        if request.method != b"GET":
            raise HttpError(405, "method not allowed", http.HS_METHOD, (("Allow", "GET"),))
        channel = _segment(parts[2])
        if not valid_channel(channel):
            raise refused(self.stats, 400, BAD_NAME, "bad_channel")
        most = self.config.presence_list_max
        raw = parse_qs(query.decode("latin-1")).get("limit", ["100"])
        if len(raw) != 1 or not raw[0].isdigit() or len(raw[0]) > 6 or int(raw[0]) > most:
            raise refused(self.stats, 400, f"limit is an integer 0..{most} (--presence-list-max)", "bad_request")
        presence = self.pubsub.hub.presence
        if presence is None or not presence.tracked(channel):
            self.stats.c[REFUSED["presence_disabled"]] += 1
            raise HttpError(404, "this channel has no presence (--channel-options presence=on)", http.HS_NOT_FOUND,
                            code="presence_disabled")
        later = _Later(self.answer, conn)

        def done(count: int, members: list[tuple[str, str]], truncated: bool, partial: bool) -> None:
            later.settle(Response(http.render_json(200, {
                "channel": channel, "count": count, "members": [{"user": u, "client": c} for u, c in members],
                "truncated": truncated, "partial": partial}, keep_alive), 200, keep_alive))

        try:
            presence.list(channel, int(raw[0]), done)
        except ChannelError as exc:  # too many lists in flight
            self.stats.c[REFUSED[exc.code]] += 1
            raise HttpError(429, exc.message, http.HS_RATE_LIMITED, (("Retry-After", "1"),), code=exc.code) from None
        return later.returned()

    def publish_outcome(self, channel: str, user: str | None, keep_alive: bool, seq: int, error: str,
                        reach: int) -> Response | HttpError:
        if error:
            return refused(self.stats, 503, PUBLISH_ERRORS[error], error, (("Retry-After", "1"),))
        document: dict[str, Any] = {"status": "published", "channel": channel, "seq": seq or None}
        if user is not None:
            cfg = self.config
            document["user"] = user
            # Stored: the user can resume it with since (docs/protocol.md, Users) for the replay window.
            document["stored"] = cfg.replay_max_messages > 0 and cfg.replay_seconds > 0
            if reach >= 0:  # known on one node: were any of the user's connections subscribed here
                document["online"] = bool(reach)
        return Response(http.render_json(200, document, keep_alive), 200, keep_alive)


class _Later:
    """An HTTP answer given at once when it is known before the request returns, else later through ``answer``."""

    __slots__ = ("answer", "conn", "outcome", "waiting")

    def __init__(self, answer: Any, conn: Any) -> None:
        self.answer = answer
        self.conn = conn
        self.outcome: Response | HttpError | None = None
        self.waiting = False

    def settle(self, outcome: Response | HttpError) -> None:
        if self.waiting:
            self.answer(self.conn, outcome)
        else:
            self.outcome = outcome

    def returned(self) -> Response | None:
        """What :meth:`App.handle` returns: the answer if it is known already, else None (deferred)."""
        outcome = self.outcome
        if isinstance(outcome, HttpError):
            raise outcome
        self.waiting = outcome is None
        return outcome


class _DeferredAnswer(_Later):
    """The HTTP answer to a publish: given at once when the sequencer is local, else later."""

    __slots__ = ("app", "channel", "keep_alive", "user")

    def __init__(self, app: Backend, conn: Any, channel: str, user: str | None, keep_alive: bool) -> None:
        super().__init__(app.answer, conn)
        self.app = app
        self.channel = channel
        self.user = user
        self.keep_alive = keep_alive

    def done(self, seq: int, error: str, reach: int) -> None:
        self.settle(self.app.publish_outcome(self.channel, self.user, self.keep_alive, seq, error, reach))
