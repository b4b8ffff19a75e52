"""The backend's HTTP API: ``POST /publish/{channel}`` and ``POST /users/{id}/messages``.

Theory of operation: a backend (holding ``--backend-token`` when one is set; the check is in ``routes``)
publishes one JSON document per request.  The body is checked like any client input (``jsonsafe``), the
channel or user name is percent-decoded and checked against its alphabet, and the publish goes to the
channel's sequencer.  The answer is 200 with the ``seq`` the sequencer gave, so a backend that publishes
sequentially keeps its order; it is given at once when the sequencer is this worker, else later through
``host.answer`` (the server holds the request meanwhile, bounded by ``--publish-timeout``).
"""

from __future__ import annotations

from typing import Any

import h11

from .. import jsonsafe
from ..core.reactor import monotonic
from ..jsonsafe import JsonError
from ..protocol import http
from ..protocol.http import HttpError
from ..pubsub.channels import user_channel, valid_channel, valid_user
from .apikit import Deferred, refused, segment
from .host import Host, Response
from .pubsub import BAD_NAME, BAD_USER, PUBLISH_ERRORS, PubSub


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


class _DeferredAnswer(Deferred):
    """The HTTP answer to a publish: given at once when the sequencer is local, else later."""

    __slots__ = ("app", "channel", "keep_alive", "user")

    def __init__(self, app: Backend, conn: Any, channel: str, user: str | None, keep_alive: bool) -> None:
        super().__init__(app.answer, conn)
        self.app = app
        self.channel = channel
        self.user = user
        self.keep_alive = keep_alive

    def done(self, seq: int, error: str, reach: int) -> None:
        self.give(self.app.publish_outcome(self.channel, self.user, self.keep_alive, seq, error, reach))
