"""The lifecycle of one connection: its states, the events that move it, and the one table of moves.

Theory of operation: a connection starts in ``HTTP`` and ends in ``CLOSED``; in between, the RFC 6455
closing handshake (section 7) decides whether it passes through ``CLOSING`` (we spoke first and wait
for the peer's Close) before ``LINGER`` (flush, FIN, wait for the peer's FIN).  Two parties report
events: the WebSocket layer (:func:`websocket.receive` returns ``PEER_CLOSED``, ``CLOSE_ANSWERED``,
``FAILED_PROTOCOL`` or ``FAILED_TOO_BIG``) and the server (``UPGRADED``, ``LAST_ANSWER``, ``CLOSE_SENT``,
``GOODBYE``).  Neither writes a state: the server calls :func:`advance`, which looks the pair up in
:data:`TRANSITIONS`.  This module is the protocol's vocabulary, so it sits below both the WebSocket
layer that reports and the server that applies (``server/connection.py`` holds the record).

States:

===========  =====================================================================
HTTP         reading HTTP requests (h11); plain HTTP and the upgrade request
OPEN         WebSocket open
CLOSING      we sent a Close frame and wait for the peer's (close timeout runs)
LINGER       the closing handshake is over or the connection failed: flush what is
             pending, send FIN, discard input until the peer's FIN (close timeout)
CLOSED       the descriptor is closed; the record is garbage
===========  =====================================================================
"""

from __future__ import annotations

from typing import Any

HTTP, OPEN, CLOSING, LINGER, CLOSED = range(5)
STATE_NAMES = ("HTTP", "OPEN", "CLOSING", "LINGER", "CLOSED")

# Why a WebSocket ended: the index is stored in the record, the name labels the metric.
REASONS = ("normal", "error", "timeout", "protocol", "too_big", "slow_consumer", "shutdown", "policy", "backend")
R_NORMAL, R_ERROR, R_TIMEOUT, R_PROTOCOL, R_TOO_BIG, R_SLOW, R_SHUTDOWN, R_POLICY, R_BACKEND = range(len(REASONS))

# Events of the lifecycle: what the protocol reported or the server decided.
(UPGRADED,  # the 101 is sent: a WebSocket
 LAST_ANSWER,  # an HTTP answer after which the connection ends (Connection: close, a refusal)
 CLOSE_SENT,  # our Close frame is out; the peer's is awaited (close timeout)
 GOODBYE,  # our Close frame is out and the peer is not waited for (slow, silent, or we failed)
 PEER_CLOSED,  # the peer's Close came and was answered: a normal end
 CLOSE_ANSWERED,  # the peer answered our Close
 FAILED_PROTOCOL,  # the peer broke RFC 6455: our Close 1002/1007/... is out
 FAILED_TOO_BIG,  # a message over the limit: our Close 1009 is out
 ) = range(8)
EVENT_NAMES = ("UPGRADED", "LAST_ANSWER", "CLOSE_SENT", "GOODBYE", "PEER_CLOSED", "CLOSE_ANSWERED",
               "FAILED_PROTOCOL", "FAILED_TOO_BIG")

# (state, event) -> (next state, reason to record or None to keep the one set when the closing began).
# A pair that is not here is a bug, and raises (the exception boundary closes that connection).
TRANSITIONS: dict[tuple[int, int], tuple[int, int | None]] = {
    (HTTP, UPGRADED): (OPEN, R_NORMAL),
    (HTTP, LAST_ANSWER): (LINGER, None),
    (OPEN, CLOSE_SENT): (CLOSING, None),
    (OPEN, GOODBYE): (LINGER, None),
    (OPEN, PEER_CLOSED): (LINGER, R_NORMAL),
    (OPEN, FAILED_PROTOCOL): (LINGER, R_PROTOCOL),
    (OPEN, FAILED_TOO_BIG): (LINGER, R_TOO_BIG),
    (CLOSING, GOODBYE): (LINGER, None),
    (CLOSING, CLOSE_ANSWERED): (LINGER, None),
    (CLOSING, FAILED_PROTOCOL): (LINGER, R_PROTOCOL),
    (CLOSING, FAILED_TOO_BIG): (LINGER, R_TOO_BIG),
}


# How the WebSocket layer reports a receive (websocket.receive): one of the events above or NO_EVENT,
# with PONG or-ed in when the peer answered our keepalive ping.
NO_EVENT = 0xFF
EVENT_MASK = 0xFF
PONG = 0x100


def advance(conn: Any, event: int) -> int:
    """Apply ``event`` to ``conn`` through :data:`TRANSITIONS`; return the new state."""
    try:
        state, reason = TRANSITIONS[conn.state, event]
    except KeyError:
        raise RuntimeError(f"{EVENT_NAMES[event]} in state {STATE_NAMES[conn.state]}") from None
    conn.state = state
    if reason is not None:
        conn.reason = reason
    return state
