"""The backend's commands (docs/api.md): close or trim a user's connections everywhere; one message to many
channels.

Theory of operation.

* **A user's connections are the holders of its channel.**  Every connection with a user is subscribed to
  ``@user:<id>`` when it opens (:class:`pubsub.Session`), so on each worker the registry already knows
  them: no table of users is kept for these commands.  ``POST /users/{id}/disconnect`` and
  ``.../unsubscribe`` are gathered (:meth:`Control.gather`) from every worker of every node; each worker acts
  on its own connections and answers how many it touched, and the sum is the answer, ``partial`` when a
  worker did not answer (the command may then have reached only some connections: repeating it is safe).
* **Disconnect goes through the server's closing path** (``host.close``: our Close frame with the chosen
  code and reason, the closing handshake, the close timeout; counted as ``backend``).  Codes: 1000, 1008,
  1011, 1012, 1013 and 3000-4999; 4500 by default, which the clients take as final (4000-4499: reconnect).
* **Unsubscribe tells the client.**  A connection removed from channels gets
  ``{"op":"unsubscribed","channels":[...],"reason":"server"}`` (the clients forget those channels), then
  nothing more of them.  A user's own channel cannot be named: disconnect is the way to end it.
* **Broadcast is N publishes through the normal path** (:meth:`Hub.publish`, the per-channel rate limit
  first), issued in request order, answered once every one is numbered or refused, with a result per
  channel in request order.  One that fails does not fail the others: 200 with its error.  Only when every
  one failed ``unavailable`` (the broker unreachable: nothing was published) is the answer 503, so that a
  plain retry is right.

Every argument a handler receives from another worker is checked again (it crossed a process boundary),
and every answer merged here is checked before it is summed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import h11

from .. import jsonsafe
from ..core.reactor import monotonic
from ..jsonsafe import MAX_SAFE_INTEGER
from ..metrics import REFUSED, F
from ..protocol import http
from ..protocol.http import HttpError
from ..protocol.websocket import encode_frame
from ..pubsub.channels import user_channel, valid_channel, valid_user
from .apikit import Deferred, allow, answered, json_body, refused, segment
from .host import Host, Response
from .pubsub import BAD_NAME, BAD_USER, PUBLISH_ERRORS, PubSub

DEFAULT_CODE = 4500  # final for the clients: they do not reconnect (4000-4499: they do)
CLOSE_CODES = frozenset((1000, 1008, 1011, 1012, 1013, *range(3000, 5000)))
MAX_REASON = 123  # bytes of UTF-8: what a Close frame's 125-byte payload leaves after the code

_MSG_OUT = F["messages_out"]


class Commands:
    """``POST /users/{id}/disconnect``, ``POST /users/{id}/unsubscribe``, ``POST /broadcast``."""

    def __init__(self, host: Host, pubsub: PubSub) -> None:
        cfg = host.config
        self.stats = host.stats
        self.c = host.stats.c
        self.answer = host.answer
        self.send = host.send
        self.close = host.close
        self.pubsub = pubsub
        self.hub = pubsub.hub
        self.control = pubsub.control
        self.max_channels = cfg.api_max_channels
        self.max_depth = cfg.max_json_depth
        self.control.register("disconnect", self._disconnect_here)
        self.control.register("unsubscribe", self._unsubscribe_here)
        # /users/{id}/<what>: method(user, body, keep_alive, conn) -> Response | None.
        self.user_routes: dict[bytes, Callable[..., Response | None]] = {b"disconnect": self.disconnect,
                                                                         b"unsubscribe": self.unsubscribe}

    def handle(self, request: h11.Request, path: bytes, body: bytes, keep_alive: bool, conn: Any) -> Response | None:
        """One request to a command (the backend credential was checked); None: deferred."""
        if path == b"/broadcast":
            allow(request, b"POST")
            return self.broadcast(body, keep_alive, conn)
        parts = path.split(b"/")
        if len(parts) == 4 and parts[1] == b"users" and parts[3] in self.user_routes:
            user = segment(parts[2])  # ids like auth0|5f7c... arrive percent-encoded from careful clients
            if not valid_user(user):
                raise refused(self.stats, 400, BAD_USER, "bad_user")
            allow(request, b"POST")
            return self.user_routes[parts[3]](user, body, keep_alive, conn)
        raise HttpError(404, "no such path", http.HS_NOT_FOUND)

    # -- POST /users/{id}/disconnect ------------------------------------------------------------------------
    def disconnect(self, user: str, body: bytes, keep_alive: bool, conn: Any) -> Response | None:
        doc = json_body(self.stats, body, self.max_depth, ("code", "reason"), empty={})
        code = doc.get("code", DEFAULT_CODE)
        if type(code) is not int or code not in CLOSE_CODES:
            raise refused(self.stats, 400, "code is 1000, 1008, 1011, 1012, 1013 or 3000..4999", "bad_code")
        reason = doc.get("reason", "")
        if type(reason) is not str or len(reason.encode()) > MAX_REASON:
            raise refused(self.stats, 400, f"reason is a string of at most {MAX_REASON} bytes in UTF-8", "bad_request")
        deferred = Deferred(self.answer, conn)
        self.control.gather("disconnect", {"user": user, "code": code, "reason": reason},
                            partial(self._summed, deferred, user, "disconnected", keep_alive))
        return deferred.returned()

    def _disconnect_here(self, args: dict[str, Any]) -> dict[str, int]:
        user, code, reason = args.get("user"), args.get("code"), args.get("reason")
        if not (valid_user(user) and type(code) is int and code in CLOSE_CODES and type(reason) is str
                and len(reason.encode()) <= MAX_REASON):
            raise ValueError(f"disconnect: arguments out of range {args!r:.200}")
        close = self.close
        return {"disconnected": sum(1 for conn in self.hub.registry.holders(user_channel(user))
                                    if close(conn, code, reason))}

    # -- POST /users/{id}/unsubscribe -----------------------------------------------------------------------
    def unsubscribe(self, user: str, body: bytes, keep_alive: bool, conn: Any) -> Response | None:
        doc = json_body(self.stats, body, self.max_depth, ("channels",))
        channels = list(dict.fromkeys(self._channel_list(doc)))
        deferred = Deferred(self.answer, conn)
        self.control.gather("unsubscribe", {"user": user, "channels": channels},
                            partial(self._summed, deferred, user, "unsubscribed", keep_alive))
        return deferred.returned()

    def _unsubscribe_here(self, args: dict[str, Any]) -> dict[str, int]:
        user, channels = args.get("user"), args.get("channels")
        if not (valid_user(user) and type(channels) is list and 0 < len(channels) <= self.max_channels
                and all(valid_channel(channel) for channel in channels)):
            raise ValueError(f"unsubscribe: arguments out of range {args!r:.200}")
        registry = self.hub.registry
        touched = 0
        for conn in registry.holders(user_channel(user)):
            mine = registry.channels_of(conn)
            gone = [channel for channel in channels if channel in mine]
            if gone:
                self.hub.unsubscribe(conn, gone)
                self.c[_MSG_OUT] += 1
                self.send(conn, encode_frame(1, jsonsafe.dump({"op": "unsubscribed", "channels": gone,
                                                               "reason": "server"})))
                touched += 1
        return {"unsubscribed": touched}

    def _summed(self, deferred: Deferred, user: str, key: str, keep_alive: bool, answers: list[Any],
                complete: bool) -> None:
        """The answer to a command: what every worker did, summed; an answer that is not a count is left out."""
        count = 0
        for answer in answers:
            value = answer.get(key) if type(answer) is dict else None
            if type(value) is int and 0 <= value <= MAX_SAFE_INTEGER:
                count += value
            else:
                complete = False
        deferred.give(answered({"user": user, key: count, "partial": not complete}, keep_alive))

    # -- POST /broadcast --------------------------------------------------------------------------------------
    def broadcast(self, body: bytes, keep_alive: bool, conn: Any) -> Response | None:
        # One level deeper than a publish body: "data" may be as deep as a published document.
        doc = json_body(self.stats, body, self.max_depth + 1, ("channels", "data"))
        channels = self._channel_list(doc)
        if len(set(channels)) != len(channels):
            raise refused(self.stats, 400, "a channel is named twice", "bad_request")
        if "data" not in doc:
            raise refused(self.stats, 400, "broadcast needs \"data\"", "bad_request")
        data = jsonsafe.dump(doc["data"])
        deferred = Deferred(self.answer, conn)
        results: list[dict[str, Any]] = [{} for _ in channels]
        left = [len(channels)]

        def settle(i: int, seq: int, error: str, _reach: int) -> None:
            results[i] = {"channel": channels[i], "error": error} if error else {"channel": channels[i],
                                                                                  "seq": seq or None}
            left[0] -= 1
            if not left[0]:
                deferred.give(self._broadcast_outcome(results, keep_alive))

        now = monotonic()
        for i, channel in enumerate(channels):
            if self.pubsub.allow_publish(channel, now):
                self.hub.publish(channel, data, now, partial(settle, i))
            else:
                settle(i, 0, "rate_limited", -1)
        return deferred.returned()

    def _broadcast_outcome(self, results: list[dict[str, Any]], keep_alive: bool) -> Response | HttpError:
        errors = [result["error"] for result in results if "error" in result]
        if len(errors) == len(results) and all(error == "unavailable" for error in errors):
            return refused(self.stats, 503, PUBLISH_ERRORS["unavailable"], "unavailable", (("Retry-After", "1"),))
        for error in errors:
            self.c[REFUSED[error]] += 1
        return answered({"results": results}, keep_alive)

    def _channel_list(self, doc: dict[str, Any]) -> list[str]:
        channels = doc.get("channels")
        if type(channels) is not list or not channels:
            raise refused(self.stats, 400, "channels must be a non-empty list of channel names", "bad_request")
        if len(channels) > self.max_channels:
            raise refused(self.stats, 400, f"at most {self.max_channels} channels (--api-max-channels)",
                          "too_many_channels")
        for channel in channels:
            if not valid_channel(channel):
                raise refused(self.stats, 400, BAD_NAME, "bad_channel")
        return channels
