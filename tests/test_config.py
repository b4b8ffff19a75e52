from __future__ import annotations

import pytest

from millionws import config
from millionws.config import OPTIONS, Config


def test_every_option_has_flag_env_default_and_help():
    names = {o.name for o in OPTIONS}
    assert names == {f for f in Config.__dataclass_fields__}
    for o in OPTIONS:
        assert o.flag == "--" + o.name.replace("_", "-")
        assert o.env == "MILLIONWS_" + o.name.upper()
        assert o.help


def test_defaults():
    cfg = config.from_argv([], environ={})
    assert cfg.port == 8080 and cfg.host == "0.0.0.0"
    assert cfg.max_message_size == 1 << 20
    assert cfg.handshake_timeout == 10 and cfg.ping_interval == 0 and cfg.grace == 10
    assert cfg.workers >= 1 and cfg.backlog >= 1


def test_flag_beats_environment_beats_default():
    env = {"MILLIONWS_PORT": "9000", "MILLIONWS_MAX_PENDING_BYTES": "4096"}
    cfg = config.from_argv(["--port", "9100"], environ=env)
    assert cfg.port == 9100
    assert cfg.max_pending_bytes == 4096
    assert config.from_argv([], environ={"MILLIONWS_PING_INTERVAL": "2.5"}).ping_interval == 2.5


# "7" is out of range for a few options alone (the others' defaults constrain them): a value of their own.
_IN_RANGE = {"port": "7007", "bus_backoff_min": "0.7", "mesh_socket_buffer": str(7 << 20),
             "mesh_max_datagram": str(7 << 10), "timer_resolution": "0.7", "max_proxy_header": "777",
             "control_max_bytes": str(7 << 20), "bus_replicas": "3"}


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.type in (int, float)], ids=lambda o: o.name)
def test_each_numeric_option_reads_its_environment_variable(option):
    value = _IN_RANGE.get(option.name, "7")
    cfg = config.from_argv([], environ={option.env: value})
    assert getattr(cfg, option.name) == option.type(value)


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--max-message-size", "-1"], ["--port", "70000"],
                                  ["--log-level", "loud"], ["--ping-interval", "-1"], ["--control-timeout", "0"],
                                  ["--control-max-bytes", "100"], ["--control-max-bytes", str(65 << 20)],
                                  ["--control-max-peers", "0"], ["--control-announce-interval", "0"]])
def test_invalid_values_are_refused(argv):
    with pytest.raises(ValueError):
        config.from_argv(argv, environ={})


def test_control_messages_must_hold_the_largest_message_a_history_answer_carries():
    with pytest.raises(ValueError, match=r"control_max_bytes .* at least the largest message"):
        config.from_argv(["--max-message-size", str(4 << 20)], environ={})
    with pytest.raises(ValueError, match="control_max_bytes"):
        config.from_argv(["--max-request-body", str(2 << 20)], environ={})
    cfg = config.from_argv(["--max-message-size", str(4 << 20), "--control-max-bytes", str((4 << 20) + 65536)],
                           environ={})
    assert cfg.control_max_bytes == (4 << 20) + 65536


def test_garbage_in_environment_names_the_variable():
    with pytest.raises(ValueError, match="MILLIONWS_PORT"):
        config.from_argv([], environ={"MILLIONWS_PORT": "eighty"})


def test_channel_options_defaults():
    cfg = config.from_argv([], environ={})
    assert cfg.max_channels_per_connection == 100 and cfg.max_subscribers_per_worker == 2_000_000
    assert cfg.replay_seconds == 120 and cfg.replay_max_messages == 1000 and cfg.trust_user_param is False


def test_switch_reads_flag_and_environment():
    assert config.from_argv(["--trust-user-param"], environ={}).trust_user_param is True
    assert config.from_argv([], environ={"MILLIONWS_TRUST_USER_PARAM": "yes"}).trust_user_param is True
    assert config.from_argv([], environ={"MILLIONWS_TRUST_USER_PARAM": "0"}).trust_user_param is False
    with pytest.raises(ValueError, match="MILLIONWS_TRUST_USER_PARAM"):
        config.from_argv([], environ={"MILLIONWS_TRUST_USER_PARAM": "maybe"})


@pytest.mark.parametrize("argv", [["--max-channels-per-connection", "0"], ["--max-subscribers-per-worker", "0"],
                                  ["--replay-seconds", "-1"], ["--replay-max-messages", "-1"]])
def test_invalid_channel_limits_are_refused(argv):
    with pytest.raises(ValueError):
        config.from_argv(argv, environ={})


def test_bus_option():
    assert config.from_argv([], environ={}).bus == ""
    assert config.from_argv(["--bus", "nats://127.0.0.1:4222"], environ={}).bus == "nats://127.0.0.1:4222"
    assert config.from_argv([], environ={"MILLIONWS_BUS": "redis://h:6379"}).bus == "redis://h:6379"
    with pytest.raises(ValueError, match="bus"):
        config.from_argv(["--bus", "amqp://h"], environ={})
    cluster = "nats://a:4222,nats://b:4222,nats://c:4222"
    assert config.from_argv(["--bus", cluster], environ={}).bus == cluster
    sentinel = "redis+sentinel://s1:26379,s2:26379/mymaster"
    assert config.from_argv(["--bus", sentinel, "--bus-replicas", "2"], environ={}).bus_replicas == 2
    for replicas in ("-1", "6"):
        with pytest.raises(ValueError, match="bus_replicas"):
            config.from_argv(["--bus-replicas", replicas], environ={})


def test_config_defaults_are_the_option_defaults():
    # Config repeats OPTIONS' defaults so that attribute access stays typed; keep the two honest.
    fields = Config.__dataclass_fields__
    for option in OPTIONS:
        if option.default is not None:
            assert fields[option.name].default == option.default, option.name


# -- the limits that were module constants ---------------------------------------------------------------------------
# (option, the value the constant had, another valid value, an invalid one)
INTERNAL_LIMITS = [
    ("bus_outbox_messages", 100_000, "10", "0"),  # broker.OUTBOX_MESSAGES
    ("bus_publish_batch", 256, "16", "0"),  # broker.PUBLISH_BATCH
    ("bus_fetch_batch", 256, "16", "0"),  # broker.FETCH_BATCH
    ("bus_events_per_wake", 20_000, "100", "0"),  # broker.EVENTS_PER_WAKE
    ("bus_backoff_min", 0.1, "0.05", "0"),  # broker.BACKOFF_MIN
    ("bus_backoff_max", 5.0, "30", "0.05"),  # broker.BACKOFF_MAX; invalid: below --bus-backoff-min
    ("bus_connect_timeout", 2.0, "0.5", "0"),  # broker.CONNECT_TIMEOUT
    ("bus_heartbeat", 5.0, "1", "-1"),  # broker.HEARTBEAT
    ("bus_live_pending_messages", 1_000_000, "1000", "0"),  # NatsBackend.subscribe_live
    ("bus_live_pending_bytes", 256 << 20, "65536", "-1"),  # NatsBackend.subscribe_live
    ("bus_max_json_depth", 64, "128", "513"),  # broker.MAX_JSON_DEPTH
    ("mesh_socket_buffer", 4 << 20, str(1 << 20), str((256 << 10) * 2 - 1)),  # bus.SOCKET_BUFFER; < 2 datagrams
    ("mesh_max_datagram", 256 << 10, "65536", "512"),  # bus.MAX_DATAGRAM
    ("mesh_max_outbox", 64 << 20, str(1 << 20), "0"),  # bus.MAX_OUTBOX
    ("mesh_datagrams_per_wake", 64, "8", "0"),  # LocalBus._receive
    ("receive_buffer", 256 << 10, "65536", "0"),  # ReceiveBuffer(size=256 * 1024)
    ("buffer_pool_size", 256, "0", "-1"),  # BufferPool(max_free=256)
    ("frame_pool_size", 1024, "0", "-1"),  # FramePool(max_free=1024)
    ("accept_batch", 256, "1", "0"),  # Acceptor.accept_from
    ("pipeline_budget", 32, "1", "0"),  # worker._PIPELINE_BUDGET
    ("timer_resolution", 0.05, "0.01", "0.0001"),  # Reactor(timer_resolution=0.05)
    ("stats_interval", 0.25, "1", "0"),  # Worker._flush_periodically
    ("sweep_interval", 5.0, "60", "-5"),  # PubSub._sweep
    ("presence_interval", 1.0, "0.5", "0"),  # Presence.tick (docs/presence.md)
    ("presence_max_events", 100, "10", "65536"),  # a BATCH record counts its joins in 16 bits
    ("presence_timeout", 30.0, "60", "2"),  # below 3 x --presence-interval: the heartbeat could not keep up
    ("presence_max_sources", 4096, "16", "0"),
    ("presence_list_max", 10000, "500", "65536"),  # a LIST_ANS record counts its members in 16 bits
    ("presence_list_timeout", 2.0, "1", "0"),
    ("presence_max_lists", 256, "8", "-1"),
]
_BY_NAME = {o.name: o for o in OPTIONS}


@pytest.mark.parametrize(("name", "today"), [row[:2] for row in INTERNAL_LIMITS], ids=lambda v: str(v))
def test_an_internal_limit_defaults_to_the_value_its_constant_had(name, today):
    assert _BY_NAME[name].default == today
    assert getattr(config.from_argv([], environ={}), name) == today
    assert getattr(config.DEFAULTS, name) == today  # what constructors default to


@pytest.mark.parametrize(("name", "value"), [(row[0], row[2]) for row in INTERNAL_LIMITS], ids=lambda v: str(v))
def test_an_internal_limit_reads_its_flag_and_its_environment_variable(name, value):
    option = _BY_NAME[name]
    expected = option.type(value)
    assert expected != option.default
    assert getattr(config.from_argv([option.flag, value], environ={}), name) == expected
    assert getattr(config.from_argv([], environ={option.env: value}), name) == expected
    assert getattr(config.from_argv([option.flag, value], environ={option.env: str(option.default)}), name) == expected


@pytest.mark.parametrize(("name", "value"), [(row[0], row[3]) for row in INTERNAL_LIMITS], ids=lambda v: str(v))
def test_an_internal_limit_out_of_range_is_refused_at_start(name, value):
    option = _BY_NAME[name]
    with pytest.raises(ValueError, match=name):
        config.from_argv([option.flag, value], environ={})
    with pytest.raises(ValueError, match=name):
        config.from_argv([], environ={option.env: value})


@pytest.mark.parametrize("argv", [
    ["--bus-backoff-min", "2", "--bus-backoff-max", "1"],
    ["--mesh-socket-buffer", "65536", "--mesh-max-datagram", "65536"],  # a datagram must fit half the buffer
    ["--mesh-socket-buffer", str(2 << 30)],  # setsockopt takes an int the kernel doubles
    ["--timer-resolution", "2"],  # coarser than the loop's one-second wake-up
    ["--bus", "nats://h:4222", "--max-json-depth", "100"],  # own messages would come back too deep
    ["--bus", "nats://h:4222", "--bus-max-json-depth", "16"],
])
def test_internal_limits_that_contradict_each_other_are_refused(argv):
    with pytest.raises(ValueError):
        config.from_argv(argv, environ={})


def test_internal_limits_that_fit_together_are_accepted():
    cfg = config.from_argv(["--bus-backoff-min", "1", "--bus-backoff-max", "1", "--mesh-socket-buffer", "65536",
                            "--mesh-max-datagram", "32768", "--timer-resolution", "1"], environ={})
    assert (cfg.bus_backoff_min, cfg.bus_backoff_max, cfg.mesh_max_datagram) == (1.0, 1.0, 32768)
    # Without --bus the broker's depth is unused: a deeper client limit alone is no contradiction.
    assert config.from_argv(["--max-json-depth", "100"], environ={}).max_json_depth == 100
    both = config.from_argv(["--bus", "nats://h:4222", "--max-json-depth", "100", "--bus-max-json-depth", "100"],
                            environ={})
    assert (both.max_json_depth, both.bus_max_json_depth) == (100, 100)


def test_serve_with_a_limit_that_cannot_work_prints_one_line_and_exits_2(capsys, monkeypatch):
    from millionws import cli

    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    assert cli.main(["serve", "--pipeline-budget", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pipeline_budget" in err


@pytest.mark.parametrize(("argv", "says"), [
    (["--max-proxy-header", "51"], "max_proxy_header"),
    (["--max-proxy-header", "65552"], "max_proxy_header"),
    (["--proxy-protocol", "--proxy-protocol-from", "10.0.0.0/8,not-a-net"], "'not-a-net' is not a CIDR"),
    (["--proxy-protocol-from", "10.0.0.0/8"], "needs proxy_protocol"),
])
def test_proxy_protocol_settings_that_cannot_work_stop_the_start(argv, says):
    with pytest.raises(ValueError, match=says):
        config.from_argv(argv, environ={})


def test_trusted_networks_parse_both_families():
    nets = config.trusted_networks("10.0.0.0/8, 2001:db8::/32,192.168.1.7")
    assert [str(n) for n in nets] == ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"]
    assert config.trusted_networks("") == ()


def test_tls_needs_a_receive_buffer_with_room_for_a_whole_record():
    tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"]
    with pytest.raises(ValueError, match="receive_buffer must be at least 65536 with TLS"):
        config.from_argv([*tls, "--receive-buffer", "65535"], environ={})
    assert config.from_argv([*tls, "--receive-buffer", "65536"], environ={}).receive_buffer == 65536
    assert config.from_argv(["--receive-buffer", "4096"], environ={}).receive_buffer == 4096  # plain: any size


def test_compression_is_off_by_default_and_read_from_flag_and_environment():
    cfg = config.from_argv([], environ={})
    assert (cfg.compression, cfg.compression_min_size, cfg.compression_level) == ("off", 128, 6)
    cfg = config.from_argv(["--compression", "deflate", "--compression-min-size", "0"],
                           environ={"MILLIONWS_COMPRESSION_LEVEL": "1"})
    assert (cfg.compression, cfg.compression_min_size, cfg.compression_level) == ("deflate", 0, 1)


@pytest.mark.parametrize(("argv", "says"), [
    (["--compression", "gzip"], "compression must be off or deflate"),
    (["--compression-min-size", "-1"], "compression_min_size"),
    (["--compression-level", "0"], "compression_level"),
    (["--compression-level", "10"], "compression_level"),
])
def test_compression_settings_that_cannot_work_stop_the_start(argv, says):
    with pytest.raises(ValueError, match=says):
        config.from_argv(argv, environ={})
