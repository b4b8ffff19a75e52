"""--channel-options at the edge: who may publish, publish rates per rule, what a user message is told, /stats."""

from __future__ import annotations

import json
from typing import Any

import pytest

from millionws import metrics
from millionws.apps import backend as backend_module
from millionws.apps import pubsub as pubsub_module
from millionws.apps.pubsub import PubSub
from millionws.apps.routes import App
from millionws.protocol.http import HttpError
from tests.apps.test_apps import Conn, documents, host, request

F = metrics.F


@pytest.fixture
def clock(monkeypatch):
    """The apps layer's clock, moved by hand (rates)."""
    now = [1000.0]
    for module in (pubsub_module, backend_module):
        monkeypatch.setattr(module, "monotonic", lambda: now[0])
    return now


def publish(pubsub: PubSub, channel: str, data: Any = 1) -> list[dict]:
    """What a client is answered: the error reply, or the published answer sent through the host."""
    conn = Conn()
    reply = pubsub.on_message(conn, True, json.dumps({"op": "publish", "channel": channel, "data": data,
                                                      "id": 1}).encode())
    return documents(reply) + documents(conn.sent)


def post(app: App, path: bytes, body: bytes = b"{}") -> tuple[int, dict]:
    try:
        response = app.handle(request(path, b"POST"), body)
    except HttpError as exc:
        return exc.status, {"code": exc.code}
    return response.status, json.loads(response.data.split(b"\r\n\r\n", 1)[1])


def test_a_backend_only_namespace_refuses_client_publishes_with_its_code_and_takes_the_backends():
    h, _ = host(channel_options="ticker:* publish=backend; ticker:open publish=clients")
    app = App(h, 10)
    app.start()
    [refusal] = publish(app.pubsub, "ticker:eurusd")
    assert refusal == {"op": "error", "code": "publish_forbidden", "channel": "ticker:eurusd", "id": 1,
                       "message": "ticker:* channels are published by backends only (publish=backend in "
                                  "--channel-options)"}
    assert h.stats.c[F["refused_publish_forbidden"]] == 1 and h.stats.c[F["publishes"]] == 0  # nothing published
    assert post(app, b"/publish/ticker:eurusd") == (200, {"status": "published", "channel": "ticker:eurusd",
                                                           "seq": 1})
    assert publish(app.pubsub, "ticker:open")[0]["op"] == "published"  # a more precise rule allows clients
    assert publish(app.pubsub, "news")[0]["op"] == "published"
    assert h.stats.c[F["refused_publish_forbidden"]] == 1


def test_each_rule_has_its_own_publish_rate_shared_by_clients_and_backends(clock):
    h, _ = host(rate_limit_publishes=5, channel_options="chat:* rate-limit-publishes=2; free:* rate-limit-publishes=0")
    app = App(h, 10)
    app.start()
    pubsub = app.pubsub
    codes = [publish(pubsub, "chat:1")[0].get("code") for _ in range(3)]
    assert codes == [None, None, "rate_limited"]  # 2 a second on chat:*
    assert publish(pubsub, "chat:2")[0]["op"] == "published"  # per channel, within the rule
    assert post(app, b"/publish/chat:2") == (200, {"status": "published", "channel": "chat:2", "seq": 2})
    assert post(app, b"/publish/chat:2") == (429, {"code": "rate_limited"})  # the same buckets
    assert [publish(pubsub, "news")[0].get("code") for _ in range(6)] == [None] * 5 + ["rate_limited"]  # the flag
    assert all(publish(pubsub, "free:x")[0]["op"] == "published" for _ in range(50))  # off for free:*
    assert h.stats.c[F["rate_limited_publishes"]] == 3
    clock[0] += 1.0  # refilled
    assert publish(pubsub, "chat:1")[0]["op"] == "published"


def test_publish_rate_tables_are_one_per_rule_and_swept_back_to_empty(clock):
    h, _ = host(channel_options="chat:* rate-limit-publishes=2; news:* rate-limit-publishes=4; quiet:* history=off")
    pubsub = PubSub(h)
    pubsub.start()
    assert sorted(options.pattern for options in pubsub.publish_rates) == ["chat:*", "news:*"]  # none for off
    for i in range(100):
        publish(pubsub, f"chat:{i}")
        publish(pubsub, f"news:{i}")
    assert [len(buckets) for buckets in pubsub.publish_rates.values()] == [100, 100]
    clock[0] += 1.5  # every bucket is full again: forgetting it changes no decision
    pubsub._sweep()
    assert [len(buckets) for buckets in pubsub.publish_rates.values()] == [0, 0]


@pytest.mark.parametrize(("spec", "stored"), [("", True), ("@user:* replay-messages=0", False),
                                              ("@user:* replay-seconds=0", False), ("chat:* replay-messages=0", True)])
def test_a_user_message_says_stored_as_the_user_channels_rule_says(spec, stored):
    app = App(host(channel_options=spec)[0], 10)
    app.start()
    status, answer = post(app, b"/users/alice/messages")
    assert status == 200 and answer["channel"] == "@user:alice" and answer["stored"] is stored


def test_stats_lists_the_options_in_effect():
    h, _ = host(replay_seconds=60, channel_options="chat:* presence=on replay-messages=200; ticker:* publish=backend")
    app = App(h, 10)
    response = app.handle(request(b"/stats"), b"")
    options = json.loads(response.data.split(b"\r\n\r\n", 1)[1])["channel_options"]
    assert options["default"] == {"pattern": "", "replay_seconds": 60.0, "replay_max_messages": 1000,
                                  "replay_max_bytes": 4 << 20, "rate_limit_publishes": 0.0, "history": True,
                                  "presence": False, "join_leave": False, "publish": "clients"}
    assert [(r["pattern"], r["presence"], r["replay_max_messages"], r["publish"], r["replay_seconds"])
            for r in options["rules"]] == [("chat:*", True, 200, "clients", 60.0), ("ticker:*", False, 1000, "backend",
                                                                                    60.0)]
