"""core/tls.py: the TLS transport driven like the worker drives it, over a socketpair."""

from __future__ import annotations

import os
import random
import socket
import ssl

import pytest

from millionws.config import TLS_MIN_RECEIVE_BUFFER
from millionws.core.tls import Certificates, TlsTransport
from tests.tlsca import TestCA

RECORD_OVERHEAD = 5 + 1 + 16  # TLS 1.3: header, inner content type, AEAD tag (OpenSSL pads nothing)


class Pair:
    """A server-side ``TlsTransport`` on one end of a socketpair, a client ``SSLObject`` on the other."""

    def __init__(self, test_ca: TestCA, size: int) -> None:
        self.a, self.b = socket.socketpair()
        self.a.setblocking(False)
        self.counters = [0] * 16
        self.transport = TlsTransport(Certificates(str(test_ca.server[0]), str(test_ca.server[1])), self.counters,
                                      0, 1)
        self.transport.start(self.a.fileno())
        self.rx, self.tx = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = test_ca.client_context().wrap_bio(self.rx, self.tx, server_hostname="localhost")
        self.buf = bytearray(size)
        self.received = bytearray()
        self.unsent = b""
        while True:
            try:
                self.client.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.b.sendall(self.tx.read())
                self.read_all()
                self.rx.write(self.b.recv(1 << 16))
        self.b.sendall(self.tx.read())
        assert self.read_all() == b"" and self.counters[0] == 1  # handshake over, nothing else

    def read_all(self) -> bytes:
        """What the worker gets from level-triggered readiness: readv until it says "nothing yet"."""
        got = bytearray()
        while True:
            try:
                n = self.transport.readv(self.a.fileno(), [self.buf])
            except BlockingIOError:
                return bytes(got)
            assert 0 < n <= len(self.buf)
            got += self.buf[:n]

    def send_records(self, sizes: list[int]) -> bytes:
        """One TLS record per size (the client's writes).  The wire arrives a buffer's worth at a time, so
        every read but the last fills the buffer; after each, whatever records are whole must have been
        delivered, since the socket is empty and epoll would not report the connection again."""
        sent = bytearray()
        ends = []  # (where a record ends on the wire, plaintext sent up to its end)
        for size in sizes:
            data = os.urandom(size)
            self.client.write(data)
            sent += data
            ends.append(((ends[-1][0] if ends else 0) + size + RECORD_OVERHEAD, len(sent)))
        wire = self.tx.read()
        assert len(wire) == ends[-1][0]  # one record per write, as assumed
        step = len(self.buf)
        for start in range(0, len(wire), step):
            self.b.sendall(wire[start:start + step])
            self.received += self.read_all()
            arrived = start + step
            delivered, whole = len(self.received), max([plain for end, plain in ends if end <= arrived], default=0)
            assert delivered == whole, f"after {arrived} bytes of {len(wire)} on the wire"
        return bytes(sent)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("sizes", [
    [16384] * 200,  # full records: a read ends mid-record, the part left over grows read after read
    [16384] * 3 + [16000, 13, 1, 16384, 700] * 12,  # a partial record left, then small whole ones
    [1, 100, 16384, 5000, 16383, 2, 9000] * 12,
    [14, 16384, 16384, 16384, 13] * 20,  # a frame header, its payload, the next header (picows' writes)
    [random.Random(seed).choice((1, 13, 700, 9000, 16383, 16384)) for seed in range(300)],
])
@pytest.mark.parametrize("buffer", [TLS_MIN_RECEIVE_BUFFER, 100_000])
def test_when_readv_says_nothing_yet_every_record_received_was_delivered(ca, sizes, buffer):
    """Regression: with a partial record left from the last read, one socket read of a whole buffer can
    hold more plaintext than the buffer; what did not fit stayed in the session while the socket was
    empty, and level-triggered epoll never reported the connection again (the rest of a message hung
    until the peer sent more)."""
    pair = Pair(ca, buffer)
    try:
        sent = pair.send_records(sizes)
    finally:
        pair.a.close()
        pair.b.close()
    assert len(pair.received) == len(sent)
    assert pair.received == sent
