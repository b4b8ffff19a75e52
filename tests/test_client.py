"""millionws.client's pure rules: reading a token's exp, when to refresh, which closes end the client."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from millionws.client import REFRESH_MARGIN, reconnects_after, refresh_time, token_expiry


def _unsigned(payload: bytes) -> str:
    part = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{part}.c2ln"


def test_token_expiry_reads_exp_without_the_key():
    token = jwt.encode({"sub": "a", "exp": 1_900_000_000}, "a-secret-nobody-on-the-client-side-has", algorithm="HS256")
    assert token_expiry(token) == 1_900_000_000.0
    assert token_expiry(_unsigned(json.dumps({"exp": 12.5}).encode())) == 12.5
    # Payload lengths that need each amount of base64 padding.
    for filler in ("", "x", "xy", "xyz"):
        assert token_expiry(_unsigned(json.dumps({"f": filler, "exp": 7}).encode())) == 7.0


@pytest.mark.parametrize("token", [
    "", "opaque-api-key", "a.b", "a.b.c.d",
    _unsigned(b"not json"), _unsigned(b"[1]"), _unsigned(b'{"sub":"a"}'), _unsigned(b'{"exp":"soon"}'),
    _unsigned(b'{"exp":true}'), _unsigned(b"\xff\xfe"), "eyJ.!!!.c2ln",
])
def test_a_token_without_a_readable_exp_has_none(token):
    assert token_expiry(token) is None


def test_refresh_time_is_thirty_seconds_or_a_tenth_of_the_life_before_exp():
    assert refresh_time(3600.0, 0.0) == 3600.0 - REFRESH_MARGIN  # an hour-long token: 30 s before
    assert refresh_time(20.0, 0.0) == 18.0  # a 20-second token: 2 s before
    assert refresh_time(100.0, 90.0, margin=30.0, fraction=0.5) == 95.0
    assert refresh_time(10.0, 50.0) == 10.0  # received after its exp: at once (the caller's delay is 0)


@pytest.mark.parametrize(("code", "reason", "again"), [
    (None, "", True),  # no Close frame: the network
    (1000, "", True), (1001, "server going away", True), (1011, "keepalive ping timeout", True),
    (1012, "", True), (1013, "slow consumer", True), (1014, "", True),
    (1008, "token expired", True),
    (4000, "", True), (4499, "try later", True), (3000, "", True),
    (1008, "rate limit exceeded", False), (1008, "", False), (1002, "", False), (1003, "", False),
    (1007, "", False), (1009, "", False), (1010, "", False),
    (4500, "logged out", False), (4999, "banned", False),
])
def test_which_closes_reconnect(code, reason, again):
    assert reconnects_after(code, reason) is again
