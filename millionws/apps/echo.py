"""``/echo`` (alias ``/ws``): every text and binary message back, same type, same bytes.

The load-test application, and the shortest path through the server: the reply is returned
(``apps/__init__.py`` states the convention), so a read that carries eight messages is answered with
one write of eight frames.
"""

from __future__ import annotations

from typing import Any

from ..metrics import F
from ..protocol.websocket import BINARY_HEADERS, TEXT_HEADERS, encode_frame

_MSG_IN, _MSG_OUT = F["messages_in"], F["messages_out"]


class Echo:
    __slots__ = ("c",)

    def __init__(self, counters: list[int]) -> None:
        self.c = counters

    def on_message(self, conn: Any, is_text: bool, payload: bytes) -> bytes:
        c = self.c
        c[_MSG_IN] += 1
        c[_MSG_OUT] += 1
        n = len(payload)
        if n < 126:  # the header from the table here: one Python call less per message than encode_frame
            return (TEXT_HEADERS if is_text else BINARY_HEADERS)[n] + payload
        return encode_frame(1 if is_text else 2, payload)

    def on_close(self, conn: Any) -> None:
        pass
