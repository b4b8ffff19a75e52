"""``wss://``: TLS on the transport seam, one ``ssl.SSLObject`` per connection, driven by the reactor.

Theory of operation:

* OpenSSL never touches a descriptor.  Each TLS connection is an ``SSLObject`` between two memory BIOs
  (:class:`_Session`, kept in a dict by descriptor, so the connection record gains no slot and a plain
  connection pays nothing).  The worker reads ciphertext with the same ``os.readv`` into its one receive
  buffer; :meth:`TlsTransport.readv` copies it into the session's incoming BIO and decrypts back into that
  buffer.  Epoll is level-triggered and sees only the socket, so ``readv`` must never leave a whole
  record in the session: once the socket is empty nothing would report the connection again.  The part
  of a record left from the last read (at most :data:`RECORD_MAX` bytes, in the BIO or inside OpenSSL)
  decrypts together with the new bytes, so the socket read stops :data:`RECORD_MAX` bytes short of the
  buffer: then all that can be decrypted is shorter than the ciphertext it came from, and fits.  The BIOs
  are given :data:`BIO_CHUNK` bytes at a time, in and out, because they never give memory back.  The
  handshake runs inside ``readv`` as its bytes arrive: until it is over, and while only part of a record
  is in, ``readv`` says "nothing yet" (``BlockingIOError``), exactly like an empty socket, so the worker
  and everything above it see application bytes only.
* Output stays on ``os.write``: :meth:`TlsTransport.seal` turns application bytes into records before the
  output part writes them, and what the kernel refuses is kept as ciphertext in the connection's pending
  buffer, like any other byte.  A broadcast is encoded once and encrypted once per connection, as it must
  be.  What OpenSSL itself has to say (the handshake flights, session tickets, an alert, a KeyUpdate
  answer) is written here at once; a socket that cannot take a handshake flight into its empty buffer is
  a peer not reading, and fails the handshake (``send_blocked``).
* The deadline set at ``accept()`` covers TCP, the PROXY header, TLS and HTTP: a connection that never
  finishes its handshake is closed by the HTTP pipeline's timeout and counted here (``incomplete``) when
  its descriptor closes.
* Failures are counted by reason (:data:`FAILURES`, the label values of
  ``millionws_tls_handshake_failures_total``) and never logged one by one: a scan of the port is noise.
* Certificates (:class:`Certificates`): the pair is loaded into a new ``SSLContext``; new connections use
  the current one, open ones keep the context they started with (each ``SSLObject`` holds a reference), so
  a rotation (SIGHUP, or the files changing on disk, as a Kubernetes secret does) drops nothing.  A pair
  that fails to load keeps the old context.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence

from .transport import half_close

# Why a TLS handshake failed: the label values of millionws_tls_handshake_failures_total{reason}.
FAILURES = ("protocol_version", "no_shared_cipher", "plain_http", "peer_alert", "alpn", "eof", "incomplete",
            "send_blocked", "malformed")
(V_VERSION, V_CIPHER, V_PLAIN_HTTP, V_ALERT, V_ALPN, V_EOF, V_INCOMPLETE, V_SEND_BLOCKED,
 V_MALFORMED) = range(len(FAILURES))

_VERSION_REASONS = frozenset(("UNSUPPORTED_PROTOCOL", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL",
                              "VERSION_TOO_LOW", "TLSV1_ALERT_PROTOCOL_VERSION", "BAD_PROTOCOL_VERSION_NUMBER"))
_CIPHER_REASONS = frozenset(("NO_SHARED_CIPHER", "NO_SUITABLE_SIGNATURE_ALGORITHM", "NO_SUITABLE_KEY_SHARE",
                             "NO_SHARED_GROUPS", "NO_CIPHERS_AVAILABLE", "NO_SHARED_SIGNATURE_ALGORITHMS"))
_PLAIN_REASONS = frozenset(("HTTP_REQUEST", "HTTPS_PROXY_REQUEST"))

# A session's state: READY carries application data; FAILED is a handshake that failed; ENDED is one that can
# say nothing more (our close_notify is out, or OpenSSL refused a write).
HANDSHAKING, READY, FAILED, ENDED = range(4)

# The largest TLS record on the wire: a 5-byte header and at most 2^14 + 2048 bytes (TLS 1.2, RFC 5246
# §6.2.3; TLS 1.3 allows 2^14 + 256).  A read leaves room for one (see the module docstring); the receive
# buffer must hold more than that (config.py: --receive-buffer is at least TLS_MIN_RECEIVE_BUFFER with TLS).
RECORD_MAX = 5 + (1 << 14) + 2048

# The most bytes a memory BIO is given at once.  A BIO keeps the capacity of the largest write it ever took
# (OpenSSL's BUF_MEM does not shrink): one 16 KiB message each way used to leave an idle connection at 59 KB,
# 64 KiB ones at 168 KB, against 16.5 KB after small ones.  Fed and sealed 4 KiB at a time, an idle connection
# stays at 25.8 KB whatever it carried (benchmarks/results/issue11_tls_memory.md).  The price is paid by large
# messages only: 4 KiB records out, a partial record per 4 KiB in (SSLWantReadError), about a third fewer
# 16 KiB messages per CPU-second over TLS; 64 B messages are unchanged.  (2 KiB: 20.4 KB, 42 % fewer.)
BIO_CHUNK = 4096


def classify(exc: ssl.SSLError) -> int:
    """The :data:`FAILURES` index of a handshake error (a fixed set, whatever OpenSSL says)."""
    if isinstance(exc, ssl.SSLEOFError):
        return V_EOF
    reason = exc.reason or ""
    if reason in _PLAIN_REASONS:
        return V_PLAIN_HTTP
    if reason in _VERSION_REASONS:
        return V_VERSION
    if reason in _CIPHER_REASONS:
        return V_CIPHER
    if reason == "NO_APPLICATION_PROTOCOL":
        return V_ALPN
    if reason.startswith(("SSLV3_ALERT", "TLSV1_ALERT", "TLSV13_ALERT")):
        return V_ALERT  # the client refused us (an unknown CA, a name mismatch): it said so with an alert
    return V_MALFORMED


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for the PEM pair: TLS 1.2 minimum (1.3 preferred: OpenSSL picks the highest both
    speak), ALPN ``http/1.1``, no renegotiation (a client-initiated one is a cheap way to burn our CPU).
    Raises ``OSError``/``ssl.SSLError`` naming what is wrong with the files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert, key)
    return ctx


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)  # follows symlinks: a Kubernetes secret swaps its ..data link
    return st.st_ino, st.st_mtime_ns, st.st_size


class Certificates:
    """The certificate pair on disk and the context made from it (see the module docstring)."""

    __slots__ = ("cert", "key", "context", "_stamps")

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self._stamps = self._read_stamps()
        self.context = server_context(cert, key)

    def _read_stamps(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            return _stamp(self.cert), _stamp(self.key)
        except OSError:
            return None

    def changed(self) -> bool:
        """Did either file change since the last (attempted) load?"""
        return self._read_stamps() != self._stamps

    def reload(self) -> str | None:
        """Load the pair again for new connections; the error, if it failed (the old pair stays)."""
        self._stamps = self._read_stamps()
        try:
            context = server_context(self.cert, self.key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            return f"{type(exc).__name__}: {exc}"
        self.context = context
        return None


class _Session:
    """One TLS connection: the SSLObject, its two BIOs and how far the handshake is."""

    __slots__ = ("obj", "rx", "tx", "state")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.rx = ssl.MemoryBIO()
        self.tx = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.rx, self.tx, server_side=True)
        self.state = HANDSHAKING


class TlsTransport:
    """The transport of a worker whose main port speaks TLS (``core/transport.py`` names the interface).

    Descriptors without a session (the admin port) are plain.  ``counters`` is the worker's counter
    array: ``done`` indexes completed handshakes, ``failed0 + i`` the failures of reason ``FAILURES[i]``.
    """

    __slots__ = ("sessions", "certs", "c", "done", "failed0")

    write = staticmethod(os.write)  # ciphertext, sealed before (seal)

    def __init__(self, certs: Certificates, counters: list[int], done: int, failed0: int) -> None:
        self.sessions: dict[int, _Session] = {}
        self.certs = certs
        self.c = counters
        self.done = done
        self.failed0 = failed0

    def start(self, fd: int, data: bytes = b"") -> None:
        """``fd`` speaks TLS from its next byte on (at accept, or after a PROXY header); ``data``: ciphertext
        read before (what followed the PROXY header).  Raises ``OSError`` if that already fails."""
        self.sessions[fd] = session = _Session(self.certs.context)
        if data:
            session.rx.write(data)
            self._handshake(fd, session)

    def readv(self, fd: int, buffers: Sequence[bytearray], /) -> int:
        session = self.sessions.get(fd)
        if session is None:
            return os.readv(fd, buffers)
        buf = buffers[0]
        view = memoryview(buf)
        # Ciphertext lands RECORD_MAX bytes in, plaintext is written from 0: what decrypts is at most what was
        # fed plus the part of a record the last read left (< RECORD_MAX), so it never overtakes a byte not yet
        # fed, and always fits.
        n = os.readv(fd, (view[RECORD_MAX:],))
        if n == 0:
            if session.state == HANDSHAKING:
                self._fail(session, V_EOF)
            return 0
        rx = session.rx
        obj = session.obj
        size = len(buf)
        total = 0
        pos = RECORD_MAX
        end = RECORD_MAX + n
        while pos < end:
            # A BIO keeps the capacity of the largest write it ever took: BIO_CHUNK at a time keeps it small.
            step = pos + BIO_CHUNK if end - pos > BIO_CHUNK else end
            rx.write(view[pos:step])
            pos = step
            if session.state == HANDSHAKING:
                self._handshake(fd, session)
                if session.state == HANDSHAKING:
                    continue
            # One record per read: OpenSSL (no read-ahead) takes exactly one record from the BIO per call, so
            # once a read has emptied both the BIO and the decrypted bytes nothing whole is left, and the read
            # that would only raise SSLWantReadError (1 us, a third of TLS's cost per message) is skipped.
            while True:
                try:
                    k = obj.read(size - total, view[total:])
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    k = 0
                if k == 0:  # the peer's close_notify: the end of its stream (what came before it first)
                    if total:
                        pos = end
                        break
                    return 0
                total += k
                if not rx.pending and not obj.pending():
                    break
        if session.tx.pending:  # OpenSSL answered something (a KeyUpdate)
            self._send(fd, session)
        if total == 0:
            raise BlockingIOError
        return total

    def _handshake(self, fd: int, session: _Session) -> None:
        try:
            session.obj.do_handshake()
        except ssl.SSLWantReadError:
            self._send(fd, session)
            return
        except ssl.SSLError as exc:
            self._fail(session, classify(exc))
            try:  # the alert that says why, best effort
                self._send(fd, session)
            except OSError:
                pass
            raise
        session.state = READY
        self.c[self.done] += 1
        self._send(fd, session)  # our last flight and the session tickets

    def _send(self, fd: int, session: _Session) -> None:
        data = session.tx.read()
        if not data:
            return
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            if session.state == HANDSHAKING:
                self._fail(session, V_SEND_BLOCKED)
            raise ConnectionError("the peer does not read what TLS must send")

    def _fail(self, session: _Session, reason: int) -> None:
        if session.state == HANDSHAKING:
            session.state = FAILED
            self.c[self.failed0 + reason] += 1

    def seal(self, fd: int, data: bytes) -> bytes:
        """``data`` as TLS records for ``fd`` (unchanged for a plain descriptor)."""
        session = self.sessions.get(fd)
        if session is None:
            return data
        if session.state != READY or not data:
            return b""  # nothing can be said to a peer whose handshake is not over
        obj, tx = session.obj, session.tx
        try:
            if len(data) <= BIO_CHUNK:
                obj.write(data)
                return tx.read()
            view = memoryview(data)  # records of BIO_CHUNK bytes: the BIO never holds more (see readv)
            out = []
            for start in range(0, len(data), BIO_CHUNK):
                obj.write(view[start:start + BIO_CHUNK])
                out.append(tx.read())
            return b"".join(out)
        except ssl.SSLError:  # OpenSSL is done with this connection: its next read ends it; a fan-out goes on
            session.state = ENDED
            tx.read()
            return b""

    def shutdown(self, fd: int, /) -> None:
        """close_notify, then our FIN."""
        session = self.sessions.get(fd)
        if session is not None and session.state == READY:
            session.state = ENDED  # nothing is sealed after close_notify (an application may still send)
            try:
                session.obj.unwrap()
            except ssl.SSLError:  # SSLWantReadError: our close_notify is out, the peer's is not waited for
                pass
            try:
                self._send(fd, session)
            except OSError:
                pass
        half_close(fd)

    def close(self, fd: int, /) -> None:
        session = self.sessions.pop(fd, None)
        if session is not None and session.state == HANDSHAKING:
            self._fail(session, V_INCOMPLETE)  # timed out, or the client gave up
        os.close(fd)
