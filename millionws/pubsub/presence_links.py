"""How presence records travel: the mesh between the workers of one node, or the broker between nodes.

Theory of operation: :class:`presence.Presence` says *what* to send (a batch of a channel, a heartbeat, a
list request and its answer) through four calls; a link says *to whom*, chosen once like the hub's route:

* :class:`MeshLink` (one node, no ``--bus``): every record goes to every other worker of the node, at most
  ``workers - 1`` records per batch, carried in the one ``sendmsg`` per peer per loop turn the mesh makes
  anyway.  A worker with no member of the channel drops it after one dict lookup.  Sending to every peer
  rather than to the workers that follow the channel keeps no table of who follows what on any worker; on
  a node the peers are few (one per core).
* :class:`BusLink` (``--bus``): a record about a channel is published on the channel's presence subject,
  which a worker follows (subscribes to) only while it has members of the channel, so a batch reaches only
  the workers, on every node, that have some use for it; heartbeats go to one subject every worker with
  presence follows, list answers to the requester's own inbox.  Loss on the broker's live path (at most
  once) is repaired by the next batch (counts are absolute), by the heartbeat and, after an outage, by a
  resync (:meth:`presence.Presence.resync`).

The subject names (``p.<channel>``, ``alive``, ``inbox.<source>``) are given to the bridge, which maps them
to its broker's namespace (``mws.sig.`` subjects, ``mws:sig:`` pub/sub channels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ALIVE = "alive"


def channel_subject(channel: str) -> str:
    return "p." + channel


def inbox(source: str) -> str:
    return "inbox." + source


class MeshLink:
    """Records to the other workers of this node.  ``send(dest, record)``: the mesh's."""

    def __init__(self, index: int, workers: int, send: Callable[[int, bytes], None]) -> None:
        self.send = send
        self.others = [worker for worker in range(workers) if worker != index]
        self.peers: int | None = len(self.others)  # every one of them answers a list request

    def start(self, source: str) -> None:
        pass  # the mesh is up before the loop runs

    def to_all(self, record: bytes) -> None:
        send = self.send
        for worker in self.others:
            send(worker, record)

    def to_channel(self, channel: str, record: bytes) -> None:
        self.to_all(record)

    def to_source(self, peer: int | None, source: str, record: bytes) -> None:
        if peer is not None:
            self.send(peer, record)

    def follow(self, channel: str, on: bool, first: bytes) -> None:
        if on:
            self.to_all(first)  # the mesh is ordered: the answers come after this reaches the peers


class BusLink:
    """Records to the workers of every node that follow the channel, through the broker.

    ``bridge``: the :class:`brokers.Bridge` (its ``signal_subscribe`` and ``signal_publish``)."""

    peers: int | None = None  # who answers a list is not known in advance

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge

    def start(self, source: str) -> None:
        self.bridge.signal_subscribe(ALIVE, True)
        self.bridge.signal_subscribe(inbox(source), True)

    def to_all(self, record: bytes) -> None:
        self.bridge.signal_publish(ALIVE, record)

    def to_channel(self, channel: str, record: bytes) -> None:
        self.bridge.signal_publish(channel_subject(channel), record)

    def to_source(self, peer: int | None, source: str, record: bytes) -> None:
        self.bridge.signal_publish(inbox(source), record)

    def follow(self, channel: str, on: bool, first: bytes) -> None:
        # ``first`` (the SYNC) is published once the subscription is in place, so no answer can miss it.
        self.bridge.signal_subscribe(channel_subject(channel), on, first)
