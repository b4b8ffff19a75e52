"""RESEARCH PROTOTYPE, not used by the server: a "detached" TLS 1.3 record layer (issue 11).

OpenSSL (``ssl.SSLContext.wrap_bio``) does the handshake; as soon as it has finished, the connection keeps only
its application traffic secrets, keys, IVs and two sequence numbers, the ``SSLObject`` and both ``MemoryBIO``
are freed, and records are sealed/opened here with the ``cryptography`` package's AEADs. What an idle
connection then holds is a few hundred bytes of Python objects instead of ~17 KB of OpenSSL state.

How the secrets are obtained: ``SSLContext.keylog_filename`` points at a memfd (``/proc/self/fd/N``). OpenSSL
writes the NSS key log lines of a handshake from inside ``do_handshake()``; CPython flushes after each line.
``KeylogTap.take()`` reads and truncates the memfd right after every ``do_handshake()`` call. The reactor is
single-threaded, so the new lines belong to the connection that just ran; this is *checked*, not assumed:
every line carries the client random, which ``Handshaker`` reads from the ClientHello bytes it fed to OpenSSL.

Supported: TLS 1.3 only (``TLS_AES_128_GCM_SHA256``, ``TLS_AES_256_GCM_SHA384``,
``TLS_CHACHA20_POLY1305_SHA256``), server side, ``num_tickets = 0`` (so the server's first application record
has sequence number 0). Handled: record framing and size limits (RFC 8446 §5.1-5.4: TLSInnerPlaintext content
type and zero padding, 2^14 plaintext, 2^14+256 ciphertext), alerts (close_notify -> EOF; others -> error),
KeyUpdate in both directions (§4.6.3, §7.2), our own KeyUpdate before a key has sealed ``REKEY_AFTER`` records,
change_cipher_spec after the handshake is refused (§5), fragmented handshake messages across records.
Not handled: post-handshake client authentication, 0-RTT, TLS 1.2 (a server would keep the SSLObject for
those), the key log's secrets that stay in Python ``bytes`` (cannot be wiped), constant-time anything.

Tests that were run are described in benchmarks/results/issue11_tls_memory.md; ``python
benchmarks/tls_detached_prototype.py`` runs the self-test against a Python ``ssl`` client.
"""

from __future__ import annotations

import hmac
import os
import ssl
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

# suite -> (AEAD class, key length, hash name, hash length)
SUITES = {
    "TLS_AES_128_GCM_SHA256": (AESGCM, 16, "sha256", 32),
    "TLS_AES_256_GCM_SHA384": (AESGCM, 32, "sha384", 48),
    "TLS_CHACHA20_POLY1305_SHA256": (ChaCha20Poly1305, 32, "sha256", 32),
}
SUITE_IDS = {name: i for i, name in enumerate(SUITES)}
SUITE_BY_ID = list(SUITES.values())

MAX_PLAINTEXT = 1 << 14
MAX_CIPHERTEXT = MAX_PLAINTEXT + 256
# Keep the two AEAD objects on the connection (2 x ~180 B: cryptography's AESGCM/ChaCha20Poly1305 hold the key,
# not an OpenSSL context) instead of constructing them for every batch of records (~2-5 µs each time).
# ``Detached13.drop_cache()`` releases them (e.g. from an idle timer).
CACHE_AEAD = True
REKEY_AFTER = 1 << 24  # records per write key before we send KeyUpdate (well under AES-GCM's 2^24.5 guidance)

CT_CCS, CT_ALERT, CT_HANDSHAKE, CT_APPDATA = 20, 21, 22, 23
HS_KEY_UPDATE = 24
ALERT_CLOSE_NOTIFY, ALERT_UNEXPECTED_MESSAGE, ALERT_BAD_RECORD_MAC = 0, 10, 20
ALERT_RECORD_OVERFLOW, ALERT_DECODE_ERROR, ALERT_INTERNAL_ERROR = 22, 50, 80


class TLSAlert(Exception):
    """A fatal protocol error; ``alert`` is the encrypted alert record to send before closing (may be b"")."""

    def __init__(self, description: int, message: str, alert: bytes = b"") -> None:
        super().__init__(f"{message} (alert {description})")
        self.description = description
        self.alert = alert


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int, hash_name: str) -> bytes:
    """HKDF-Expand-Label of RFC 8446 §7.1 (HKDF-Expand of RFC 5869 with the HkdfLabel structure)."""
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + bytes([len(context)]) + context
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hash_name).digest()
        out += block
        counter += 1
    return out[:length]


def traffic_material(secret: bytes, suite_id: int) -> bytes:
    """secret || key || iv for one direction: the only per-direction state kept."""
    _aead, key_len, hash_name, _hash_len = SUITE_BY_ID[suite_id]
    return (
        secret
        + hkdf_expand_label(secret, b"key", b"", key_len, hash_name)
        + hkdf_expand_label(secret, b"iv", b"", 12, hash_name)
    )


class KeylogTap:
    """NSS key log lines of one ``SSLContext``, captured in a memfd and truncated after each read."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.fd = os.memfd_create("tls-keylog", os.MFD_CLOEXEC)
        ctx.keylog_filename = f"/proc/self/fd/{self.fd}"
        self.take()  # CPython writes a '#' header line when it opens the file

    def take(self) -> list[tuple[str, bytes, bytes]]:
        """(label, client_random, secret) of every line written since the last call; the memfd is emptied."""
        size = os.fstat(self.fd).st_size
        if not size:
            return []
        data = os.pread(self.fd, size, 0)
        os.ftruncate(self.fd, 0)  # the writer opened it O_APPEND: its next line lands at offset 0 again
        out = []
        for line in data.split(b"\n"):
            fields = line.split()
            if len(fields) == 3 and not line.startswith(b"#"):
                out.append((fields[0].decode(), bytes.fromhex(fields[1].decode()), bytes.fromhex(fields[2].decode())))
        return out

    def close(self) -> None:
        os.close(self.fd)


class Detached13:
    """Per-connection TLS 1.3 record state after the handshake: 5 slots, ~300 B of Python objects when idle."""

    __slots__ = ("suite", "rmat", "rseq", "wmat", "wseq", "rbuf", "hsbuf", "raead", "waead")

    def __init__(self, suite_id: int, client_secret: bytes, server_secret: bytes) -> None:
        self.suite = suite_id
        self.rmat = traffic_material(client_secret, suite_id)  # we are the server: we read what the client writes
        self.wmat = traffic_material(server_secret, suite_id)
        self.rseq = 0
        self.wseq = 0
        self.rbuf = b""  # an incomplete record (empty when idle)
        self.hsbuf = b""  # an incomplete post-handshake message
        self.raead: AESGCM | ChaCha20Poly1305 | None = None
        self.waead: AESGCM | ChaCha20Poly1305 | None = None

    def drop_cache(self) -> None:
        self.raead = self.waead = None

    # -- keys -------------------------------------------------------------------------------------------------
    def _aead(self, mat: bytes) -> tuple[AESGCM | ChaCha20Poly1305, int]:
        aead_cls, key_len, _hash_name, hash_len = SUITE_BY_ID[self.suite]
        return aead_cls(mat[hash_len : hash_len + key_len]), int.from_bytes(mat[hash_len + key_len :], "big")

    def _read_aead(self) -> tuple[AESGCM | ChaCha20Poly1305, int]:
        aead = self.raead
        if aead is None:
            aead, iv = self._aead(self.rmat)
            if CACHE_AEAD:
                self.raead = aead
            return aead, iv
        return aead, int.from_bytes(self.rmat[-12:], "big")

    def _write_aead(self) -> tuple[AESGCM | ChaCha20Poly1305, int]:
        aead = self.waead
        if aead is None:
            aead, iv = self._aead(self.wmat)
            if CACHE_AEAD:
                self.waead = aead
            return aead, iv
        return aead, int.from_bytes(self.wmat[-12:], "big")

    def _next_material(self, mat: bytes) -> bytes:
        _aead, _key_len, hash_name, hash_len = SUITE_BY_ID[self.suite]
        return traffic_material(hkdf_expand_label(mat[:hash_len], b"traffic upd", b"", hash_len, hash_name), self.suite)

    # -- sending ----------------------------------------------------------------------------------------------
    def _seal(self, inner_type: int, payloads: list[bytes]) -> bytes:
        aead, iv = self._write_aead()
        out = []
        seq = self.wseq
        for payload in payloads:
            header = struct.pack(">BHH", CT_APPDATA, 0x0303, len(payload) + 17)
            nonce = (iv ^ seq).to_bytes(12, "big")
            out.append(header + aead.encrypt(nonce, payload + bytes([inner_type]), header))
            seq += 1
        self.wseq = seq
        return b"".join(out)

    def _maybe_rekey(self) -> bytes:
        if self.wseq < REKEY_AFTER:
            return b""
        record = self._seal(CT_HANDSHAKE, [bytes([HS_KEY_UPDATE, 0, 0, 1, 0])])  # update_not_requested
        self.wmat = self._next_material(self.wmat)
        self.wseq = 0
        self.waead = None
        return record

    def send(self, data: bytes) -> bytes:
        """Application data -> TLS records (split at 2^14 bytes)."""
        prefix = self._maybe_rekey()
        chunks = [data[i : i + MAX_PLAINTEXT] for i in range(0, len(data), MAX_PLAINTEXT)] or [b""]
        return prefix + self._seal(CT_APPDATA, chunks)

    def close_notify(self) -> bytes:
        return self._seal(CT_ALERT, [bytes([1, ALERT_CLOSE_NOTIFY])])

    def _fatal(self, description: int, message: str) -> TLSAlert:
        try:
            alert = self._seal(CT_ALERT, [bytes([2, description])])
        except Exception:
            alert = b""
        return TLSAlert(description, message, alert)

    # -- receiving --------------------------------------------------------------------------------------------
    def receive(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """Bytes from the socket -> (application plaintext, bytes to send back, peer sent close_notify).

        Raises TLSAlert on any protocol error (its ``alert`` record should be sent before closing).
        """
        buf = self.rbuf + data if self.rbuf else data
        pos = 0
        end = len(buf)
        plain: list[bytes] = []
        reply: list[bytes] = []
        eof = False
        aead = None
        iv = 0
        while end - pos >= 5:
            ctype, _version, length = struct.unpack_from(">BHH", buf, pos)
            if length > MAX_CIPHERTEXT:
                raise self._fatal(ALERT_RECORD_OVERFLOW, "record too long")
            if end - pos - 5 < length:
                break
            header = buf[pos : pos + 5]
            body = buf[pos + 5 : pos + 5 + length]
            pos += 5 + length
            if ctype != CT_APPDATA:
                # change_cipher_spec is only tolerated until the peer's Finished (RFC 8446 §5); plaintext
                # alerts/handshake after the handshake are not allowed either.
                raise self._fatal(ALERT_UNEXPECTED_MESSAGE, f"unprotected record type {ctype}")
            if aead is None:
                aead, iv = self._read_aead()
            try:
                inner = aead.decrypt((iv ^ self.rseq).to_bytes(12, "big"), body, header)
            except InvalidTag:
                raise self._fatal(ALERT_BAD_RECORD_MAC, "bad record MAC") from None
            self.rseq += 1
            stripped = inner.rstrip(b"\x00")
            if not stripped:
                raise self._fatal(ALERT_UNEXPECTED_MESSAGE, "no content type in TLSInnerPlaintext")
            inner_type = stripped[-1]
            content = stripped[:-1]
            if len(content) > MAX_PLAINTEXT:
                raise self._fatal(ALERT_RECORD_OVERFLOW, "plaintext too long")
            if inner_type == CT_APPDATA:
                if content:
                    plain.append(content)
            elif inner_type == CT_ALERT:
                if len(content) != 2:
                    raise self._fatal(ALERT_DECODE_ERROR, "bad alert")
                if content[1] == ALERT_CLOSE_NOTIFY:
                    eof = True
                    break  # data after close_notify is ignored (RFC 8446 §6.1)
                raise TLSAlert(content[1], "peer sent a fatal alert")
            elif inner_type == CT_HANDSHAKE:
                if not content:
                    raise self._fatal(ALERT_UNEXPECTED_MESSAGE, "empty handshake record")
                hs = self.hsbuf + content
                while len(hs) >= 4:
                    msg_type = hs[0]
                    msg_len = int.from_bytes(hs[1:4], "big")
                    if len(hs) < 4 + msg_len:
                        break
                    body_hs = hs[4 : 4 + msg_len]
                    hs = hs[4 + msg_len :]
                    if msg_type != HS_KEY_UPDATE or msg_len != 1 or body_hs[0] not in (0, 1):
                        raise self._fatal(ALERT_UNEXPECTED_MESSAGE, f"post-handshake message {msg_type}")
                    if hs:  # RFC 8446 §5.1: a KeyUpdate must end its record, the key changes right after it
                        raise self._fatal(ALERT_UNEXPECTED_MESSAGE, "data after KeyUpdate in one record")
                    self.rmat = self._next_material(self.rmat)
                    self.rseq = 0
                    self.raead = aead = None
                    if body_hs[0] == 1:  # update_requested: answer under the old write key, then switch
                        reply.append(self._seal(CT_HANDSHAKE, [bytes([HS_KEY_UPDATE, 0, 0, 1, 0])]))
                        self.wmat = self._next_material(self.wmat)
                        self.wseq = 0
                        self.waead = None
                if len(hs) > 1 << 16:
                    raise self._fatal(ALERT_UNEXPECTED_MESSAGE, "post-handshake message too long")
                self.hsbuf = hs
            else:
                raise self._fatal(ALERT_UNEXPECTED_MESSAGE, f"inner content type {inner_type}")
        self.rbuf = b"" if eof else buf[pos:]
        return b"".join(plain), b"".join(reply), eof


def client_random_of(first_flight: bytes) -> bytes | None:
    """The 32-byte random of a ClientHello at the start of the first bytes a client sent, if it is there."""
    # record header (5) + handshake header (4) + legacy_version (2) + random (32)
    if len(first_flight) >= 43 and first_flight[0] == CT_HANDSHAKE and first_flight[5] == 1:
        return first_flight[11:43]
    return None


class Handshaker:
    """Drives one server-side handshake through an SSLObject and detaches the record layer when it is done.

    ``feed(data) -> (to_send, done)``; once done, ``detached`` is a Detached13 (TLS 1.3) or None (TLS 1.2: then
    ``sslobj``/``incoming``/``outgoing`` are kept and used as usual), and ``leftover`` holds the bytes that
    followed the client's Finished (already-encrypted application data for the detached layer).
    """

    __slots__ = ("sslobj", "incoming", "outgoing", "tap", "client_random", "secrets", "detached", "leftover")

    def __init__(self, ctx: ssl.SSLContext, tap: KeylogTap) -> None:
        if ctx.num_tickets != 0:
            raise ValueError("the detached layer needs num_tickets = 0 (tickets would consume sequence numbers)")
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj: ssl.SSLObject | None = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.tap = tap
        self.client_random: bytes | None = None
        self.secrets: dict[str, bytes] = {}
        self.detached: Detached13 | None = None
        self.leftover = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        sslobj = self.sslobj
        assert sslobj is not None
        if self.client_random is None:
            self.client_random = client_random_of(data)
        self.incoming.write(data)
        done = True
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            done = False
        finally:
            # attribution check: every line written during this call must carry our client random
            for label, random, secret in self.tap.take():
                if random != self.client_random:
                    raise RuntimeError("key log line of another connection: attribution broken")
                if label in ("CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"):
                    self.secrets[label] = secret
        out = self.outgoing.read()
        if done:
            self._detach()
        return out, done

    def _detach(self) -> None:
        sslobj = self.sslobj
        assert sslobj is not None
        if sslobj.version() != "TLSv1.3":
            return  # keep the SSLObject
        suite = sslobj.cipher()[0]
        if suite not in SUITE_IDS or len(self.secrets) != 2:
            raise RuntimeError(f"cannot detach: suite {suite}, secrets {sorted(self.secrets)}")
        if sslobj.pending():
            raise RuntimeError("cannot detach: OpenSSL already holds decrypted application data")
        self.leftover = self.incoming.read()
        self.detached = Detached13(
            SUITE_IDS[suite], self.secrets["CLIENT_TRAFFIC_SECRET_0"], self.secrets["SERVER_TRAFFIC_SECRET_0"]
        )
        self.secrets = {}
        self.sslobj = None  # frees SSL*, its session and cipher contexts; the BIOs go with the Handshaker


def server_context(certfile: str, *, keylog: bool = True) -> tuple[ssl.SSLContext, KeylogTap | None]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile)
    ctx.num_tickets = 0
    return ctx, (KeylogTap(ctx) if keylog else None)


def _selftest(certfile: str) -> None:  # pragma: no cover - run by hand, described in the report
    """In-memory checks against a Python ssl client (SSLObject over MemoryBIOs) for each TLS 1.3 suite."""
    import ctypes
    import importlib.util
    import subprocess

    origin = importlib.util.find_spec("_ssl").origin
    libs = {
        line.split()[0]: line.split()[2]
        for line in subprocess.run(["ldd", origin], capture_output=True, text=True).stdout.splitlines()
        if "=>" in line
    }
    libssl = ctypes.CDLL(libs["libssl.so.3"])
    libssl.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    for suite in SUITES:
        ctx, tap = server_context(certfile)
        assert tap is not None
        # PySSLContext: PyObject_HEAD (16 bytes), then SSL_CTX *ctx (CPython 3.11 Modules/_ssl.c)
        assert libssl.SSL_CTX_set_ciphersuites(ctypes.c_void_p.from_address(id(ctx) + 16).value, suite.encode())
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(certfile)
        ci, co = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = cctx.wrap_bio(ci, co, server_hostname="localhost")
        hs = Handshaker(ctx, tap)
        done = cdone = False
        while not done:
            try:
                client.do_handshake()
                cdone = True
            except ssl.SSLWantReadError:
                pass
            if cdone:
                client.write(b"early-after-finished")  # travels with the client's Finished
            out, done = hs.feed(co.read())
            ci.write(out)
        assert client.version() == "TLSv1.3" and client.cipher()[0] == suite, client.cipher()
        det = hs.detached
        assert det is not None
        plain, reply, eof = det.receive(hs.leftover)
        assert plain == b"early-after-finished" and not reply and not eof, (plain, reply, eof)
        # sizes around the record limit, both directions, byte-by-byte delivery
        for size in (0, 1, 64, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 100_000):
            msg = os.urandom(size)
            ci.write(det.send(msg))
            got = b""
            while True:
                try:
                    got += client.read(1 << 17)
                except ssl.SSLWantReadError:
                    break
            assert got == msg, (suite, size, len(got))
            client.write(msg)
            wire = co.read()
            got = b""
            step = 1 if size < 100 else 997
            for i in range(0, len(wire), step):
                p, r, e = det.receive(wire[i : i + step])
                got += p
                assert not r and not e
            assert got == msg and det.rbuf == b""
        # KeyUpdate: OpenSSL client asks for one with update_requested (SSL_key_update(ssl, 1))
        pyssl_obj = client._sslobj
        ssl_ptr = ctypes.c_void_p.from_address(id(pyssl_obj) + 24).value
        libssl.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
        assert libssl.SSL_key_update(ssl_ptr, 1) == 1
        client.write(b"after-key-update")
        plain, reply, eof = det.receive(co.read())
        assert plain == b"after-key-update" and reply and det.rseq == 1 and det.wseq == 0, (plain, det.rseq)
        ci.write(reply + det.send(b"new-keys"))
        assert client.read(100) == b"new-keys"
        # our own rekey path
        saved = globals()["REKEY_AFTER"]
        globals()["REKEY_AFTER"] = det.wseq  # the next send rekeys first
        ci.write(det.send(b"after-our-rekey"))
        globals()["REKEY_AFTER"] = saved
        assert client.read(100) == b"after-our-rekey" and det.wseq == 1
        client.write(b"client-still-ok")
        assert det.receive(co.read())[0] == b"client-still-ok"
        # close_notify both ways
        ci.write(det.close_notify())
        assert client.read(100) == b""  # CPython maps SSL_ERROR_ZERO_RETURN after close_notify to b""
        try:
            client.unwrap()
        except ssl.SSLWantReadError:
            pass
        plain, reply, eof = det.receive(co.read())
        assert eof and not plain, (plain, eof)
        # tampering -> bad_record_mac; a plaintext CCS after the handshake -> unexpected_message
        for bad in (b"\x17\x03\x03\x00\x20" + bytes(32), b"\x14\x03\x03\x00\x01\x01"):
            try:
                det.receive(bad)
                raise AssertionError("bad record accepted")
            except TLSAlert as exc:
                assert exc.description in (ALERT_BAD_RECORD_MAC, ALERT_UNEXPECTED_MESSAGE) and exc.alert
        print(f"ok {suite}")
        tap.close()
    print("selftest passed")


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.tls_memory import make_cert

    with tempfile.TemporaryDirectory() as tmp:
        _selftest(sys.argv[1] if len(sys.argv) > 1 else make_cert(tmp, "ecdsa"))
