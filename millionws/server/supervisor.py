"""The supervisor: forks the workers, restarts the ones that die, drains them on a signal.

Theory of operation: the supervisor holds no client connection and no listening socket
(each worker binds its own with SO_REUSEPORT).  It maps the shared metrics region, forks
``workers`` children, and then only waits: for a signal (through the wakeup fd) or for the
next scheduled restart.

* A worker that dies while the server runs is restarted in the same slot after a backoff
  that doubles with each quick death (0.1 s up to 5 s; reset once a worker lived 10 s),
  counted in ``millionws_worker_restarts_total``.
* SIGTERM or SIGINT: the signal is passed on to every worker, which drains (see
  :mod:`millionws.server.worker`); the supervisor exits 0 when all have exited, and kills what
  is left at ``grace`` seconds.  A second signal kills the workers at once and exits 1.
  SIGHUP is passed on too: each worker reloads its TLS certificate (``rotation.py``).
* Before forking it makes the mesh of socketpairs the workers talk through
  (:mod:`millionws.pubsub.mesh`) and keeps every end, so a restarted worker gets its links back.
* Workers ask the kernel for SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so a
  killed supervisor never leaves orphans holding the port.
* Fail fast (:meth:`Supervisor.preflight`): before the first fork, whatever cannot work
  stops the server with one line and exit status 2 (:class:`StartupError`): a JWKS file
  that is missing or holds no key, a TLS certificate or key that does not load, a ``--bus``
  whose client library is absent or whose broker cannot sequence (NATS without JetStream,
  Redis < 7), a port another millionws already serves.  SO_REUSEPORT would let a second
  server bind the same port and silently split the clients (each with its own channels), so
  each port is claimed with a lock: an abstract Unix socket named after it, released by the
  kernel when the process dies.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import resource
import select
import signal
import socket
import sys
import time

from ..auth import Verifier
from ..config import Config
from ..core.tls import server_context
from ..metrics import SharedStats
from ..pubsub.mesh import Mesh
from .worker import run_worker

log = logging.getLogger("millionws.server.supervisor")

_PR_SET_PDEATHSIG = 1


class StartupError(Exception):
    """A configuration that cannot work: one line for the operator, exit status 2."""


# The start-up checks that need no server, also run by ``millionws check-config`` (tools.py): one list of
# what start-up refuses, so the check and the start cannot disagree.  The port claim stays in preflight:
# a check must not take the port from a server that runs.
def check_keys(cfg: Config) -> None:
    """The JWT secret and the JWKS file load (StartupError otherwise)."""
    if cfg.auth_jwt_secret or cfg.auth_jwks:
        try:
            Verifier(cfg.auth_jwt_secret, cfg.auth_jwks, cfg.auth_audience, cfg.auth_issuer)
        except ValueError as exc:
            raise StartupError(str(exc)) from None


def check_tls(cfg: Config) -> None:
    """The certificate and its key load into a server context (StartupError otherwise)."""
    if cfg.tls_cert:
        try:
            server_context(cfg.tls_cert, cfg.tls_key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise StartupError(f"--tls-cert/--tls-key: cannot load {cfg.tls_cert} with {cfg.tls_key}: "
                               f"{exc}") from None


def check_bus(cfg: Config, probe: bool) -> str | None:
    """The ``--bus`` scheme and client library; with ``probe``, one connection to the broker too.

    StartupError when it cannot work; a warning line when the broker is unreachable right now."""
    if not cfg.bus:
        return None
    from ..pubsub.brokers import BusConfigError, preflight, require

    try:
        if not probe:
            require(cfg.bus)
            return None
        # The time a connection may take, as the bridge's.
        return preflight(cfg.bus, cfg.bus_connect_timeout, cfg.bus_shards)
    except BusConfigError as exc:
        raise StartupError(str(exc)) from None


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.shared = SharedStats(config.workers, bool(config.bus))
        # The workers' links to each other, inherited by every fork.
        self.mesh = Mesh(config.workers, config.mesh_socket_buffer)
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # worker index -> monotonic start
        self.failures: dict[int, int] = {}  # worker index -> quick deaths in a row
        self.restarts_due: dict[int, float] = {}  # worker index -> monotonic time to fork
        self.draining_since: float | None = None
        self._signal_r = -1
        self._locks: list[socket.socket] = []

    def preflight(self) -> None:
        """Refuse, before anything is forked, a configuration that cannot work (StartupError)."""
        cfg = self.config
        check_keys(cfg)
        for port in (cfg.port, cfg.admin_port):
            if port:
                self._lock_port(port)
        check_tls(cfg)
        warning = check_bus(cfg, probe=True)
        if warning:  # reachable later, maybe: start, and stay not-ready (/health?ready) until then
            log.warning("%s", warning)

    def _lock_port(self, port: int) -> None:
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0millionws.port.{port}")
        except OSError:
            lock.close()
            raise StartupError(f"port {port} is already served by another millionws on this machine "
                               "(two would silently split the clients and their channels)") from None
        self._locks.append(lock)
    def check_port(self) -> None:
        """Fail fast, in the supervisor, when the port is taken by another program."""
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind((cfg.host, cfg.port))

    def spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                self._become_worker()
                code = run_worker(self.config, index, self.shared, self.mesh)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = index
        self.started[index] = time.monotonic()
        log.debug("worker %d started as pid %d", index, pid)

    def _become_worker(self) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self._signal_r)
        for lock in self._locks:  # the supervisor's claim: a worker outliving it must not hold the port
            lock.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's own handler (drain.py): never fatal
        parent = os.getppid()
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(0)

    @staticmethod
    def raise_fd_limit() -> tuple[int, int]:
        """Soft open-files limit up to the hard one: each connection is a descriptor."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass
        return soft, hard

    def run(self) -> int:
        self.check_port()
        self.preflight()
        soft, hard = self.raise_fd_limit()
        log.info("open files limit soft=%d hard=%d", soft, hard)
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signal_r = r
        signal.set_wakeup_fd(w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        # Everything imported so far is shared copy-on-write; keep the collector off it.
        gc.freeze()
        for index in range(self.config.workers):
            self.spawn(index)
        log.info("millionws: %d workers on %s:%d (pid %d)", self.config.workers, self.config.host,
                 self.config.port, os.getpid())
        # poll, not select: with many workers the inter-worker mesh pushes this fd past FD_SETSIZE (1024).
        waiter = select.poll()
        waiter.register(r, select.POLLIN)
        while True:
            waiter.poll(self._timeout() * 1000)
            try:
                signals = os.read(r, 256)
            except BlockingIOError:
                signals = b""
            for signum in signals:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    if self.draining_since is not None:
                        log.warning("second signal: killing the workers")
                        self._kill_all()
                        return 1
                    self._start_drain()
                elif signum == signal.SIGHUP:
                    self._signal_all(signal.SIGHUP)  # each worker reloads its TLS certificate (rotation.py)
            self._reap()
            if self.draining_since is not None:
                if not self.children:
                    log.info("drained; exiting")
                    return 0
                if time.monotonic() - self.draining_since >= self.config.grace:
                    log.warning("grace period over: killing %d workers", len(self.children))
                    self._kill_all()
                    return 0
            else:
                self._restart_due()

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = list(self.restarts_due.values())
        if self.draining_since is not None:
            deadlines.append(self.draining_since + self.config.grace)
        if not deadlines:
            return 1.0
        return max(0.0, min(min(deadlines) - now, 1.0))

    def _start_drain(self) -> None:
        self.draining_since = time.monotonic()
        self.restarts_due.clear()
        log.info("draining %d workers (grace %.1f s)", len(self.children), self.config.grace)
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is None:
                continue
            self.shared.worker_gone(index)
            if self.draining_since is not None:
                continue
            lived = time.monotonic() - self.started.get(index, 0.0)
            self.failures[index] = 0 if lived >= 10.0 else self.failures.get(index, 0) + 1
            delay = min(5.0, 0.1 * 2 ** max(0, self.failures[index] - 1))
            log.warning("worker %d (pid %d) exited (%s) after %.1f s; restarting in %.1f s", index, pid,
                        _describe(status), lived, delay)
            self.restarts_due[index] = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, due in list(self.restarts_due.items()):
            if due <= now:
                del self.restarts_due[index]
                self.shared.count_restart()
                self.spawn(index)

    def _kill_all(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"


def serve(config: Config) -> int:
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    return Supervisor(config).run()
