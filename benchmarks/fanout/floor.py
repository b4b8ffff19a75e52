"""The bare-send floor: no framework, a Python ``sock.send(frame)`` loop over the subscriber sockets.

    python benchmarks/fanout/floor.py --host 127.0.0.1 --port 8010

Accepts WebSockets on ``/fanout`` (subscribers: a 101, then one ``{"op":"subscribed"}`` text frame, and
they are never read again) and ``/fanout/publish`` (the publisher: its text frames are unmasked and each
payload is broadcast). For each published message the server frame is built once and then::

    for sock in subscribers:
        sock.send(frame)

That loop is the least a Python server can do per message: what a framework costs on top of it is the
ratio the fan-out benchmark reports. A send the kernel refuses (EAGAIN) is counted, not retried (with
200 ms between small messages it does not happen). Prints "listening" once ready; stops on SIGTERM/SIGINT.
Frames are built and split by ``benchmarks.wscodec``, as in every client of the benchmarks.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import resource
import select
import signal
import socket
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: benchmarks/fanout/floor.py
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import wscodec  # noqa: E402

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def main(host: str, port: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lsock.bind((host, port))
    lsock.listen(4096)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    heads: dict[int, tuple[socket.socket, bytes]] = {}  # fd -> (sock, request bytes so far)
    publishers: dict[int, list] = {}  # fd -> [sock, buffered bytes]
    subscribers: list[socket.socket] = []
    stop = False
    eagain = 0

    def on_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    print("listening", flush=True)
    greeting = wscodec.encode(wscodec.OP_TEXT, b'{"op":"subscribed"}', mask=False)
    while not stop:
        try:
            events = ep.poll(0.5)
        except InterruptedError:
            continue
        for fd, _ev in events:
            if fd == lsock.fileno():
                for _ in range(256):
                    try:
                        sock, _addr = lsock.accept()
                    except BlockingIOError:
                        break
                    except OSError:
                        break
                    sock.setblocking(False)
                    heads[sock.fileno()] = (sock, b"")
                    ep.register(sock.fileno(), select.EPOLLIN)
                continue
            if fd in heads:
                sock, got = heads[fd]
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    del heads[fd]
                    ep.unregister(fd)
                    sock.close()
                    continue
                got += data
                cut = got.find(b"\r\n\r\n")
                if cut < 0:
                    heads[fd] = (sock, got)
                    continue
                del heads[fd]
                lines = got[:cut].split(b"\r\n")
                target = lines[0].split(b" ")[1]
                key = b""
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"sec-websocket-key":
                        key = value.strip()
                accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
                sock.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                if target == b"/fanout/publish":
                    publishers[fd] = [sock, got[cut + 4:]]
                else:
                    sock.send(greeting)
                    ep.unregister(fd)  # never read again: the floor only sends
                    subscribers.append(sock)
                continue
            pub = publishers.get(fd)
            if pub is None:
                continue
            try:
                data = pub[0].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                del publishers[fd]
                ep.unregister(fd)
                pub[0].close()
                continue
            buf = pub[1] + data
            heads = bytearray()
            payloads: list[bytes] = []
            cut = wscodec.split_frames(buf, heads, payloads, allow_masked=True)  # the publisher's: masked
            for b0, payload in zip(heads, payloads, strict=True):
                if b0 & 0x0F != wscodec.OP_TEXT:
                    continue
                out = wscodec.encode(wscodec.OP_TEXT, payload, mask=False)  # built once per message
                # ---- the floor -------------------------------------------------------------------
                for sock in subscribers:
                    try:
                        sock.send(out)
                    except BlockingIOError:
                        eagain += 1
                    except OSError:
                        pass
                # ------------------------------------------------------------------------------------
            pub[1] = buf[cut:]
    if eagain:
        print(f"eagain {eagain}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    args = parser.parse_args()
    main(args.host, args.port)
