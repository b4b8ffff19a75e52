"""base: the event ids, the checks of what is read from a broker, the log limiter, the interface."""

from __future__ import annotations

import logging
import time
import types

import pytest

from millionws.pubsub.brokers import base
from millionws.pubsub.brokers.backend import Backend
from millionws.pubsub.brokers.base import (
    E_ACK,
    E_ANSWER,
    E_CTL,
    E_GAP,
    E_MSG,
    E_REPLAY,
    E_SIGNAL,
    E_STATE,
    checked_entry,
    epoch_of,
    redact,
)
from tests.pubsub.brokers.harness import Fake


def test_event_constants_keep_their_values():
    # The bridge hands kinds below E_CTL to the channels and the rest to the control plane: order matters.
    assert (E_MSG, E_GAP, E_REPLAY, E_STATE, E_ACK, E_SIGNAL, E_CTL, E_ANSWER) == (0, 1, 2, 3, 4, 5, 6, 7)


def test_redact_hides_passwords():
    assert redact("redis://:s3cret@h:6379/0") == "redis://***@h:6379/0"
    assert redact("nats://user:pw@h:4222") == "nats://user:***@h:4222"
    assert redact("nats://h:4222") == "nats://h:4222"


def test_records_read_from_the_broker_are_checked():
    now = time.time()
    assert checked_entry(b"7", b"12.5", b'{"a":1}') == (7, 12.5, b'{"a":1}')
    assert checked_entry("7", None, b"[1]")[:1] == (7,)  # no Mws-T0: a backend publish, now
    assert checked_entry("7", None, b"[1]")[1] >= now
    for bad_seq in (None, b"", b"0", b"-1", b" 1", b"1_0", b"+1", b"\xc2\xb2", "9007199254740992", b"1.0", 1 << 53):
        assert checked_entry(bad_seq, b"1.0", b"{}") is None, bad_seq
    assert checked_entry(b"9007199254740991", b"1", b"{}")[0] == (1 << 53) - 1
    for bad_t in (b"nan", b"inf", b"-inf", b"x", b"", b"1" * 100):
        assert checked_entry(b"3", bad_t, b"{}")[2] is None, bad_t  # valid seq: kept as malformed
    for bad_data in (b"", b"not json", b"{} {}", b"\xff", b"[1e400]", b"NaN", b'"\\ud800"', b"[" * 65 + b"]" * 65,
                     None, "{}"):
        entry = checked_entry(b"3", b"1.0", bad_data)
        assert entry is not None and entry[0] == 3 and entry[2] is None, bad_data


def test_failure_lines_are_rate_limited_per_reason(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, "millionws.pubsub.brokers")
    now = [1000.0]
    monkeypatch.setattr(base, "time", types.SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    limit = base.Limiter()
    for _ in range(5):
        limit("connection", "refused", logging.WARNING, "down: %s", "refused")
    limit("connection", "timeout", logging.WARNING, "down: %s", "timeout")  # another reason: at once
    now[0] += base.LOG_INTERVAL
    limit("connection", "timeout", logging.WARNING, "down: %s", "timeout")
    assert [r.getMessage() for r in caplog.records] == ["down: refused",
                                                        "down: timeout (4 more like the previous line suppressed)",
                                                        "down: timeout"]


def test_a_broker_missing_an_operation_cannot_be_built():
    class Partial(Fake):  # everything but one
        publish_batch = Backend.publish_batch

    Fake({})  # the complete one builds
    with pytest.raises(TypeError, match="publish_batch"):
        Partial({})


def test_an_epoch_is_short_hex_whatever_the_broker_holds_and_changes_with_it():
    epoch = epoch_of("news", b"1700000000.123456 pub")
    assert len(epoch) == 16 and int(epoch, 16) >= 0
    assert epoch == epoch_of("news", b"1700000000.123456 pub")  # every node reads the same epoch
    assert epoch != epoch_of("news", b"1700000000.123457 pub")  # the sequence started again
    assert epoch_of("a", "b") != epoch_of("ab", "")  # parts are separated
    assert len(epoch_of("x", b"\xff" * 10_000 + b'"<script>')) == 16  # untrusted bytes never pass as they are
