"""The token-expiry heap (millionws/server/expiry.py): a refresh moves a connection's expiry without a search,
and the entries it leaves behind never close anything and go away."""

from __future__ import annotations

from millionws.protocol.lifecycle import CLOSED, OPEN
from millionws.server.connection import F_EXPIRES
from millionws.server.expiry import Expiries


class Conn:
    """What the heap reads of a connection record: its flags and its state."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.flags = 0
        self.state = OPEN

    def __repr__(self) -> str:
        return self.name


def test_a_moved_expiry_is_due_at_the_new_time_only():
    expiries = Expiries()
    conn = Conn("a")
    expiries.add(conn, 100.0)
    expiries.move(conn, 200.0)
    assert conn.flags & F_EXPIRES and expiries.stale == 1
    assert list(expiries.due(150.0)) == []  # the old entry came up and was skipped
    assert expiries.moved == {} and expiries.stale == 0  # ... and nothing is kept for it any more
    assert list(expiries.due(200.0)) == [conn]
    assert not conn.flags & F_EXPIRES and len(expiries) == 0


def test_a_move_to_an_earlier_time_is_due_then_and_not_again_at_the_old_one():
    expiries = Expiries()
    conn = Conn("a")
    expiries.add(conn, 300.0)
    expiries.move(conn, 100.0)
    assert list(expiries.due(100.0)) == [conn]
    assert list(expiries.due(1000.0)) == []
    assert expiries.moved == {} and expiries.stale == 0 and len(expiries) == 0


def test_several_moves_leave_one_live_entry():
    expiries = Expiries()
    conn, other = Conn("a"), Conn("b")
    expiries.add(conn, 10.0)
    expiries.add(other, 25.0)
    for t in (20.0, 30.0, 40.0):
        expiries.move(conn, t)
    assert expiries.moved == {conn: [5, 3]}  # seq 5 is live (other took 2), three stale behind it
    assert list(expiries.due(39.0)) == [other]
    assert expiries.moved == {} and expiries.stale == 0
    assert list(expiries.due(40.0)) == [conn]


def test_a_move_to_no_expiry_ends_it():
    expiries = Expiries()
    conn = Conn("a")
    expiries.add(conn, 10.0)
    expiries.move(conn, None)
    assert not conn.flags & F_EXPIRES  # the closing part will not count a live entry it no longer has
    assert list(expiries.due(10.0 ** 12)) == [] and expiries.moved == {} and expiries.stale == 0
    expiries.move(conn, 50.0)  # and a later token with an exp sets one again
    assert list(expiries.due(50.0)) == [conn]


def test_a_moved_connection_that_closes_is_never_due():
    expiries = Expiries()
    conn = Conn("a")
    expiries.add(conn, 10.0)
    expiries.move(conn, 20.0)
    conn.state = CLOSED
    expiries.closed(conn)  # as closing.Closer.close does for a record with F_EXPIRES
    assert expiries.stale == 2
    assert list(expiries.due(30.0)) == [] and expiries.stale == 0 and expiries.moved == {}


def test_refreshes_of_many_connections_are_compacted_back_to_one_entry_each():
    expiries = Expiries()
    conns = [Conn(f"c{i}") for i in range(500)]
    for conn in conns:
        expiries.add(conn, 1000.0)
    for round_ in range(1, 6):  # every connection refreshes five times before its first token expires
        for conn in conns:
            expiries.move(conn, 1000.0 + round_)
        assert len(expiries) < 2 * len(conns) + 70  # compaction keeps the heap near the live entries
    compacted = len(expiries)
    assert compacted - expiries.stale == len(conns)
    assert len(expiries.moved) <= expiries.stale
    due = list(expiries.due(1005.0))
    assert sorted(due, key=conns.index) == conns  # each once, at its newest time
    assert len(expiries) == 0 and expiries.moved == {} and expiries.stale == 0
