"""A raw WebSocket client for tests: exact bytes out, every frame in, nothing forgiven."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time

KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade_request(path: str = "/echo", host: str = "localhost", extra: str = "", key: str = KEY,
                    version: str = "13") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n").encode()


def frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True, rsv: int = 0,
          length: int | None = None, length_bytes: int | None = None) -> bytes:
    """A client frame; ``length``/``length_bytes`` let a test lie about the length encoding."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mbit = 0x80 if mask else 0
    if length_bytes is None:
        length_bytes = 0 if n < 126 else 2 if n < 65536 else 8
    if length_bytes == 0:
        head.append(mbit | n)
    elif length_bytes == 2:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class RawClient:
    """Blocking socket with a deadline on every read."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
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
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                assert not b1 & 0x80, "server frames must not be masked"
                n, pos = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
                if (b1 & 0x7F) < 126 or pos > 2:
                    if len(self.buf) >= pos + n:
                        payload = self.buf[pos:pos + n]
                        self.buf = self.buf[pos + n:]
                        return b0 & 0x0F, bool(b0 & 0x80), payload
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
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
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
