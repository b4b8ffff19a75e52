"""How bytes move between a connection's descriptor and the worker: the transport seam.

Theory of operation: the worker never calls ``os.readv``/``os.write`` on a client descriptor
itself; it calls the four functions of its :class:`Transport`, each taking the descriptor:

* ``readv(fd, buffers) -> int``: bytes of application data read into ``buffers`` (0: the peer
  closed; ``BlockingIOError``: nothing yet);
* ``write(fd, data) -> int``: bytes of ``data`` taken (the rest is the worker's to keep);
* ``shutdown(fd)``: our end of the stream (FIN; with TLS, close_notify first);
* ``close(fd)``: the descriptor and whatever the transport held for it;
* ``seal``: ``None``, or ``seal(fd, data) -> bytes``, what to write for ``data`` (TLS: its records).
  The output seals before it writes, so what the kernel refuses is kept as the bytes of the wire.

The plain transport *is* the C functions (``os.readv``, ``os.write``, ``os.close``) and seals
nothing, so the seam costs no Python call on the hot path.  A transport with per-connection state
(TLS, ``tls.py``) keeps it keyed by descriptor, created when the connection is accepted and dropped
in ``close``, so the connection record gains no slot and an idle plain connection nothing.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Callable, Sequence
from typing import Protocol


class Transport(Protocol):
    def readv(self, fd: int, buffers: Sequence[memoryview], /) -> int: ...

    def write(self, fd: int, data: bytes | bytearray | memoryview, /) -> int: ...

    def shutdown(self, fd: int, /) -> None: ...

    def close(self, fd: int, /) -> None: ...

    seal: Callable[[int, bytes], bytes] | None


# shutdown(2) straight from libc: a socket object around the descriptor would ask the kernel for its
# family, type and protocol first (three getsockopt calls per connection: 1.4 us against 0.4 us).
_shutdown = ctypes.CDLL(None, use_errno=True).shutdown


def half_close(fd: int) -> None:
    """Half-close: send our FIN, keep reading until the peer's."""
    if _shutdown(fd, socket.SHUT_WR) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class PlainTransport:
    """``ws://``: bytes straight on the descriptor."""

    __slots__ = ()
    readv = staticmethod(os.readv)
    write = staticmethod(os.write)
    shutdown = staticmethod(half_close)
    close = staticmethod(os.close)
    seal = None


PLAIN = PlainTransport()
