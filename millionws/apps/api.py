"""The backend's API beyond publishing (docs/api.md): what the channels hold, across workers and nodes.

Routes: ``GET /channels`` and ``/channels/{c}/<what>``, one method per ``<what>`` in ``Api.channel_routes``
(``history`` and ``presence`` here; a new one adds its entry there).

Theory of operation.  ``apps/backend.py`` publishes; this module answers questions whose answer is spread
over every worker of every node, through the control plane (:mod:`pubsub.control`): the worker that got the
request *gathers* the answers of a handler registered under a kind on every worker, merges them, and answers
the HTTP request once all came or the deadline passed (``--control-timeout``), with ``"partial": true`` then.
The answer is deferred like a publish's (:class:`apikit.Deferred`, ``host.answer``); the server holds the
request meanwhile, never longer than its backstop.  The commands about users and the broadcast are in
:mod:`commands`; what every endpoint shares (strict parsing, the deferred answer) in :mod:`apikit`.

Input is checked where it enters, twice: the request here (path segment, query string: strict, bounded,
unknown or repeated parameters refused, integers as ASCII digits in range; a refusal is 400 with a ``code``,
counted), and the arguments a handler receives from another worker (they crossed a process boundary, maybe
the broker: a handler that finds one out of range raises, and its worker answers an error).  Answers from
other workers are checked too, and one that fails is left out (``partial``).

``GET /channels`` costs each worker one pass over its channels (:meth:`Registry.page`) and at most
``limit`` names in its answer, whatever the number of channels: the merge is bounded by workers x limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import h11

from ..jsonsafe import MAX_SAFE_INTEGER
from ..protocol import http
from ..protocol.http import HttpError
from ..pubsub.channels import ChannelError
from ..pubsub.history import History, Page
from ..pubsub.records import USER_PREFIX, valid_internal
from .apikit import (
    PREFIX_RE,
    Deferred,
    allow,
    answered,
    channel_name,
    flag,
    integer,
    parse_query,
    prefix_of,
    refused,
    segment,
)
from .host import Host, Response
from .pubsub import PubSub

# -- the endpoints ------------------------------------------------------------------------------------------

class Api:
    """``/channels...``: see the module docstring and docs/api.md."""

    def __init__(self, host: Host, pubsub: PubSub) -> None:
        cfg = host.config
        self.stats = host.stats
        self.answer = host.answer
        self.hub = pubsub.hub
        self.control = pubsub.control
        self.max_page = cfg.channels_max_limit
        self.max_history = cfg.history_max_limit
        self.namespaces = pubsub.namespaces  # the rules the channels of this worker follow, parsed once
        self.control.register("channels", self._channels_here)
        self.histories = History(self.hub, self.control, cfg.history_max_limit)
        # /channels/{c}/<what>: method(request, channel, query, keep_alive, conn) -> Response | None.
        self.channel_routes: dict[bytes, Callable[..., Response | None]] = {b"history": self.history,
                                                                          b"presence": self.presence}
        self.max_presence = cfg.presence_list_max

    def handle(self, request: h11.Request, path: bytes, query: bytes, body: bytes, keep_alive: bool,
               conn: Any) -> Response | None:
        """One request to a path of this API (the backend credential was checked); None: deferred."""
        if path == b"/channels":
            allow(request, b"GET")
            return self.channels(query, keep_alive, conn)
        parts = path.split(b"/")
        if len(parts) == 4 and parts[1] == b"channels" and parts[3] in self.channel_routes:
            channel = segment(parts[2])  # may be percent-encoded; a user's own: @user:<id>
            if not valid_internal(channel):
                raise refused(self.stats, 400, "a channel name is 1 to 128 characters of A-Z a-z 0-9 . _ : - "
                              "(or @user:<id>)", "bad_channel")
            return self.channel_routes[parts[3]](request, channel, query, keep_alive, conn)
        raise HttpError(404, "no such path", http.HS_NOT_FOUND)

    # -- GET /channels/{c}/presence ------------------------------------------------------------------------
    def presence(self, request: h11.Request, channel: str, query: bytes, keep_alive: bool,
                 conn: Any) -> Response | None:
        """``{"channel","count","members","truncated","partial"}`` once every worker answered (``partial``: some
        did not within ``--presence-list-timeout``); the members through :meth:`presence.Presence.list`."""
        allow(request, b"GET")
        params = parse_query(self.stats, query, {"limit": integer(0, self.max_presence)})
        presence = self.hub.presence
        if presence is None or not presence.tracked(channel):
            raise refused(self.stats, 404, "this channel has no presence (--channel-options presence=on)",
                          "presence_disabled")
        deferred = Deferred(self.answer, conn)

        def done(count: int, members: list[tuple[str, str]], truncated: bool, partial: bool) -> None:
            deferred.give(Response(http.render_json(200, {
                "channel": channel, "count": count, "members": [{"user": u, "client": c} for u, c in members],
                "truncated": truncated, "partial": partial}, keep_alive), 200, keep_alive))

        try:
            presence.list(channel, params.get("limit", min(100, self.max_presence)), done)
        except ChannelError as exc:  # --presence-max-lists already in flight on this worker
            raise refused(self.stats, 429, exc.message, exc.code, (("Retry-After", "1"),)) from None
        return deferred.returned()

    # -- GET /channels/{c}/history -------------------------------------------------------------------------
    def history(self, request: h11.Request, channel: str, query: bytes, keep_alive: bool,
                conn: Any) -> Response | None:
        allow(request, b"GET")
        if not self.namespaces.of(channel).history:
            raise refused(self.stats, 403, "this channel's history is off (--channel-options history=off)",
                          "history_disabled")
        params = parse_query(self.stats, query, {"since": integer(0, MAX_SAFE_INTEGER),
                                                 "limit": integer(1, self.max_history)})
        deferred = Deferred(self.answer, conn)
        self.histories.read(channel, params.get("since", 0), params.get("limit", min(100, self.max_history)),
                            partial(self._history_read, deferred, channel, keep_alive))
        return deferred.returned()

    def _history_read(self, deferred: Deferred, channel: str, keep_alive: bool, page: Page | None,
                      error: str) -> None:
        if page is None:
            deferred.give(refused(self.stats, 503, f"the channel's history cannot be read now ({error})",
                                  "unavailable", (("Retry-After", "1"),)))
            return
        last, epoch, first, reset, entries = page
        head = json.dumps({"channel": channel, "seq": last, "epoch": epoch, "first": first, "reset": reset},
                          separators=(",", ":")).encode()
        # The data are JSON documents already (checked where they entered): put in as they are.
        body = b"%s,\"messages\":[%s]}" % (head[:-1], b",".join(b'{"seq":%d,"data":%s}' % (seq, data)
                                                                for seq, data in entries))
        deferred.give(Response(http.render(200, body, "application/json", keep_alive), 200, keep_alive))

    # -- GET /channels -----------------------------------------------------------------------------------
    def channels(self, query: bytes, keep_alive: bool, conn: Any) -> Response | None:
        params = parse_query(self.stats, query, {"cursor": channel_name, "limit": integer(1, self.max_page),
                                                 "prefix": prefix_of, "users": flag})
        limit = params.get("limit", min(100, self.max_page))
        args = {"after": params.get("cursor", ""), "prefix": params.get("prefix", ""), "limit": limit,
                "users": params.get("users", False)}
        deferred = Deferred(self.answer, conn)
        self.control.gather("channels", args, partial(self._channels_merged, deferred, args, keep_alive))
        return deferred.returned()

    def _channels_here(self, args: dict[str, Any]) -> list[tuple[str, int]]:
        """This worker's part of a page (the ``channels`` handler): its channels after the cursor, by name."""
        after, prefix, limit, users = args.get("after"), args.get("prefix"), args.get("limit"), args.get("users")
        if not (type(after) is str and (after == "" or valid_internal(after)) and type(prefix) is str
                and PREFIX_RE.match(prefix) and type(limit) is int and 1 <= limit <= self.max_page
                and type(users) is bool):
            raise ValueError(f"channels: arguments out of range {args!r:.200}")
        return self.hub.registry.page(after, prefix, limit, users)

    def _channels_merged(self, deferred: Deferred, args: dict[str, Any], keep_alive: bool, answers: list[Any],
                         complete: bool) -> None:
        limit = args["limit"]
        counts: dict[str, int] = {}
        more = False  # a worker may hold names beyond its part: there is a next page
        for rows in answers:
            if not self._valid_part(rows, args):
                complete = False  # a worker answered junk: left out, said
                continue
            more = more or len(rows) == limit
            for name, count in rows:
                counts[name] = counts.get(name, 0) + count
        names = sorted(counts)
        page = names[:limit]
        more = more or len(names) > limit
        deferred.give(answered({"channels": [{"channel": name, "subscribers": counts[name]} for name in page],
                                "next_cursor": page[-1] if more and page else None, "partial": not complete},
                               keep_alive))

    @staticmethod
    def _valid_part(rows: Any, args: dict[str, Any]) -> bool:
        """One worker's answer: at most ``limit`` ``[name, count]`` after the cursor, with the prefix, unique."""
        if type(rows) is not list or len(rows) > args["limit"]:
            return False
        seen = set()
        for row in rows:
            if type(row) is not list or len(row) != 2:
                return False
            name, count = row
            if (type(name) is not str or not valid_internal(name) or name <= args["after"] or name in seen
                    or not name.startswith(args["prefix"]) or (not args["users"] and name.startswith(USER_PREFIX))
                    or type(count) is not int or not 0 <= count <= MAX_SAFE_INTEGER):
                return False
            seen.add(name)
        return True
