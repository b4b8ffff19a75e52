"""The subscriptions of one worker without a hub: limits, interest transitions, holds, gauges."""

from __future__ import annotations

import pytest

from millionws import metrics
from millionws.pubsub.names import ChannelError
from millionws.pubsub.registry import Registry

CHANNELS, SUBSCRIPTIONS = metrics.F["channels"], metrics.F["subscriptions"]


class Rig:
    """A registry whose interest calls are logged with what the table held at the time of the call."""

    def __init__(self, **limits: int) -> None:
        self.c = [0] * len(metrics.FIELDS)
        self.reg = Registry(self.c, **limits)
        self.calls: list[tuple[str, bool, bool]] = []
        self.reg.on_interest = lambda ch, on: self.calls.append((ch, on, self.reg.interested(ch)))

    def gauges(self) -> tuple[int, int]:
        return self.c[CHANNELS], self.c[SUBSCRIPTIONS]


def test_admit_returns_the_new_channels_once_in_order_and_changes_nothing():
    rig = Rig()
    rig.reg.add("a", "x")
    assert rig.reg.admit("a", ["y", "x", "z", "y"]) == ["y", "z"]
    assert rig.reg.admit("b", ["x"]) == ["x"]
    assert rig.reg.of_conn == {"a": {"x"}} and rig.reg.subscriptions == 1


def test_admit_refuses_past_the_limits_counting_what_is_held_already():
    rig = Rig(max_channels=3, max_subscribers=5)
    rig.reg.add("a", "x")
    rig.reg.hold("a", "y", object())  # a held channel counts like a subscribed one
    assert rig.reg.admit("a", ["x", "z"]) == ["z"]
    with pytest.raises(ChannelError) as err:
        rig.reg.admit("a", ["z", "w"])
    assert err.value.code == "too_many_channels" and "(2 subscribed)" in err.value.message
    assert rig.reg.admit("a", ["z", "w"], internal=True) == ["z", "w"]  # a user's own channel: not the client's
    rig.reg.add("b", "p")
    rig.reg.add("b", "q")
    with pytest.raises(ChannelError) as err:
        rig.reg.admit("c", ["p", "q"], internal=True)  # the worker's bound holds for internal ones too
    assert err.value.code == "too_many_subscribers"
    assert "c" not in rig.reg.of_conn and rig.gauges() == (4, 4)


def test_interest_turns_on_with_the_first_connection_and_off_with_the_last():
    rig = Rig()
    rig.reg.add("a", "x")
    rig.reg.hold("b", "x", object())
    rig.reg.add("c", "y")
    assert rig.calls == [("x", True, True), ("y", True, True)]  # the connection is in the table already
    assert rig.gauges() == (2, 3)
    rig.reg.remove("a", ["x"])
    assert rig.calls[2:] == []  # "b" still waits on x
    rig.reg.remove("b", ["x"])
    assert rig.calls[2:] == [("x", False, False)]
    assert rig.gauges() == (1, 1) and "x" not in rig.reg.subs and "x" not in rig.reg.holds


def test_a_hold_is_released_into_the_subscribers_without_an_interest_change():
    rig = Rig()
    hold = object()
    rig.reg.hold("a", "x", hold)
    assert rig.reg.holds == {"x": {"a": hold}} and rig.reg.interested("x")
    rig.reg.release("a", "x")
    assert rig.reg.holds == {} and rig.reg.subs == {"x": {"a": None}}
    assert rig.calls == [("x", True, True)] and rig.gauges() == (1, 1)


def test_remove_skips_what_the_connection_does_not_hold_and_returns_its_cancelled_holds():
    rig = Rig()
    h1, h2 = object(), object()
    rig.reg.add("a", "x")
    rig.reg.hold("a", "y", h1)
    rig.reg.hold("a", "z", h2)
    rig.reg.add("b", "y")
    assert rig.reg.remove("a", ["y", "nope"]) == [h1]
    assert rig.reg.of_conn["a"] == {"x", "z"} and rig.reg.subs["y"] == {"b": None}
    assert rig.reg.remove("stranger", ["x"]) == []
    assert rig.reg.drop("a") == [h2]
    assert rig.reg.drop("a") == []  # idempotent
    assert rig.reg.of_conn == {"b": {"y"}} and rig.reg.channels() == {"y"} and rig.gauges() == (1, 1)
    calls = [(ch, on) for ch, on, _ in rig.calls]
    assert calls[:3] == [("x", True), ("y", True), ("z", True)]
    assert sorted(calls[3:]) == [("x", False), ("z", False)]  # a connection's channels are a set: in any order


def test_subscribers_are_kept_in_subscription_order():
    rig = Rig()
    for conn in ("c3", "c1", "c2"):
        rig.reg.add(conn, "x")
    rig.reg.remove("c1", ["x"])
    rig.reg.add("c1", "x")
    assert list(rig.reg.subs["x"]) == ["c3", "c2", "c1"]


def test_a_page_of_channels_is_by_name_after_the_cursor_filtered_and_counts_held_connections():
    rig = Rig()
    reg = rig.reg
    for conn, channels in (("a", ["chat.2", "news", "@user:al"]), ("b", ["chat.1", "news"]), ("c", ["chat.10"])):
        for channel in channels:
            reg.add(conn, channel)
    reg.hold("d", "chat.1", object())  # waiting for its replay: it holds the channel too
    assert reg.page("", "", 10, False) == [("chat.1", 2), ("chat.10", 1), ("chat.2", 1), ("news", 2)]
    assert reg.page("", "", 2, False) == [("chat.1", 2), ("chat.10", 1)]
    assert reg.page("chat.10", "", 2, False) == [("chat.2", 1), ("news", 2)]
    assert reg.page("", "chat.1", 10, False) == [("chat.1", 2), ("chat.10", 1)]
    assert reg.page("", "", 10, True)[0] == ("@user:al", 1)  # users' channels only when asked
    assert reg.page("news", "", 10, False) == []
    assert sorted(reg.holders("chat.1"), key=str) == ["b", "d"] and reg.holders("nothing") == []
    assert reg.channels_of("a") == {"chat.2", "news", "@user:al"} and reg.channels_of("zz") == set()
