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


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.type in (int, float)], ids=lambda o: o.name)
def test_each_numeric_option_reads_its_environment_variable(option):
    value = "7" if option.name != "port" else "7007"
    cfg = config.from_argv([], environ={option.env: value})
    assert getattr(cfg, option.name) == option.type(value)


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--max-message-size", "-1"], ["--port", "70000"],
                                  ["--log-level", "loud"], ["--ping-interval", "-1"]])
def test_invalid_values_are_refused(argv):
    with pytest.raises(ValueError):
        config.from_argv(argv, environ={})


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


def test_config_defaults_are_the_option_defaults():
    # Config repeats OPTIONS' defaults so that attribute access stays typed; keep the two honest.
    fields = Config.__dataclass_fields__
    for option in OPTIONS:
        if option.default is not None:
            assert fields[option.name].default == option.default, option.name
