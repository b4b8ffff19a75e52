"""millionws.protocol.extensions: which permessage-deflate offer is accepted (RFC 7692 §7.1), and the answer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millionws.protocol import extensions
from millionws.protocol.extensions import negotiate, offers

BOTH = b"permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def answer_of(*values: str) -> tuple[bytes, int] | None:
    return negotiate(v.encode() for v in values)


@pytest.mark.parametrize("offer", [
    "permessage-deflate",
    "permessage-deflate; client_max_window_bits",  # Chromium's and Firefox's offer
    "permessage-deflate; client_max_window_bits=12",
    "permessage-deflate; client_no_context_takeover",
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    "Permessage-Deflate; Client_Max_Window_Bits",  # tokens compare without case
    " permessage-deflate ;client_max_window_bits ",
])
def test_an_offer_without_a_server_window_is_answered_with_no_context_takeover_both_ways(offer: str) -> None:
    # Both no_context_takeover parameters are the server's to add (§7.1.1.1, §7.1.1.2): no client insists.
    assert answer_of(offer) == (b"Sec-WebSocket-Extensions: " + BOTH + b"\r\n", 15)


@pytest.mark.parametrize("bits", range(8, 16))
def test_server_max_window_bits_is_answered_with_the_same_value(bits: int) -> None:
    line, window = answer_of(f"permessage-deflate; server_max_window_bits={bits}; client_max_window_bits")
    assert line == b"Sec-WebSocket-Extensions: " + BOTH + b"; server_max_window_bits=%d\r\n" % bits
    assert window == bits


def test_a_quoted_value_is_read_unquoted() -> None:
    assert answer_of('permessage-deflate; server_max_window_bits="10"')[1] == 10


@pytest.mark.parametrize("offer", [
    "permessage-deflate; server_max_window_bits",  # a value is required
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=010",  # no leading zero (§7.1.2.1 ABNF)
    "permessage-deflate; server_max_window_bits=x",
    "permessage-deflate; client_max_window_bits=7",
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; client_no_context_takeover=1",  # takes no value
    "permessage-deflate; server_no_context_takeover=true",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",  # twice
    "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
    "permessage-deflate; mystery",  # unknown parameter
    "permessage-deflate; =3",  # malformed
    'permessage-deflate; server_max_window_bits="1 0"',  # unquoted, not a token
    "x-webkit-deflate-frame",  # another extension
    "permessage-deflate-x",
])
def test_an_unacceptable_offer_is_declined_not_failed(offer: str) -> None:
    assert answer_of(offer) is None
    # ... and the next offer is considered (§7.1: the order is the client's preference)
    assert answer_of(f"{offer}, permessage-deflate; server_max_window_bits=11")[1] == 11


def test_the_first_acceptable_offer_wins_across_header_lines() -> None:
    assert answer_of("foo; a=1", "permessage-deflate; server_max_window_bits=9, permessage-deflate")[1] == 9
    assert answer_of("", " , ,permessage-deflate")[1] == 15  # empty list elements are allowed and skipped


def test_quoted_strings_may_hold_separators() -> None:
    found = offers([b'foo; a="x,y;z", permessage-deflate; client_max_window_bits'])
    # the quoted value is one value (not a token once unquoted, so "foo" could only be declined)
    assert found == [("foo", None), ("permessage-deflate", [("client_max_window_bits", None)])]
    assert answer_of('foo; a="x,y;z", permessage-deflate')[1] == 15


def test_no_header_no_extension() -> None:
    assert negotiate([]) is None


def test_answers_are_rendered_once() -> None:
    assert extensions.answer(0) == b"Sec-WebSocket-Extensions: " + BOTH + b"\r\n"
    assert answer_of("permessage-deflate")[0] is answer_of("permessage-deflate; client_max_window_bits")[0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80) | st.text(
    alphabet=st.sampled_from(list('permsag-dflt;=,"\\ 0189_cwinobxkv')), max_size=80).map(str.encode), max_size=3))
def test_any_header_is_either_accepted_with_a_valid_answer_or_declined(values: list[bytes]) -> None:
    agreed = negotiate(values)
    if agreed is not None:
        line, bits = agreed
        assert 8 <= bits <= 15
        assert line.startswith(b"Sec-WebSocket-Extensions: " + BOTH) and line.endswith(b"\r\n")
