"""The transport seam: the plain transport is the C functions themselves, and it half-closes."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from millionws.core.transport import PLAIN, Transport


def test_plain_is_the_c_functions_so_the_seam_costs_no_call():
    assert PLAIN.readv is os.readv and PLAIN.write is os.write and PLAIN.close is os.close
    transport: Transport = PLAIN  # it satisfies the protocol the worker programs against
    assert callable(transport.shutdown)


def test_plain_moves_bytes_and_half_closes():
    a, b = socket.socketpair()
    fd = a.detach()
    try:
        assert PLAIN.write(fd, b"hello") == 5
        assert b.recv(5) == b"hello"
        b.sendall(b"world")
        buf = bytearray(16)
        assert PLAIN.readv(fd, [memoryview(buf)]) == 5 and buf[:5] == b"world"
        PLAIN.shutdown(fd)  # our FIN: the peer reads EOF, and can still send
        assert b.recv(1) == b""
        b.sendall(b"!")
        assert PLAIN.readv(fd, [memoryview(buf)]) == 1
    finally:
        PLAIN.close(fd)
        b.close()


def test_a_half_close_that_fails_raises_oserror_with_its_errno():
    r, w = os.pipe()  # not a socket
    try:
        with pytest.raises(OSError) as failed:
            PLAIN.shutdown(r)
        assert failed.value.errno == errno.ENOTSOCK
    finally:
        os.close(r)
        os.close(w)
