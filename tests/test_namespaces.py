"""--channel-options: rules by namespace, the longest pattern first, refused at start when they cannot work."""

from __future__ import annotations

import pytest

from millionws import config as cfg
from millionws.namespaces import ChannelOptions, Namespaces, namespaces_of

DEFAULT = ChannelOptions("", 120.0, 1000, 4 << 20, 0.0)


def test_no_rules_gives_the_global_flags_to_every_channel() -> None:
    config = cfg.from_argv(["--replay-seconds", "30", "--rate-limit-publishes", "5"], environ={})
    options = namespaces_of(config).of("anything")
    assert (options.replay_seconds, options.replay_max_messages, options.rate_limit_publishes) == (30.0, 1000, 5.0)
    assert options.history and not options.presence and options.clients_publish and options.pattern == ""


def test_longest_prefix_wins_whatever_the_order_and_exact_beats_prefixes() -> None:
    ns = Namespaces("chat:* presence=on replay-messages=200; chat:vip:* replay-messages=5; chat:vip:x history=off; "
                    "ticker:* publish=backend replay-seconds=10", DEFAULT)
    assert ns.of("chat:1").replay_max_messages == 200 and ns.of("chat:1").presence
    vip = ns.of("chat:vip:7")
    assert vip.replay_max_messages == 5 and not vip.presence  # a rule starts from the defaults, not from chat:*
    assert not ns.of("chat:vip:x").history and ns.of("chat:vip:x").pattern == "chat:vip:x"
    assert ns.of("chat:vip:xy").pattern == "chat:vip:*"
    ticker = ns.of("ticker:eurusd")
    assert not ticker.clients_publish and ticker.replay_seconds == 10.0 and ticker.replay_max_messages == 1000
    assert ns.of("news").pattern == "" and ns.of("chat").pattern == ""
    assert ns.any("presence") and not ns.any("join_leave")


def test_user_channels_and_a_catch_all_can_be_named() -> None:
    ns = Namespaces("@user:* replay-messages=50; * replay-seconds=5", DEFAULT)
    assert ns.of("@user:alice").replay_max_messages == 50
    assert ns.of("news").replay_seconds == 5.0 and ns.of("@user:alice").replay_seconds == 120.0


@pytest.mark.parametrize(("spec", "message"), [
    ("chat:* presense=on", "not key=value with a key among"),
    ("chat:* presence", "not key=value"),
    ("chat:* presence=maybe", "presence must be on or off"),
    ("chat:* replay-seconds=-1", "replay-seconds must be"),
    ("chat:* replay-seconds=nan", "replay-seconds must be"),
    ("chat:* replay-messages=1.5", "replay-messages must be"),
    ("chat:* replay-bytes=0", "replay-bytes must be"),
    ("chat:* publish=everyone", "publish must be clients or backend"),
    ("chat:* join-leave=on", "join-leave=on needs presence=on"),
    ("chat:* history=on; chat:* history=off", "given twice"),
    ("ch*at presence=on", "is not a pattern"),
    ("bad! presence=on", "is not a pattern"),
    ("presence=on", "is not a pattern"),
])
def test_a_rule_that_cannot_work_stops_the_server_with_one_line(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        cfg.from_argv(["--channel-options", spec], environ={})
    assert "\n" not in str(info.value) and str(info.value).startswith("channel_options:")


def test_the_environment_variable_is_read() -> None:
    config = cfg.from_argv([], environ={"MILLIONWS_CHANNEL_OPTIONS": "ticker:* publish=backend"})
    assert not namespaces_of(config).of("ticker:a").clients_publish
