"""schemes: the table from URL scheme to broker, and the checks of --bus before the workers start."""

from __future__ import annotations

import time

import pytest

from millionws.pubsub.brokers.base import BusConfigError
from millionws.pubsub.brokers.nats import NatsBackend
from millionws.pubsub.brokers.redis import RedisBackend
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
