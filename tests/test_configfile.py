"""--config FILE: TOML keys, types, precedence (flag > environment > file > default) and refusals."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from millionws import config, configfile
from millionws.cli import build_parser
from millionws.namespaces import namespaces_of

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "millionws.toml"
    path.write_text(text)
    return str(path)


def load(argv: list[str], environ: dict[str, str] | None = None):
    return configfile.load(build_parser().parse_args(["serve", *argv]), environ or {})


def test_file_values_are_typed_and_below_environment_and_flags(tmp_path):
    path = write(tmp_path, 'port = 9000\nmax_pending_bytes = 4096\nping_interval = 3\nlog_level = "debug"\n'
                           "trust_user_param = true\n")
    cfg = load(["--config", path])
    assert (cfg.port, cfg.max_pending_bytes, cfg.ping_interval, cfg.log_level, cfg.trust_user_param) == \
        (9000, 4096, 3.0, "debug", True)
    assert type(cfg.ping_interval) is float  # a TOML integer given to a float option becomes a float
    cfg = load(["--config", path], {"MILLIONWS_PORT": "9100", "MILLIONWS_PING_INTERVAL": "4"})
    assert (cfg.port, cfg.ping_interval, cfg.max_pending_bytes) == (9100, 4.0, 4096)
    cfg = load(["--config", path, "--port", "9200"], {"MILLIONWS_PORT": "9100"})
    assert cfg.port == 9200
    assert load([]).port == 8080  # no file: the default


def test_the_environment_names_the_file(tmp_path):
    path = write(tmp_path, "port = 9001\n")
    assert load([], {"MILLIONWS_CONFIG": path}).port == 9001
    # the flag names the file over the variable
    second = tmp_path / "second.toml"
    second.write_text("port = 9003\n")
    assert load(["--config", str(second)], {"MILLIONWS_CONFIG": path}).port == 9003


def test_the_file_is_validated_like_flags(tmp_path):
    path = write(tmp_path, "compression_level = 12\n")
    with pytest.raises(ValueError, match=r"compression_level must be within 1\.\.9"):
        load(["--config", path])


@pytest.mark.parametrize(("text", "message"), [
    ("max_conections = 5\n", "unknown key 'max_conections' (did you mean 'max_connections'?)"),
    ("completely_unrelated = 5\n", "unknown key 'completely_unrelated'"),
    ("max-connections = 5\n", "'max-connections' is spelled 'max_connections' in a configuration file"),
    ('port = "8080"\n', "port must be an integer, not a string '8080'"),
    ("port = 80.5\n", "port must be an integer, not a float 80.5"),
    ("workers = true\n", "workers must be an integer, not a boolean True"),
    ('ping_interval = "2"\n', "ping_interval must be a number, not a string '2'"),
    ("trust_user_param = 1\n", "trust_user_param must be a boolean (true/false), not an integer 1"),
    ("host = 127\n", "host must be a string, not an integer 127"),
    ("[port]\nx = 1\n", "port must be an integer, not a table"),
    ("port = \n", "not valid TOML"),
    ('[channel_options."chat:*"]\nreplay-messages = 5\n', "'replay-messages' is spelled 'replay_messages'"),
    ('[channel_options."chat:*"]\nrepaly_messages = 5\n', "did you mean 'replay_messages'"),
    ('[channel_options."chat x"]\npresence = true\n', "'chat x' is not a pattern"),
    ('[channel_options]\n"chat:*" = 3\n', 'channel_options."chat:*" must be a table'),
    ('[channel_options."chat:*"]\npresence = [1]\n', "must be a boolean, a number or a word"),
])  # fmt: skip
def test_refusals_name_the_file_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load(["--config", path])
    assert str(info.value).startswith(f"--config {path}: "), info.value
    assert message in str(info.value), info.value
    assert "\n" not in str(info.value)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^--config .*nope\.toml: cannot read it: No such file or directory$"):
        load(["--config", str(tmp_path / "nope.toml")])


def test_channel_options_as_a_table_mean_the_string_rules(tmp_path):
    path = write(tmp_path, '[channel_options."chat:*"]\npresence = true\njoin_leave = true\nreplay_messages = 200\n'
                           '[channel_options."ticker:*"]\npublish = "backend"\nreplay_seconds = 2.5\n')
    cfg = load(["--config", path])
    assert cfg.channel_options == ("chat:* presence=on join-leave=on replay-messages=200; "
                                   "ticker:* publish=backend replay-seconds=2.5")
    rules = namespaces_of(cfg)
    chat, ticker = rules.of("chat:room"), rules.of("ticker:x")
    assert (chat.presence, chat.join_leave, chat.replay_max_messages) == (True, True, 200)
    assert (ticker.publish, ticker.replay_seconds, ticker.presence) == ("backend", 2.5, False)
    # a bad value is refused by the same parser as the flag's
    path = write(tmp_path, '[channel_options."chat:*"]\npublish = "anyone"\n')
    with pytest.raises(ValueError, match="publish must be clients or backend"):
        load(["--config", path])


def test_channel_options_as_a_string(tmp_path):
    path = write(tmp_path, 'channel_options = "chat:* presence=on"\n')
    assert namespaces_of(load(["--config", path])).of("chat:a").presence


def test_every_option_type_reads_from_a_file(tmp_path):
    """Each option's own default, written as TOML, reads back as itself: no type the file cannot express."""
    for option in config.OPTIONS:
        if option.default is None:
            continue
        value = option.default
        text = ("true" if value else "false") if option.type is bool else (
            f'"{value}"' if option.type is str else repr(value))
        values = configfile.read(write(tmp_path, f"{option.name} = {text}\n"))
        assert values == {option.name: value} and type(values[option.name]) is option.type, option.name


def test_the_example_file_loads():
    """deploy/millionws.example.toml is what the README shows: it must load and validate."""
    example = ROOT / "deploy" / "millionws.example.toml"
    values = configfile.read(str(example))
    assert len(values) >= 5
    cfg = configfile.load(argparse.Namespace(config=str(example)), {})
    for name, value in values.items():
        if name != "channel_options":
            assert getattr(cfg, name) == value, name
    assert namespaces_of(cfg).rules  # the example shows the table form of channel options
