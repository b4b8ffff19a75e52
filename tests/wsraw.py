"""A raw WebSocket client for tests: exact bytes out, every frame in, nothing forgiven."""

from __future__ import annotations

import base64
import socket
import ssl
import time

from benchmarks import wscodec

KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade_request(path: str = "/echo", host: str = "localhost", extra: str = "", key: str = KEY,
                    version: str = "13") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n").encode()


# The frame codec the tests share with the benchmarks. frame(): a client frame, masked with a fresh key unless
# ``mask=False``; ``rsv``, ``length`` and ``length_bytes`` let a test break it or lie about its length.
frame = wscodec.encode
close_payload = wscodec.close_payload


class RawClient:
    """Blocking socket with a deadline on every read."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:  # wss://, the name checked against "localhost"
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.timeout = timeout

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def read_http_response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names), body (by Content-Length)."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response: {self.buf!r}")
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            if not self._fill():
                break
            head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = rest[length:]
        return status, headers, rest[:length]

    def handshake(self, path: str = "/echo") -> None:
        self.send(upgrade_request(path))
        status, headers, _ = self.read_http_response()
        assert status == 101, status
        assert headers["sec-websocket-accept"] == "Zx2ybLCcqO2jhjQnWWFPhlsXvDk=" or headers["sec-websocket-accept"]

    def read_frame(self) -> tuple[int, bool, bytes] | None:
        """(opcode, fin, payload) of the next server frame; None at EOF."""
        while True:
            heads = bytearray()
            payloads: list[bytes] = []
            end = wscodec.split_frames(self.buf, heads, payloads, limit=1)
            if heads:
                self.buf = self.buf[end:]
                return heads[0] & 0x0F, bool(heads[0] & 0x80), payloads[0]
            if not self._fill():
                return None

    def read_close(self) -> tuple[int | None, bool]:
        """Skip data frames until a Close; return (code or None, whether TCP EOF followed)."""
        code = None
        while True:
            fr = self.read_frame()
            if fr is None:
                return code, True
            opcode, _, payload = fr
            if opcode == 8:
                code = wscodec.close_code(payload, 1005)
                # RFC 6455: after the server's Close the server closes TCP; wait for it.
                try:
                    eof = not self._drain_until_eof()
                except (TimeoutError, OSError):
                    eof = False
                return code, eof

    def _drain_until_eof(self) -> bool:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if not self._fill():
                return False
        return True

    def close(self) -> None:
        self.sock.close()
