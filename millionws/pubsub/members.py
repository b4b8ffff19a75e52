"""The workers of the other nodes on the bus, as far as this worker has heard: the control plane's roll call.

Theory of operation:

* A gather (:mod:`control`) must know how many answers to wait for, and the broker does not say who listens.
  So every worker announces itself on the broker's control subject every ``--control-announce-interval``
  seconds (a ``hello``), and every worker keeps this table: peer -> when it was last heard.  A worker that
  (re)connects to the broker says so with ``ask``, and every peer answers it directly with its own
  ``hello``, so a new node knows its peers within one round trip instead of one interval.
* A peer unheard for :data:`MISSED` intervals is forgotten: a node that died stops making gathers wait
  after that long (meanwhile they end at their deadline, ``complete`` False).  A worker that restarts keeps
  its id (the node's id and its index), so it replaces its predecessor rather than adding a row.
* Workers of this node are not in the table: they answer over the mesh, which knows them already.
* Bounded: at most ``max_peers`` rows.  A peer beyond that is not recorded (:attr:`Members.refused`): its
  answers still count when they come, but a gather does not wait for it.
"""

from __future__ import annotations

MISSED = 3  # intervals a peer may stay silent before it is forgotten


def peer_id(node: str, worker: int) -> str:
    """How a worker is named on the bus: its node's id and its index (also its reply address)."""
    return f"{node}.{worker}"


class Members:
    """Workers of other nodes, by :func:`peer_id`, with the monotonic time each was last heard."""

    __slots__ = ("horizon", "max_peers", "node", "refused", "seen")

    def __init__(self, node: str, interval: float, max_peers: int) -> None:
        self.node = node
        self.horizon = MISSED * interval
        self.max_peers = max_peers
        self.seen: dict[str, float] = {}
        self.refused = 0  # hellos of peers not recorded because the table was full

    def heard(self, node: str, worker: int, now: float) -> bool:
        """A hello from ``node``/``worker``; True when the peer is new to the table."""
        if node == self.node:
            return False  # this node's workers answer over the mesh
        key = peer_id(node, worker)
        seen = self.seen
        if key in seen:
            seen[key] = now
            return False
        if len(seen) >= self.max_peers:
            self.sweep(now)
            if len(seen) >= self.max_peers:
                self.refused += 1
                return False
        seen[key] = now
        return True

    def sweep(self, now: float) -> None:
        """Forget the peers unheard for :data:`MISSED` intervals."""
        horizon = now - self.horizon
        for key in [key for key, when in self.seen.items() if when < horizon]:
            del self.seen[key]

    def current(self, now: float) -> set[str]:
        """The peers a gather waits for now."""
        self.sweep(now)
        return set(self.seen)
