"""The control plane: a question to every worker of every node, or a notice to all of them.

Theory of operation.  The server's API for backends (``GET /channels``, ``POST /users/{id}/disconnect``,
presence...) needs what every worker knows of its own connections, wherever they are.  Each worker keeps
one :class:`Control`; a part that has something to ask or to answer registers a *kind* with it.

**The interface** (stable: other parts build on it):

* ``register(kind, handler)``: ``handler(args) -> answer`` runs on this worker for each question or notice
  of ``kind`` from any worker, this one included.  ``kind`` is 1 to 32 of ``a-z 0-9 _ . : -`` starting with
  a letter; ``args`` a dict of JSON values (handlers must not change it: the asking worker's own handler gets
  the caller's dict).  The answer is a JSON value (dict, list, str, int, float, bool, None) computed from
  this worker's state, at most ``--control-max-bytes`` once encoded.  It runs on the reactor: quick, never
  blocking.  One that raises is counted (``millionws_internal_errors_total{where="handler"}``) and its
  worker answers an error.
* ``gather(kind, args, done, timeout=None)``: ``kind`` runs on every worker: this one at once, the other
  workers of this node (mesh records, :func:`records.control`), and with ``--bus`` every worker of every
  other node (the broker's control subject).  ``done(answers, complete)`` is called exactly once, maybe
  before ``gather`` returns: ``answers`` holds the answers that came (this worker's first, then in arrival
  order, each once per worker; they went through JSON, so lists, never tuples); ``complete`` is True when
  every worker expected answered, False when the deadline (``timeout`` seconds, ``--control-timeout`` by
  default) passed first, a worker answered an error, or the bus is down.  The caller says ``"partial"``.
* ``ask(worker, kind, args, done, timeout=None)``: the same of one worker of this node (``answers``: at most
  one); the way to the owner of a channel.
* ``notify(kind, args)``: ``kind`` runs on every worker everywhere, this one at once; answers are dropped and
  nothing waits: at most once per worker.
* ``query_broker(what, args, done, timeout=None)``: a read the bridge thread makes of the broker itself
  (``what``: ``"history"``, :meth:`brokers.backend.Backend.query`); ``done(result, error)`` once, error
  ``"unavailable"`` without a bus that is up, ``"timeout"`` past the deadline.

**Who is expected.**  On the mesh: the node's other workers, always (a restarting one answers late or not:
the deadline covers it).  On the bus: the workers of other nodes that announced themselves (:mod:`members`:
a ``hello`` every ``--control-announce-interval``, forgotten after 3 silent intervals, bounded by
``--control-max-peers``).  A worker of another node that answers without being expected is counted in, not
waited for.  While the bridge is down, other nodes cannot be asked: ``complete`` is False.

**Transport.**  A question, answer, notice or hello is one JSON object (:func:`records.control_message`):
a ``CTL`` record on the mesh, a message on the broker (NATS ``mws.ctl`` for everyone, ``mws.ctl.r.<id>``
for one worker's answers; Redis pub/sub ``mws:ctl`` and ``mws:ctl:r:<id>``; ``<id>`` is the node's id, a
dot, the worker's index).  A worker ignores from the broker what its own node sent: the mesh brought it.
Everything received is untrusted input: :func:`records.decode_control` checks it, a mesh peer may speak
only for itself, and what fails is dropped and counted (``millionws_records_dropped_total{kind=
"mesh_malformed"|"broker_malformed"}``).  Delivery is at most once (core NATS, Redis pub/sub); a question
whose answer is lost ends at its deadline, ``complete`` False.  Only the nodes may publish on the control
subjects (NATS permissions, Redis ACLs): a forged question is acted on like a real one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from .. import boundary
from ..config import DEFAULTS
from ..core.reactor import monotonic
from ..metrics import F
from . import records
from .members import Members, peer_id
from .records import CTL_ANS, CTL_HELLO, CTL_NOTE, CTL_REQ, KIND_RE, MAX_REQ

log = logging.getLogger("millionws.pubsub.control")

Handler = Callable[[dict[str, Any]], Any]
Gathered = Callable[[list[Any], bool], None]  # done(answers, complete)
Queried = Callable[[Any, str], None]  # done(result, error): error "" when the broker answered

_PARTIAL, _PEERS = F["control_partial"], F["control_peers"]
_MESH_MALFORMED, _BROKER_MALFORMED = F["dropped_mesh_malformed"], F["dropped_broker_malformed"]
ENVELOPE = 256  # bytes of a control message around its answer: the largest answer is max_bytes - this


class _Gather:
    """One question waiting for its answers."""

    __slots__ = ("answers", "done", "failed", "heard", "only", "waiting")

    def __init__(self, done: Gathered, only: bool) -> None:
        self.done = done
        self.answers: list[Any] = []
        self.waiting: set[str] = set()  # workers (peer_id) whose answer is awaited
        self.heard: set[str] = set()  # workers that answered: once each
        self.failed = False  # an error answer, or a part of the deployment that could not be asked
        self.only = only  # an ask: answers from workers not waited for are not this question's


def _encode(value: Any) -> bytes:
    """A JSON value as compact UTF-8, or ValueError / TypeError (NaN and infinities included)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class Control:
    """The control plane of one worker.  See the module docstring.

    ``send(dest, record)``: the mesh (records to worker ``dest`` of this node); ``node``: the node's id
    (:attr:`mesh.Mesh.node`).  ``max_depth``: of the JSON received (the answers carry channel data).
    """

    def __init__(self, index: int, workers: int, send: Callable[[int, bytes], None],
                 call_later: Callable[[float, Callable[[], None]], None], counters: list[int], node: str,
                 timeout: float = DEFAULTS.control_timeout, max_bytes: int = DEFAULTS.control_max_bytes,
                 max_depth: int = DEFAULTS.bus_max_json_depth + 8, max_peers: int = DEFAULTS.control_max_peers,
                 announce_interval: float = DEFAULTS.control_announce_interval) -> None:
        if not records.NODE_RE.match(node):
            raise ValueError(f"node id {node!r} is not hex")
        self.index = index
        self.workers = workers
        self.send = send
        self.call_later = call_later
        self.c = counters
        self.node = node
        self.me = peer_id(node, index)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.announce_interval = announce_interval
        self.members = Members(node, announce_interval, max_peers)
        self.handlers: dict[str, Handler] = {}
        self.gathers: dict[int, _Gather] = {}
        self.queries: dict[int, Queried] = {}
        self.bridge: Any = None  # the brokers.Bridge with --bus
        self._next_req = 1
        self._malformed_logged = 0

    # -- the interface -----------------------------------------------------------------------
    def register(self, kind: str, handler: Handler) -> None:
        if not KIND_RE.match(kind):
            raise ValueError(f"control kind {kind!r}: 1 to 32 of a-z 0-9 _ . : -, starting with a letter")
        if kind in self.handlers:
            raise ValueError(f"control kind {kind!r} is registered already")
        self.handlers[kind] = handler

    def gather(self, kind: str, args: dict[str, Any], done: Gathered, timeout: float | None = None) -> None:
        self._need(kind)
        req = self._new_req()
        gather = _Gather(done, only=False)
        body = records.control_message(CTL_REQ, self.node, self.index, id=req, kind=kind, args=args)
        record = records.control(body)
        for worker in range(self.workers):
            if worker != self.index:
                gather.waiting.add(peer_id(self.node, worker))
                self.send(worker, record)
        bridge = self.bridge
        if bridge is not None:
            if bridge.up:
                gather.waiting |= self.members.current(monotonic())
                bridge.control_publish(None, body)
            else:
                gather.failed = True  # the other nodes cannot be asked
        self._local(gather, kind, args)
        self._wait(req, gather, timeout)

    def ask(self, worker: int, kind: str, args: dict[str, Any], done: Gathered, timeout: float | None = None) -> None:
        self._need(kind)
        if not 0 <= worker < self.workers:
            raise ValueError(f"no worker {worker} on this node")
        gather = _Gather(done, only=True)
        if worker == self.index:
            self._local(gather, kind, args)
            self._finish(gather)
            return
        req = self._new_req()
        gather.waiting.add(peer_id(self.node, worker))
        self.send(worker, records.control(records.control_message(CTL_REQ, self.node, self.index, id=req, kind=kind,
                                                                  args=args)))
        self._wait(req, gather, timeout)

    def notify(self, kind: str, args: dict[str, Any]) -> None:
        self._need(kind)
        body = records.control_message(CTL_NOTE, self.node, self.index, kind=kind, args=args)
        record = records.control(body)
        for worker in range(self.workers):
            if worker != self.index:
                self.send(worker, record)
        if self.bridge is not None and self.bridge.up:
            self.bridge.control_publish(None, body)
        self._run(kind, args)

    def query_broker(self, what: str, args: tuple, done: Queried, timeout: float | None = None) -> None:
        bridge = self.bridge
        if bridge is None or not bridge.up:
            done(None, "unavailable")
            return
        req = self._new_req()
        self.queries[req] = done
        bridge.query(req, what, args)
        self.call_later(self.timeout if timeout is None else timeout, partial(self._query_deadline, req))

    # -- wiring --------------------------------------------------------------------------------
    def connect_bus(self, bridge: Any) -> None:
        """Ask and answer the other nodes through ``bridge`` (a :class:`brokers.Bridge`, not started yet)."""
        self.bridge = bridge
        bridge.control_id = self.me
        bridge.on_control = self.on_broker

    def start(self) -> None:
        """The worker's loop is about to run: announce this worker on the bus from now on."""
        if self.bridge is not None:
            self.call_later(self.announce_interval, self._announce_periodically)

    def demux(self, channels: Callable[[int, memoryview], None]) -> Callable[[int, memoryview], None]:
        """The mesh's record handler: ``CTL`` records here, every other record to ``channels`` (the hub)."""
        on_control = self.on_record

        def on_record(src: int, record: memoryview) -> None:
            if record and record[0] == records.T_CTL:
                on_control(src, record)
            else:
                channels(src, record)
        return on_record

    # -- what arrives ---------------------------------------------------------------------------
    def on_record(self, src: int, record: memoryview) -> None:
        """A ``CTL`` record from worker ``src`` of this node."""
        try:
            if not 0 <= src < self.workers or src == self.index:
                raise ValueError(f"no such peer {src}")
            msg = records.decode_control(record[1:], self.max_bytes, self.max_depth)
            if msg[1] != self.node or msg[2] != src or msg[0] == CTL_HELLO:
                raise ValueError("a worker of this node speaks for itself, and says no hello on the mesh")
        except ValueError as exc:
            self._malformed(_MESH_MALFORMED, f"worker {src}", exc)
            return
        self._on_message(msg, partial(self._to_worker, src))

    def on_broker(self, event: tuple) -> None:
        """An event of the bridge for the control plane: a message, a query's answer, the bus up or down."""
        from .brokers import E_ANSWER, E_CTL, E_STATE  # only with a bus: a node without one never loads them

        kind = event[0]
        if kind == E_CTL:
            try:
                msg = records.decode_control(event[1], self.max_bytes, self.max_depth)
            except ValueError as exc:
                self._malformed(_BROKER_MALFORMED, "the bus", exc)
                return
            if msg[1] == self.node:
                return  # this node's own: its workers had it over the mesh
            self._on_message(msg, partial(self._to_peer, peer_id(msg[1], msg[2])))
        elif kind == E_ANSWER:
            _, req, error, result = event
            done = self.queries.pop(req, None)
            if done is not None:
                done(result, error)
        elif kind == E_STATE and event[1]:
            self._hello(None, ask=True)  # (re)connected: tell everyone, and hear from them at once

    def _on_message(self, msg: tuple, reply: Callable[[bytes], None]) -> None:
        op = msg[0]
        if op == CTL_REQ:
            _, _node, _w, req, kind, args = msg
            ok, payload = self._run(kind, args)
            if ok:
                body = b'{"op":"ans","node":"%s","w":%d,"id":%d,"ok":true,"answer":%s}' % (
                    self.node.encode(), self.index, req, payload)
            else:
                body = records.control_message(CTL_ANS, self.node, self.index, id=req, ok=False, error=payload)
            reply(body)
        elif op == CTL_ANS:
            _, node, worker, req, ok, value = msg
            self._answered(req, peer_id(node, worker), ok, value)
        elif op == CTL_NOTE:
            self._run(msg[3], msg[4])
        elif op == CTL_HELLO:
            _, node, worker, ask = msg
            if self.members.heard(node, worker, monotonic()):
                self.c[_PEERS] = len(self.members.seen)
            if ask:
                self._hello(peer_id(node, worker), ask=False)

    def _answered(self, req: int, sender: str, ok: bool, value: Any) -> None:
        gather = self.gathers.get(req)
        if gather is None or sender in gather.heard or (gather.only and sender not in gather.waiting):
            return  # late (past its deadline), twice, or not this question's
        gather.heard.add(sender)
        gather.waiting.discard(sender)
        if ok:
            gather.answers.append(value)
        else:
            gather.failed = True
        if not gather.waiting:
            del self.gathers[req]
            self._finish(gather)

    # -- inside ------------------------------------------------------------------------------------
    def _need(self, kind: str) -> None:
        if kind not in self.handlers:
            raise ValueError(f"control kind {kind!r} is not registered")

    def _new_req(self) -> int:
        req = self._next_req
        while req in self.gathers or req in self.queries:  # 4 billion later, one may still wait
            req = req + 1 if req < MAX_REQ else 1
        self._next_req = req + 1 if req < MAX_REQ else 1
        return req

    def _run(self, kind: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """This worker's handler of ``kind``: ``(True, the answer encoded)`` or ``(False, why not)``."""
        handler = self.handlers.get(kind)
        if handler is None:
            return False, f"no handler for {kind!r} on this worker"
        try:
            payload = _encode(handler(args))
        except Exception as exc:  # the boundary of one handler: an error answer, the worker goes on
            boundary.report(self.c, "handler", exc, f"control {kind}")
            return False, "the handler failed"
        if len(payload) > self.max_bytes - ENVELOPE:
            return False, f"the answer is over --control-max-bytes ({len(payload)} bytes)"
        return True, payload

    def _local(self, gather: _Gather, kind: str, args: dict[str, Any]) -> None:
        gather.heard.add(self.me)
        ok, payload = self._run(kind, args)
        if ok:
            gather.answers.append(json.loads(payload))  # as the other workers' answers: through JSON
        else:
            gather.failed = True

    def _wait(self, req: int, gather: _Gather, timeout: float | None) -> None:
        if not gather.waiting:
            self._finish(gather)
            return
        self.gathers[req] = gather
        self.call_later(self.timeout if timeout is None else timeout, partial(self._deadline, req))

    def _finish(self, gather: _Gather) -> None:
        complete = not gather.failed and not gather.waiting
        if not complete:
            self.c[_PARTIAL] += 1
        gather.done(gather.answers, complete)

    def _deadline(self, req: int) -> None:
        gather = self.gathers.pop(req, None)
        if gather is not None:
            self._finish(gather)

    def _query_deadline(self, req: int) -> None:
        done = self.queries.pop(req, None)
        if done is not None:
            done(None, "timeout")

    def _to_worker(self, worker: int, body: bytes) -> None:
        self.send(worker, records.control(body))

    def _to_peer(self, peer: str, body: bytes) -> None:
        if self.bridge is not None:
            self.bridge.control_publish(peer, body)

    def _hello(self, to: str | None, ask: bool) -> None:
        if self.bridge is not None and self.bridge.up:
            self.bridge.control_publish(to, records.control_message(CTL_HELLO, self.node, self.index, ask=ask))

    def _announce_periodically(self) -> None:
        self.call_later(self.announce_interval, self._announce_periodically)  # first: one that raises is skipped
        self._hello(None, ask=False)
        self.members.sweep(monotonic())
        self.c[_PEERS] = len(self.members.seen)

    def _malformed(self, counter: int, where: str, exc: Exception) -> None:
        self.c[counter] += 1
        self._malformed_logged += 1
        if self._malformed_logged & (self._malformed_logged - 1) == 0:  # 1, 2, 4, 8 ...: a trace, not a flood
            log.warning("worker %d: malformed control message from %s dropped (%s)", self.index, where, exc)
