"""wsproto's private state is read in one module, checked when it is imported."""

from __future__ import annotations

import pytest
from wsproto.connection import Connection, ConnectionType

from millionws.protocol import wsproto_internals


def test_idle_and_partial_frames_are_seen():
    ws = Connection(ConnectionType.SERVER)
    assert wsproto_internals.is_idle(ws) and wsproto_internals.partial_data_frame(ws) == -1
    ws.receive_data(b"\x81\x85\x00\x00\x00\x00")  # the header of a masked 5-byte text frame
    list(ws.events())
    assert not wsproto_internals.is_idle(ws) and wsproto_internals.partial_data_frame(ws) == 5
    ws.receive_data(b"hello")
    assert [e.data for e in ws.events()] == ["hello"]
    assert wsproto_internals.is_idle(ws)


def test_a_wsproto_without_those_internals_stops_the_import(monkeypatch):
    class Changed(Connection):  # a release that renamed its private decoder
        @property
        def _proto(self):
            raise AttributeError("'Connection' object has no attribute '_proto'")

    monkeypatch.setattr(wsproto_internals, "Connection", Changed)
    with pytest.raises(ImportError, match="wsproto's internals"):
        wsproto_internals._check()
