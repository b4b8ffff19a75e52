"""The backend's HTTP API: ``POST /publish/{channel}`` and ``POST /users/{id}/messages``.

Theory of operation: a backend (holding ``--backend-token`` when one is set; the check is in ``routes``)
publishes one JSON document per request.  The body is checked like any client input (``jsonsafe``), the
channel or user name is percent-decoded and checked against its alphabet, and the publish goes to the
channel's sequencer.  The answer is 200 with the ``seq`` the sequencer gave, so a backend that publishes
sequentially keeps its order; it is given at once when the sequencer is this worker, else later through
``host.answer`` (the server holds the request meanwhile, bounded by ``--publish-timeout``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

from .. import jsonsafe
from ..core.reactor import monotonic
from ..jsonsafe import JsonError
from ..metrics import REFUSED, WorkerStats
from ..protocol import http
from ..protocol.http import HttpError
from ..pubsub.channels import user_channel, valid_channel, valid_user
from .host import Host, Response
from .pubsub import BAD_NAME, BAD_USER, PUBLISH_ERRORS, PubSub


def refused(stats: WorkerStats, status: int, message: str, code: str,
            headers: Iterable[tuple[str, str]] = ()) -> HttpError:
    """A refusal of client input: counted by its code, rendered by the server."""
    stats.c[REFUSED[code]] += 1
    return HttpError(status, message, _REASONS.get(status, http.HS_BAD_REQUEST), headers, code)


# The handshake-failure label (millionws_handshake_failures_total{reason}) of a refusal, by its status.
_REASONS = {403: http.HS_FORBIDDEN, 404: http.HS_NOT_FOUND, 429: http.HS_RATE_LIMITED, 503: http.HS_UNAVAILABLE}


def segment(raw: bytes) -> str:
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
            name = segment(parts[2])
            if not valid_channel(name):
                raise refused(self.stats, 400, BAD_NAME, "bad_channel")
            channel = name
        elif parts[1] == b"users" and len(parts) == 4 and parts[3] == b"messages":
            name = segment(parts[2])  # ids like auth0|5f7c... arrive percent-encoded from careful clients
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
        # Whatever the rule's publish= says (it is about /pubsub clients); at the rule's publish rate.
        if not self.pubsub.allow_publish(channel, now):
            raise HttpError(429, "too many publishes on this channel", http.HS_RATE_LIMITED, (("Retry-After", "1"),),
                            code="rate_limited")
        answer = _DeferredAnswer(self, conn, channel, name if channel != name else None, keep_alive)
        self.pubsub.hub.publish(channel, data, now, answer.done)
        return answer.returned()

    def publish_outcome(self, channel: str, user: str | None, keep_alive: bool, seq: int, error: str,
                        reach: int) -> Response | HttpError:
        if error:
            return refused(self.stats, 503, PUBLISH_ERRORS[error], error, (("Retry-After", "1"),))
        document: dict[str, Any] = {"status": "published", "channel": channel, "seq": seq or None}
        if user is not None:
            document["user"] = user
            # Stored: the user can resume it with since (docs/protocol.md, Users) for the replay window of the
            # user channels' rule (@user:* in --channel-options, else the global flags).
            document["stored"] = self.pubsub.namespaces.of(channel).replays
            if reach >= 0:  # known on one node: were any of the user's connections subscribed here
                document["online"] = bool(reach)
        return Response(http.render_json(200, document, keep_alive), 200, keep_alive)


class _DeferredAnswer:
    """The HTTP answer to a publish: given at once when the sequencer is local, else later."""

    __slots__ = ("app", "channel", "conn", "keep_alive", "outcome", "user", "waiting")

    def __init__(self, app: Backend, conn: Any, channel: str, user: str | None, keep_alive: bool) -> None:
        self.app = app
        self.conn = conn
        self.channel = channel
        self.user = user
        self.keep_alive = keep_alive
        self.outcome: Response | HttpError | None = None
        self.waiting = False

    def done(self, seq: int, error: str, reach: int) -> None:
        outcome = self.app.publish_outcome(self.channel, self.user, self.keep_alive, seq, error, reach)
        if self.waiting:
            self.app.answer(self.conn, outcome)
        else:
            self.outcome = outcome

    def returned(self) -> Response | None:
        """What :meth:`App.handle` returns: the answer if it is known already, else None (deferred)."""
        outcome = self.outcome
        if isinstance(outcome, HttpError):
            raise outcome
        self.waiting = outcome is None
        return outcome
