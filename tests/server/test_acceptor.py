"""The acceptor with a real reactor and real sockets: batches, admission at accept(), running out of fds."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from millionws import metrics
from millionws.core.reactor import Reactor
from millionws.protocol.lifecycle import HTTP
from millionws.server.acceptor import Acceptor, listen_socket
from millionws.server.admission import Admission
from millionws.server.connection import F_ADMIN

F = metrics.F


def make(accept_batch: int = 64, **limits) -> Acceptor:
    counters = [0] * len(F)
    reactor = Reactor(lambda *_: None, lambda *_: None)
    admission = Admission(counters, limits.get("rate", 0.0), limits.get("per_ip", 0))
    return Acceptor(reactor, counters, admission, accept_batch, handshake_timeout=5.0, max_request_head=8192)


def teardown(acceptor: Acceptor, *socks: socket.socket) -> None:
    for fd in list(acceptor.reactor.conns):
        acceptor.reactor.remove_conn(fd)
        socket.socket(fileno=fd).close()
    for sock in socks:
        sock.close()
    acceptor.close()
    acceptor.reactor.close()


def test_an_accepted_descriptor_becomes_a_record_with_a_parser_and_a_handshake_deadline():
    acceptor = make()
    listener = listen_socket("127.0.0.1", 0, 16)
    client = socket.create_connection(listener.getsockname())
    acceptor.accept_from(listener, F_ADMIN)
    [conn] = acceptor.reactor.conns.values()
    assert conn.state == HTTP and conn.http is not None and conn.flags == F_ADMIN
    assert conn.deadline != 0 and conn.peer is None  # no per-address limit: no address kept
    assert not os.get_blocking(conn.fd)
    assert acceptor.c[F["accepted"]] == 1
    teardown(acceptor, client, listener)


def test_a_refused_address_is_closed_before_a_byte_is_parsed_and_its_slot_is_given_back():
    acceptor = make(per_ip=1)
    listener = listen_socket("127.0.0.1", 0, 16)
    first = socket.create_connection(listener.getsockname())
    second = socket.create_connection(listener.getsockname())
    acceptor.accept_from(listener, 0)
    assert len(acceptor.reactor.conns) == 1 and acceptor.c[F["rate_limited_connections_per_ip"]] == 1
    second.settimeout(2.0)
    assert second.recv(1) == b""  # closed at once: no HTTP answer for a flood
    [conn] = acceptor.reactor.conns.values()
    assert conn.peer == "127.0.0.1"  # kept for the release when it closes
    acceptor.admission.release(conn.peer)
    assert acceptor.admission.counts == {}
    teardown(acceptor, first, second, listener)


class _Failing:
    """A listener whose accept fails with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code

    def _accept(self):
        raise OSError(self.code, "injected")


def test_out_of_descriptors_the_listeners_leave_epoll_for_a_while_and_come_back():
    acceptor = make()
    acceptor.listen("127.0.0.1", 0, 16)
    fd = acceptor.listeners[0][0].fileno()
    reactor = acceptor.reactor
    assert fd in reactor._handlers
    acceptor.accept_from(_Failing(errno.EMFILE), 0)
    acceptor.accept_from(_Failing(errno.ENFILE), 0)  # already paused: one resume, not two
    assert fd not in reactor._handlers  # level-triggered epoll would report it ready forever
    assert acceptor.c[F["accept_error_emfile"]] == 2
    assert len(reactor._calls) == 1
    reactor._calls.pop()[2]()
    assert fd in reactor._handlers
    teardown(acceptor)


@pytest.mark.parametrize(("code", "counted"), [(errno.ECONNABORTED, 0), (errno.EPROTO, 0), (errno.EACCES, 1)])
def test_a_connection_the_peer_aborted_is_not_an_error(code, counted):
    acceptor = make()
    acceptor.accept_from(_Failing(code), 0)
    assert acceptor.c[F["accept_error_other"]] == counted and acceptor.c[F["accept_error_emfile"]] == 0
    teardown(acceptor)


def test_the_admin_port_marks_its_connections():
    acceptor = make()
    acceptor.listen("127.0.0.1", 0, 16, admin_port=_free_port())
    assert [flags for _, flags in acceptor.listeners] == [0, F_ADMIN]
    teardown(acceptor)


def test_the_admission_sweep_runs_only_with_a_limit_and_at_the_refill_period():
    idle = make()
    idle.sweep(30.0)
    assert idle.reactor._calls == []  # no limit, no table, no timer
    teardown(idle)
    per_ip = make(per_ip=3)
    per_ip.sweep(30.0)
    [(when, _, _)] = per_ip.reactor._calls
    rated = make(rate=10.0)
    rated.sweep(30.0)
    [(when_rated, _, _)] = rated.reactor._calls
    assert when - when_rated > 25.0  # a full bucket of 10/s is idle after about a second, not 30
    teardown(per_ip)
    teardown(rated)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
