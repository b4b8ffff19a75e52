"""The one place that reads wsproto's private state, and the import-time check that it is there.

Theory of operation.  Two things the server needs are not in wsproto's public API:

* whether a frame-level connection holds nothing (no partial frame, no partial message,
  no pending event), so that it can go back to a pool and an idle WebSocket costs no
  protocol object at all (GUIDE §3: the ~0.3 KB per idle connection depends on it);
* the header of a frame still arriving, so that a message over ``--max-message-size`` is
  refused at its header instead of after its payload was received.

Decision (issue 10): keep wsproto as the decoder of everything off the fast path and confine
every private access to this module.  :func:`_check` runs at import: it drives a real
connection through a partial frame and verifies each attribute has the shape used here, so
a wsproto release that changes them stops the server at start with one clear line rather
than misbehaving later.  pyproject pins the versions this was tested with (``>=1.2,<1.4``).
Owning the frame decoder outright is the alternative; permessage-deflate (issue 11) did not need it:
its inflater is a public ``wsproto.extensions.Extension`` (``deflate.InboundDeflate``) that holds its
zlib object from a message's first frame to its last, so a connection that :func:`is_idle` calls idle
(no message being decoded) holds no inflater either, and pooling stays safe.
"""

from __future__ import annotations

from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType

_OPEN = ConnectionState.OPEN


def is_idle(ws: Connection) -> bool:
    """True when ``ws`` holds nothing: open, no partial frame, no partial message, no event."""
    proto = ws._proto
    decoder = proto._frame_decoder
    return (ws._state is _OPEN and decoder.header is None and not decoder.buffer.buffer
            and proto._message_decoder.opcode is None and not ws._events)


def partial_data_frame(ws: Connection) -> int:
    """Payload bytes still to come of the text/binary frame being received, or -1 if none is."""
    decoder = ws._proto._frame_decoder
    header = decoder.header
    if header is None or header.opcode >= 8:
        return -1
    return header.payload_len - decoder.payload_consumed


def _check() -> None:
    try:
        ws = Connection(ConnectionType.SERVER)
        if not is_idle(ws) or partial_data_frame(ws) != -1:
            raise AssertionError("a fresh connection does not look idle")
        # The header of a masked binary frame of 10 bytes, and 2 of its payload.
        ws.receive_data(b"\x82\x8a\x00\x00\x00\x00ab")
        ws_events: Any = list(ws.events())
        if is_idle(ws) or partial_data_frame(ws) != 10 - sum(len(e.data) for e in ws_events):
            raise AssertionError("a partial frame is not seen")
    except (AttributeError, AssertionError, TypeError) as exc:
        import wsproto

        raise ImportError(f"millionws needs wsproto's internals as of 1.2-1.3 (found {wsproto.__version__}): "
                          f"{exc}; install a version within pyproject's pin") from None


_check()
