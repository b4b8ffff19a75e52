"""schemes: the table from URL scheme to broker, and the checks of --bus before the workers start."""

from __future__ import annotations

import time

import pytest

from millionws.pubsub.brokers.base import BusConfigError, redact
from millionws.pubsub.brokers.nats import NatsBackend, servers_of
from millionws.pubsub.brokers.redis import RedisBackend, SentinelUrl, sentinel_of
from millionws.pubsub.brokers.schemes import backend_for, preflight
from tests.conftest import free_port
from tests.pubsub.brokers.harness import fake_bridge


def test_the_url_scheme_picks_the_broker():
    assert type(backend_for(fake_bridge("nats://h:4222"))) is NatsBackend  # type: ignore[arg-type]
    assert type(backend_for(fake_bridge("redis://:pw@h:6379/0"))) is RedisBackend  # type: ignore[arg-type]
    with pytest.raises(BusConfigError, match=r"--bus rediss://\*\*\*@h: must be nats://host:port or redis://"):
        backend_for(fake_bridge("rediss://:pw@h"))  # type: ignore[arg-type]  # not a scheme millionws speaks


def test_preflight_accepts_a_working_broker(broker):
    assert preflight(broker.url) is None


@pytest.mark.parametrize("scheme", ["nats", "redis"])
def test_preflight_of_an_unreachable_broker_is_a_quick_warning(scheme):
    t0 = time.monotonic()
    warning = preflight(f"{scheme}://127.0.0.1:{free_port()}", timeout=1.0)
    assert time.monotonic() - t0 < 2.0
    assert isinstance(warning, str) and "\n" not in warning
    assert "unreachable" in warning and "not ready" in warning


@pytest.mark.parametrize("scheme,module", [("nats", "nats"), ("redis", "redis")])
def test_preflight_without_the_client_library_refuses(scheme, module, monkeypatch, harness):
    monkeypatch.setitem(__import__("sys").modules, module, None)
    url = f"{scheme}://127.0.0.1:{free_port()}"
    with pytest.raises(BusConfigError) as info:
        preflight(url)
    message = str(info.value)
    assert f"pip install 'millionws[{scheme}]'" in message and f"--bus {url}" in message and "\n" not in message
    h = harness(url).start()  # a bridge started anyway says the same in /health
    h.run_until(lambda: "needs the" in h.bridge.error, what="the reason")
    assert f"millionws[{scheme}]" in h.bridge.detail()["error"]


def test_preflight_rejects_an_unknown_scheme():
    with pytest.raises(BusConfigError, match="nats://host:port or redis://host:port"):
        preflight("amqp://h")


def test_several_nats_servers_are_one_cluster():
    assert servers_of("nats://a:4222,nats://b:4223, c:4224") == ["nats://a:4222", "nats://b:4223", "nats://c:4224"]
    assert servers_of("nats://u:pw@a:4222") == ["nats://u:pw@a:4222"]
    for bad in ("nats://a:4222,", "nats://a:4222,redis://b:6379", "nats://a,,nats://b"):
        with pytest.raises(BusConfigError, match="is not nats://host:port"):
            preflight(bad)  # refused before any connect: the server stops with this one line


def test_a_sentinel_url_names_the_sentinels_and_the_service():
    assert sentinel_of("redis://h:6379") is None
    assert sentinel_of("redis+sentinel://:p%40w@s1:26379,s2,[::1]:26381/mymaster/2") == SentinelUrl(
        [("s1", 26379), ("s2", 26379), ("::1", 26381)], "mymaster", 2, None, "p@w")
    assert sentinel_of("redis+sentinel://u:pw@s1/m").username == "u"
    for bad in ("redis+sentinel://s1:26379", "redis+sentinel://s1:26379/m/x", "redis+sentinel://s1:99999/m",
                "redis+sentinel://s1:26379,,s2/m"):
        with pytest.raises(BusConfigError, match=r"redis\+sentinel://"):
            preflight(bad)
    assert type(backend_for(fake_bridge("redis+sentinel://s1/m"))) is RedisBackend  # type: ignore[arg-type]


def test_passwords_are_redacted_in_every_url_of_a_list():
    assert redact("nats://u:pw@a:1,nats://v:pw2@b:2") == "nats://u:***@a:1,nats://v:***@b:2"
    assert redact("redis+sentinel://:pw@s1:1,s2:2/m") == "redis+sentinel://***@s1:1,s2:2/m"


@pytest.mark.parametrize("url,replicas,info,expected", [
    ("nats://a", 0, {"cluster": "c", "connect_urls": ["a", "b", "c"]}, 3),
    ("nats://a", 0, {}, 1),  # a lone server: JetStream refuses replicas there
    ("nats://a", 5, {}, 5),  # the flag wins
])
def test_nats_stream_replicas_follow_the_flag_or_the_cluster(url, replicas, info, expected):
    backend = NatsBackend(fake_bridge(url, replicas=replicas))  # type: ignore[arg-type]
    assert backend.replicas_for(info) == expected


@pytest.mark.parametrize("url,replicas,waits", [
    ("redis://h", 0, 0), ("redis+sentinel://s/m", 0, 1), ("redis+sentinel://s/m", 1, 0), ("redis://h", 3, 2)])
def test_redis_waits_for_replicas_as_the_flag_or_the_topology_says(url, replicas, waits):
    assert RedisBackend(fake_bridge(url, replicas=replicas)).wait_replicas == waits  # type: ignore[arg-type]
