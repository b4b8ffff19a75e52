"""core/tls.py on a socketpair: the server side is the transport, the client an SSLObject driven here."""

from __future__ import annotations

import os
import random
import socket
import ssl

import pytest

from millionws.config import TLS_MIN_RECEIVE_BUFFER
from millionws.core.tls import BIO_CHUNK, FAILURES, Certificates, TlsTransport, classify
from tests.tlsca import TestCA, peer_serial

DONE, FAILED0 = 0, 1


class Client:
    """A TLS client over one end of a socketpair, pumped by hand."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.rx, self.tx = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.rx, self.tx, server_hostname="localhost")

    def flush(self) -> None:
        data = self.tx.read()
        if data:
            self.sock.sendall(data)

    def pull(self) -> None:
        self.rx.write(self.sock.recv(1 << 20))

    def step(self) -> bool:
        """One handshake step; True once it is complete."""
        try:
            self.obj.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False
        finally:
            self.flush()

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self.flush()

    def receive(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            try:
                chunk = self.obj.read(n - len(out))
            except ssl.SSLWantReadError:
                self.pull()
                continue
            if not chunk:
                break  # the server's close_notify
            out += chunk
        return out


@pytest.fixture
def pair(test_ca: TestCA):
    cert, key, _ = test_ca.server
    counters = [0] * (1 + len(FAILURES))
    transport = TlsTransport(Certificates(str(cert), str(key)), counters, DONE, FAILED0)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(5)
    transport.start(a.fileno())
    yield transport, a, b, counters
    transport.sessions.pop(a.fileno(), None)
    a.close()
    b.close()


def read(transport: TlsTransport, fd: int, size: int = 1 << 18) -> bytes:
    buf = bytearray(size)
    n = transport.readv(fd, [buf])
    return bytes(buf[:n])


def handshake(transport: TlsTransport, fd: int, client: Client) -> None:
    assert not client.step()  # ClientHello out
    for _ in range(4):
        with pytest.raises(BlockingIOError):
            read(transport, fd)  # the server's flight is written, nothing for the application yet
        client.pull()
        if client.step():
            return
    raise AssertionError("the handshake did not complete")


def failed(counters: list[int]) -> dict[str, int]:
    return {reason: counters[FAILED0 + i] for i, reason in enumerate(FAILURES) if counters[FAILED0 + i]}


def test_handshake_then_application_bytes_both_ways_then_close_notify(pair, test_ca):
    transport, a, b, counters = pair
    client = Client(b, test_ca.client_context())
    handshake(transport, a.fileno(), client)
    assert peer_serial(client.obj) == test_ca.server[2]
    assert client.obj.version() == "TLSv1.3"
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    assert read(transport, a.fileno()) == b"GET / HTTP/1.1\r\n\r\n"
    assert counters[DONE] == 1 and not failed(counters)
    big = os.urandom(200_000)  # many records, several reads
    os.write(a.fileno(), transport.seal(a.fileno(), b"hello"))
    assert client.receive(5) == b"hello"
    client.send(big)
    got = b""
    while len(got) < len(big):
        try:
            got += read(transport, a.fileno(), 1 << 16)
        except BlockingIOError:
            pass
    assert got == big
    transport.shutdown(a.fileno())  # close_notify, then FIN
    assert client.receive(1) == b""
    assert transport.seal(a.fileno(), b"too late") == b""  # after close_notify: nothing, and no exception
    client.send(b"the peer still talks")  # read while we linger: still decrypted, no second handshake counted
    assert read(transport, a.fileno()) == b"the peer still talks" and counters[DONE] == 1


def test_a_partial_record_yields_nothing_until_it_is_whole(pair, test_ca):
    transport, a, b, _ = pair
    client = Client(b, test_ca.client_context())
    handshake(transport, a.fileno(), client)
    client.obj.write(b"x" * 1000)
    record = client.tx.read()
    b.sendall(record[:300])
    with pytest.raises(BlockingIOError):
        read(transport, a.fileno())
    b.sendall(record[300:])
    assert read(transport, a.fileno()) == b"x" * 1000


class Spy:
    """Forwards to a BIO or an SSLObject and records how many bytes each ``write`` gave it."""

    def __init__(self, target) -> None:
        self.target = target
        self.writes: list[int] = []

    def write(self, data) -> int:
        self.writes.append(len(data))
        return self.target.write(data)

    def __getattr__(self, name: str):
        return getattr(self.target, name)


def test_a_large_message_reaches_the_bios_in_pieces_so_an_idle_connection_keeps_no_large_buffer(pair, test_ca):
    """A memory BIO keeps the capacity of its largest write (BIO_CHUNK's comment has the figures)."""
    transport, a, b, _ = pair
    client = Client(b, test_ca.client_context())
    handshake(transport, a.fileno(), client)
    session = transport.sessions[a.fileno()]
    session.rx, session.obj = Spy(session.rx), Spy(session.obj)
    big = os.urandom(100_000)
    client.send(big)
    got = b""
    while len(got) < len(big):
        try:
            got += read(transport, a.fileno())
        except BlockingIOError:
            pass
    assert got == big
    sealed = transport.seal(a.fileno(), big)
    b.settimeout(5)
    sent = 0
    while sent < len(sealed):
        sent += os.write(a.fileno(), sealed[sent:sent + 65536])
        client.pull()
    assert client.receive(len(big)) == big
    assert max(session.rx.writes) <= BIO_CHUNK and max(session.obj.writes) <= BIO_CHUNK
    assert len(session.obj.writes) == -(-len(big) // BIO_CHUNK)


def test_the_peers_close_notify_reads_as_the_end_of_the_stream(pair, test_ca):
    transport, a, b, _ = pair
    client = Client(b, test_ca.client_context())
    handshake(transport, a.fileno(), client)
    try:
        client.obj.unwrap()
    except ssl.SSLWantReadError:
        pass
    client.flush()  # the client's Finished and its close_notify, in one read
    assert transport.readv(a.fileno(), [bytearray(1 << 16)]) == 0


def test_nothing_is_sealed_before_the_handshake_is_over(pair):
    transport, a, _, _ = pair
    assert transport.seal(a.fileno(), b"HTTP/1.1 408\r\n\r\n") == b""
    assert transport.seal(12345, b"plain") == b"plain"  # a descriptor without a session: the admin port


@pytest.mark.parametrize(("hello", "reason"), [
    (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", "plain_http"),
    (b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", "malformed"),
    (b"\x16\x03\x01\x40\x00" + b"\x00" * 16384, "malformed"),
])
def test_a_failed_handshake_raises_and_is_counted_by_reason(pair, hello, reason):
    transport, a, b, counters = pair
    b.sendall(hello)
    with pytest.raises(ssl.SSLError):
        read(transport, a.fileno())
    assert failed(counters) == {reason: 1}
    transport.close(a.fileno())  # counted once: no "incomplete" on top
    assert failed(counters) == {reason: 1}
    a.detach()


def test_an_old_protocol_version_is_refused(pair):
    transport, a, b, counters = pair
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    client = Client(b, ctx)
    client.step()
    with pytest.raises(ssl.SSLError):
        read(transport, a.fileno())
    assert failed(counters) == {"protocol_version": 1}


def test_a_client_that_refuses_the_certificate_is_counted_as_its_alert(pair):
    transport, a, b, counters = pair
    client = Client(b, ssl.create_default_context())  # trusts the system CAs, not ours
    handshake_failed = False
    client.step()
    for _ in range(3):
        try:
            read(transport, a.fileno())
        except BlockingIOError:
            pass
        except ssl.SSLError:
            handshake_failed = True
            break
        client.pull()
        try:
            client.step()
        except ssl.SSLCertVerificationError:
            pass  # the client sends its alert
    assert handshake_failed
    assert failed(counters) == {"peer_alert": 1}


def test_eof_and_a_close_in_the_middle_of_the_handshake(pair, test_ca):
    transport, a, b, counters = pair
    Client(b, test_ca.client_context()).step()
    with pytest.raises(BlockingIOError):
        read(transport, a.fileno())
    b.shutdown(socket.SHUT_WR)
    assert transport.readv(a.fileno(), [bytearray(1 << 16)]) == 0
    assert failed(counters) == {"eof": 1}
    c, d = socket.socketpair()
    transport.start(c.fileno())
    transport.close(c.fileno())  # the handshake timeout, or the client gave up before a byte
    c.detach()
    d.close()
    assert failed(counters) == {"eof": 1, "incomplete": 1}


def test_classify_maps_every_error_to_a_fixed_label():
    assert FAILURES[classify(ssl.SSLEOFError())] == "eof"
    error = ssl.SSLError()
    error.reason = "SOMETHING_NEW_IN_OPENSSL_4"
    assert FAILURES[classify(error)] == "malformed"
    error.reason = "TLSV1_ALERT_UNKNOWN_CA"
    assert FAILURES[classify(error)] == "peer_alert"
    error.reason = "NO_SHARED_CIPHER"
    assert FAILURES[classify(error)] == "no_shared_cipher"


def test_certificates_reload_only_a_pair_that_loads(test_ca, tmp_path):
    cert, key, _ = test_ca.issue("rotating")
    certs = Certificates(str(cert), str(key))
    first = certs.context
    assert not certs.changed()
    new_cert, new_key, _ = test_ca.issue("next")
    os.replace(new_cert, cert)  # the certificate changed, the key not yet: a mismatched pair
    assert certs.changed()
    error = certs.reload()
    assert error is not None and certs.context is first
    assert not certs.changed()  # the same failed pair is not retried until a file changes again
    os.replace(new_key, key)
    assert certs.changed()
    assert certs.reload() is None and certs.context is not first


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
