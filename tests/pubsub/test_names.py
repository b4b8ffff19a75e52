"""Names a client may use, a user's reserved channel, and the refusal every part of pubsub raises."""

from __future__ import annotations

import pytest

from millionws.pubsub import names
from millionws.pubsub.records import valid_internal


@pytest.mark.parametrize("name", ["news", "chat.42", "a:b-c_d.e", "x" * 128, "0"])
def test_valid_names(name):
    assert names.valid_channel(name)


@pytest.mark.parametrize("name", ["", "x" * 129, "a b", "é", "a/b", "@user:1", "news\n", 42, None, ["a"]])
def test_invalid_names(name):
    assert not names.valid_channel(name)


@pytest.mark.parametrize("user", ["alice", "auth0|5f7c", "alice@example.com", "a+b=", "x" * 128])
def test_a_user_channel_is_reserved_and_travels_between_workers(user):
    assert names.valid_user(user)
    channel = names.user_channel(user)
    assert channel == "@user:" + user
    assert not names.valid_channel(channel) and valid_internal(channel)


@pytest.mark.parametrize("user", ["", "x" * 129, "a b", "é", 'a"b', "a/b", 7, None])
def test_invalid_users(user):
    assert not names.valid_user(user)


def test_a_refusal_carries_its_code_message_and_channel():
    err = names.ChannelError("too_many_channels", "at most 3", "news")
    assert (err.code, err.message, err.channel, str(err)) == ("too_many_channels", "at most 3", "news", "at most 3")
