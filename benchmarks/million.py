"""Scenario 2: a million concurrent idle WebSocket connections on this machine (``just bench-million``).

    python -m benchmarks.million           # 1 000 000, 55 workers, pings every 180 s
    python -m benchmarks.million --connections 100000 --ping-interval 30 --idle-window 20  # rehearsal

What it does, in order, bounded by ``--time-limit`` (default 17 minutes) plus a cleanup of at most ~2:

1. preflight: CPUs idle enough (another heavy run?), memory available against an estimate (kernel ~10 KB per loopback
   connection pair + user space), at most 19 000 connections per server worker and 18 999 per load
   generator process (the open-files hard limit here is 20 000 per process and cannot be raised);
2. kernel settings: each one it needs is read, raised when below what the run needs (``sysctl -w``,
   root) and put back afterwards; the report lists what was found and what was set. Loopback is exempted
   from connection tracking (nf_conntrack, which podman's networking loads, holds 262 144 entries here and
   drops new connections' packets once full): a table of our own with ``notrack`` for ``lo`` in the raw
   hooks (nft, else iptables' raw table), deleted afterwards; with neither tool, nf_conntrack_max is raised
   above what the run needs and put back (all of it in ``conntrack`` of the report);
3. the server: ``millionws serve --workers W --ping-interval 180 --timer-resolution 1`` in its own session
   (not pinned); the first ping of each connection comes at a fraction of the interval that spreads the
   ramp's connections evenly (millionws/server/keepalive.py), and every connection is pinged within one
   interval of its open. A wheel tick of 1 s instead of 50 ms sends each worker's due pings in one batch a
   second, so pings and pongs cross in batches instead of one wake-up each: at 100 000 connections pinged
   5 556 times a second (55 workers, 56 load generator processes) both cores were 32 % and 30 % busy instead
   of 54 % and 52 %. 180 s keeps the pings of a million under a core while the last connections open;
4. the load generator: ``benchmarks.loadgen idle --adaptive`` with ``--procs P`` over many loopback source
   addresses: a self-paced ramp (benchmarks/loadgen/ramp.py: one window of handshakes in flight for all
   processes, grown while their p90 latency is under ``--latency-target-ms``, cut when over; ``--rate`` is
   only a ceiling; no retries, so "no failure" means every first attempt succeeded; ``--ramp fixed`` is the
   old fixed ``--rate`` with ``--max-pending`` per process); it answers every server ping and, at the end,
   pings every connection itself (``--verify-ping``); it also counts, per connection, whether it answered a
   server ping; then it resets every connection (``--close rst``: the cheapest teardown of a million);
5. sampling every 2 s (the ramp): connections established (load generator), TCP sockets in use
   (/proc/net/sockstat), memory available, slab, CPU per core and of each side; /stats of the server
   every 30 s during the ramp only (it reads every worker's descriptors: seconds of CPU at this scale);
6. once all are open: memory of the server (PSS split anonymous/file, RSS over the whole tree) and of
   the kernel (slab caches, sockstat), then CPU over ``--idle-window`` s while the server pings every
   connection every ``--ping-interval`` s; the hold lasts until every connection has had the time to be
   pinged (``ping-interval`` + margin after the last one opened);
7. then /metrics (no keepalive timeout may have fired), the load generator's verification, close,
   stop the server, check that no process of the run is left, restore the kernel settings;
8. ``benchmarks/results/million.json`` and ``million.png`` (the ramp and its window), with what bound the run.

Memory per connection (``memory_per_conn``), GUIDE section 4: ``server_pss`` is the PSS of the server's whole
tree (supervisor and workers) after the ramp minus before, divided by the connections established: Python
objects, the kernel's view of nothing. ``kernel_slab_per_pair`` is the growth of ``Slab`` over the same interval
per connection: on loopback it holds *both* ends (TCP socket, socket inode, dentry, file and epoll item of the
server's end and of the load generator's), so ``kernel_slab_per_end`` (half of it) estimates the kernel cost
of one server connection; socket buffers are not in it (an idle socket holds none: ``tcp_mem`` pages).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # `python benchmarks/million.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import servers
from benchmarks.memory import meminfo, slab_caches, tcp_sockstat, tree_memory
from benchmarks.servers import (
    REPO_ROOT,
    CpuSampler,
    busy_pct_over,
    core_busy,
    machine,
    port_accepts,
    stop_process,
    wait_until,
)

RESULTS = REPO_ROOT / "benchmarks" / "results"
FD_LIMIT_NOTE = (
    "the open-files hard limit here is 20 000 per process and cannot be raised, so the server runs "
    "--workers W with at most 19 000 connections each and the load generator --procs P with at most "
    "18 999 each; on a real node one worker per core holds them all once `ulimit -n` (LimitNOFILE) "
    "and fs.nr_open are raised above the connections per worker"
)
KERNEL_PER_PAIR = 10_500  # bytes of slab per loopback connection pair (both ends), measured at 10^4..10^5
USER_PER_CONN = 1_500  # server + load generator user space per connection, with margin


def log(msg: str) -> None:
    print(f"[million] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ sysctl
def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def sysctl_get(name: str) -> str | None:
    try:
        return " ".join(sysctl_path(name).read_text().split())
    except OSError:
        return None


def sysctl_set(name: str, value: str) -> bool:
    try:
        sysctl_path(name).write_text(value)
        return True
    except OSError as exc:
        log(f"cannot set {name}={value}: {exc}")
        return False


def kernel_settings(n: int, sources: int) -> list[tuple[str, str, str]]:
    """(name, value needed, why) for n connections from `sources` source addresses.

    For ip_local_port_range the value is a range whose *width* is what counts: each source address
    must keep its share of the connections under half its ephemeral ports (connect() slows down as
    a range fills), so the range is widened to 1024-65535 only when the current one is too narrow.
    """
    ports_needed = 2 * math.ceil(n / max(1, sources))
    return [
        ("fs.file-max", str(2 * n + 500_000), "open files of the whole machine: both ends of every connection"),
        ("net.core.somaxconn", "4096", "accept queue per worker during the ramp"),
        ("net.ipv4.tcp_max_syn_backlog", "8192", "SYN queue during the ramp"),
        ("net.core.netdev_max_backlog", "16384", "loopback packets queued per CPU: bursts drop SYNs at 1000"),
        (
            "net.ipv4.ip_local_port_range",
            f"{max(1024, 65535 - ports_needed)} 65535",
            f"ephemeral ports: {ports_needed} per source address wanted (twice its share of connections)",
        ),
    ]


def needs_raise(name: str, current: str | None, wanted: str) -> bool:
    if current is None:
        return False
    if name == "net.ipv4.ip_local_port_range":
        cur_lo, cur_hi = (int(x) for x in current.split())
        want_lo, want_hi = (int(x) for x in wanted.split())
        return cur_hi - cur_lo < want_hi - want_lo
    return int(current.split()[0]) < int(wanted.split()[0])


def value_to_set(name: str, wanted: str) -> str:
    return "1024 65535" if name == "net.ipv4.ip_local_port_range" else wanted


# ------------------------------------------------------------------------------------------ conntrack
NOTRACK_TABLE = "millionws_notrack"
NOTRACK_NFT = (
    f"table inet {NOTRACK_TABLE} {{\n"
    "  chain pre { type filter hook prerouting priority raw; iif lo notrack; }\n"
    "  chain out { type filter hook output priority raw; oif lo notrack; }\n"
    "}\n"
)
NOTRACK_IPTABLES = (("PREROUTING", "-i"), ("OUTPUT", "-o"))


def run_tool(cmd: list[str], stdin: str | None = None) -> tuple[bool, str]:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def exempt_loopback_from_conntrack(n: int) -> dict[str, Any]:
    """Keep connection tracking off loopback for the run; what was done, for the report and for the restore.

    The rules go in even when nf_conntrack is not loaded yet: another tenant (podman) may load it mid-run.
    """
    import shutil

    entry: dict[str, Any] = {
        "nf_conntrack_loaded": sysctl_get("net.netfilter.nf_conntrack_max") is not None,
        "nf_conntrack_max": sysctl_get("net.netfilter.nf_conntrack_max"),
        "nf_conntrack_count_before": sysctl_get("net.netfilter.nf_conntrack_count"),
        "method": None,
        "applied": False,
    }
    nft, iptables = shutil.which("nft"), shutil.which("iptables")
    if nft:
        run_tool([nft, "delete", "table", "inet", NOTRACK_TABLE])  # a leftover of a killed run
        ok, out = run_tool([nft, "-f", "-"], NOTRACK_NFT)
        entry.update(method="nft: raw-priority prerouting/output chains, notrack on lo", rules=NOTRACK_NFT)
        entry["applied"] = ok and run_tool([nft, "list", "table", "inet", NOTRACK_TABLE])[0]
        if not ok:
            entry["error"] = out
    elif iptables:
        entry["method"] = "iptables -t raw: NOTRACK on lo"
        results = [
            run_tool([iptables, "-t", "raw", "-A", chain, flag, "lo", "-j", "NOTRACK"])
            for chain, flag in NOTRACK_IPTABLES
        ]
        entry["applied"] = all(ok for ok, _ in results)
        if not entry["applied"]:
            entry["error"] = "; ".join(out for ok, out in results if not ok)
    if not entry["applied"] and entry["nf_conntrack_loaded"]:
        # Neither tool: at least let the table hold both directions' worth of the run's connections.
        wanted = str(2 * n + 65_536)
        current = entry["nf_conntrack_max"]
        entry["fallback"] = "no nft nor iptables: raised net.netfilter.nf_conntrack_max instead"
        if current is not None and int(current) < int(wanted) and sysctl_set("net.netfilter.nf_conntrack_max", wanted):
            entry.update(method="nf_conntrack_max raised", max_set=wanted, applied=True)
    log(f"conntrack: {entry['method']} applied={entry['applied']}")
    return entry


def restore_conntrack(entry: dict[str, Any]) -> None:
    import shutil

    method = entry.get("method") or ""
    if not entry.get("applied"):
        return
    if method.startswith("nft"):
        entry["restored"] = run_tool(["nft", "delete", "table", "inet", NOTRACK_TABLE])[0]
    elif method.startswith("iptables"):
        iptables = shutil.which("iptables") or "iptables"
        entry["restored"] = all(
            run_tool([iptables, "-t", "raw", "-D", chain, flag, "lo", "-j", "NOTRACK"])[0]
            for chain, flag in NOTRACK_IPTABLES
        )
    elif entry.get("max_set") and entry.get("nf_conntrack_max") is not None:
        entry["restored"] = sysctl_set("net.netfilter.nf_conntrack_max", entry["nf_conntrack_max"])
    entry["nf_conntrack_count_after"] = sysctl_get("net.netfilter.nf_conntrack_count")
    log(f"conntrack restored: {entry.get('restored')}")


# ------------------------------------------------------------------------------------------ helpers
def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes] | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def stats(port: int) -> dict[str, Any] | None:
    got = http_get(port, "/stats")
    if not got or got[0] != 200:
        return None
    try:
        return json.loads(got[1])
    except json.JSONDecodeError:
        return None


def metrics_sum(port: int, timeout: float = 30.0) -> dict[str, float] | None:
    """Prometheus text of /metrics summed over workers: {'name{label="x"}': value} without the worker label."""
    got = http_get(port, "/metrics", timeout)
    if not got or got[0] != 200:
        return None
    out: dict[str, float] = {}
    for line in got[1].decode().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        key = re.sub(r'worker="\d+",?', "", key).replace("{}", "").replace(",}", "}")
        try:
            out[key] = out.get(key, 0.0) + float(value)
        except ValueError:
            continue
    return out


def kernel_snapshot() -> dict[str, Any]:
    info = meminfo()
    caches = slab_caches()
    snap: dict[str, Any] = {
        "mem_available": info.get("MemAvailable", 0),
        "mem_free": info.get("MemFree", 0),
        "slab": info.get("Slab", 0),
        "sunreclaim": info.get("SUnreclaim", 0),
        "slab_sockets": sum(caches.values()),
        "slab_caches": caches,
        "anon_pages": info.get("AnonPages", 0),
        "page_tables": info.get("PageTables", 0),
        "nf_conntrack_count": int(sysctl_get("net.netfilter.nf_conntrack_count") or 0),
        "file_nr": sysctl_get("fs.file-nr"),
    }
    snap.update(tcp_sockstat())
    return snap


def tcp_drops() -> dict[str, int]:
    """Counters of SYNs and handshakes the kernel dropped (/proc/net/netstat, machine-wide, cumulative)."""
    wanted = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPBacklogDrop")
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")]
    if len(lines) < 2:
        return {}
    table = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return {name: int(table[name]) for name in wanted if name in table}


def softnet_dropped() -> int:
    """Packets dropped because a CPU's backlog was full (/proc/net/softnet_stat, 2nd column, all CPUs)."""
    total = 0
    for line in Path("/proc/net/softnet_stat").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1:
            total += int(fields[1], 16)
    return total


def session_pids(sid: int) -> list[int]:
    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid:
                out.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return out


# ------------------------------------------------------------------------------------------ the run
class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.time()
        self.deadline = time.monotonic() + args.time_limit
        self.samples: list[dict[str, Any]] = []
        self.established = 0  # from the load generator's progress lines
        self.failed = 0
        self.phase = "start"
        self.stop_sampling = threading.Event()
        self.server: subprocess.Popen | None = None
        self.loadgen: subprocess.Popen | None = None
        self.cpu: CpuSampler | None = None
        self.events: list[tuple[float, str]] = []
        self.report: dict[str, Any] = {}
        self.result: dict[str, Any] = {}
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def mark(self, what: str) -> None:
        self.events.append((round(time.time() - self.t0, 2), what))
        self.phase = what
        log(what)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # -- sampling -----------------------------------------------------------------------------
    def read_loadgen_stderr(self, stream: Any) -> None:
        pattern = re.compile(r"established (\d+) failed (\d+)")
        with (self.workdir / "loadgen.log").open("w") as out:
            for line in stream:
                out.write(line)
                m = pattern.search(line)
                if m:
                    self.established, self.failed = int(m.group(1)), int(m.group(2))

    def sample_loop(self) -> None:
        next_stats = next_partial = 0.0
        prev_t, prev_busy = time.time(), core_busy()
        while not self.stop_sampling.is_set():
            now = time.time()
            busy = core_busy()
            cores = [
                round(100 * (busy[c] - prev_busy.get(c, busy[c])) / (now - prev_t), 1) if now > prev_t else None
                for c in sorted(busy, key=lambda c: int(c[4:]))
            ]
            cpu = self.cpu
            shares = {name: cpu.percent(name, prev_t, now) for name in ("server", "loadgen")} if cpu is not None else {}
            prev_t, prev_busy = now, busy
            k = kernel_snapshot()
            sample: dict[str, Any] = {
                "t": round(now - self.t0, 2),
                "phase": self.phase,
                "loadgen_established": self.established,
                "loadgen_failed": self.failed,
                "tcp_inuse": k.get("tcp_inuse"),
                "tcp_mem_pages": k.get("tcp_mem"),
                "mem_available": k["mem_available"],
                "slab": k["slab"],
                "softnet_dropped": softnet_dropped(),
                "nf_conntrack_count": k["nf_conntrack_count"],
                "tcp_drops": tcp_drops(),
                "loadavg": os.getloadavg()[0],
                "core_busy_pct": cores,
                "server_cpu_pct": shares.get("server"),
                "loadgen_cpu_pct": shares.get("loadgen"),
            }
            # /stats walks every worker's descriptor table (a million entries at the end of the ramp, seconds of
            # CPU): only during the ramp, every 30 s. In a 1M run that polled it every 10 s through the hold, the
            # requests piled up behind each other and /metrics at the end of the hold timed out.
            if self.phase == "ramp" and now >= next_stats and self.server is not None:
                next_stats = now + 30.0
                s = stats(self.args.port)
                if s:
                    per_worker = [w["connections"] for w in s["workers"]]
                    sample["server_connections"] = s["total"]["connections"]
                    sample["server_max_per_worker"] = max(per_worker) if per_worker else 0
            self.samples.append(sample)
            if now >= next_partial:
                next_partial = now + 15.0
                self.write_partial()
            self.stop_sampling.wait(2.0)

    def write_partial(self) -> None:
        """The result so far, so that even a run killed outright leaves its ramp behind."""
        partial = {**self.result, "partial": True, "samples": list(self.samples), "events": list(self.events)}
        tmp = self.args.out.with_name(self.args.out.name + ".tmp")
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(partial, indent=1, default=str) + "\n")
            os.replace(tmp, self.args.out)
        except (OSError, TypeError, ValueError) as exc:
            log(f"could not write the partial result: {exc}")

    # -- steps ----------------------------------------------------------------------------------
    def preflight(self) -> dict[str, Any]:
        args = self.args
        n = args.connections
        busy = busy_pct_over(3.0)
        info = meminfo()
        need = n * (KERNEL_PER_PAIR + USER_PER_CONN)
        per_worker = n / args.workers
        per_proc = n / args.procs
        pre = {
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "cpu_busy_pct_before": busy,
            "mem_available": info.get("MemAvailable", 0),
            "memory_estimate": need,
            "connections_per_worker": round(per_worker),
            "connections_per_loadgen_proc": round(per_proc),
            "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        }
        problems = []
        if per_worker > 19_000:
            problems.append(f"{per_worker:.0f} connections per worker > 19 000: raise --workers")
        if per_proc > 18_999:
            problems.append(f"{per_proc:.0f} connections per load generator process > 18 999: raise --procs")
        if info.get("MemAvailable", 0) < need:
            problems.append(
                f"MemAvailable {info.get('MemAvailable', 0) / 2**30:.1f} GiB < estimate {need / 2**30:.1f} GiB"
            )
        if busy > args.max_busy:
            problems.append(f"the CPUs are {busy} % busy (> {args.max_busy}): another heavy run is going on")
        if port_accepts("127.0.0.1", args.port):
            problems.append(f"port {args.port} is in use")
        pre["problems"] = problems
        log(f"preflight: {json.dumps(pre)}")
        return pre

    def apply_sysctls(self) -> list[dict[str, Any]]:
        n, sources = self.args.connections, len(self.sources())
        out = []
        for name, wanted, why in kernel_settings(n, sources):
            current = sysctl_get(name)
            entry: dict[str, Any] = {"name": name, "found": current, "needed": wanted, "why": why, "set": False}
            if needs_raise(name, current, wanted) and not self.args.no_sysctl:
                value = value_to_set(name, wanted)
                entry["set"] = sysctl_set(name, value)
                if entry["set"]:
                    log(f"sysctl -w {name}='{value}' (was {current}): {why}")
            entry["now"] = sysctl_get(name)
            out.append(entry)
        for name in (
            "net.netfilter.nf_conntrack_max",
            "net.ipv4.tcp_mem",
            "fs.nr_open",
            "fs.epoll.max_user_watches",
            "net.ipv4.tcp_max_orphans",
            "net.ipv4.tcp_max_tw_buckets",
        ):
            out.append({"name": name, "found": sysctl_get(name), "set": False, "now": sysctl_get(name)})
        return out

    def restore_sysctls(self, settings: list[dict[str, Any]]) -> None:
        for entry in settings:
            if entry.get("set") and entry["found"] is not None:
                if sysctl_set(entry["name"], entry["found"]):
                    entry["restored"] = True
                    log(f"restored {entry['name']}={entry['found']}")

    def sources(self) -> list[str]:
        from benchmarks.loadgen.cli import parse_sources

        return parse_sources(self.args.sources)

    def server_cmd(self) -> list[str]:
        a = self.args
        return [
            sys.executable,
            "-m",
            "millionws",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(a.port),
            "--workers",
            str(a.workers),
            "--ping-interval",
            str(a.ping_interval),
            "--ping-timeout",
            str(a.ping_timeout),
            "--handshake-timeout",
            "30",
            "--timer-resolution",
            str(a.timer_resolution),
            "--log-level",
            "warning",
            *shlex.split(a.server_args),
        ]

    def loadgen_cmd(self, ready: Path, report: Path) -> list[str]:
        a = self.args
        return [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "idle",
            "--url",
            f"ws://127.0.0.1:{a.port}/echo",
            "--connections",
            str(a.connections),
            "--procs",
            str(a.procs),
            "--sources",
            a.sources,
            *(
                [
                    "--adaptive",
                    "--window-max",
                    str(a.window_max),
                    "--latency-target-ms",
                    str(a.latency_target_ms),
                ]
                if a.ramp == "adaptive"
                else ["--max-pending", str(a.max_pending)]
            ),
            "--rate",
            str(a.rate),
            "--connect-timeout",
            "30",
            "--close",
            "rst",
            "--hold",
            str(a.hold_cap),
            "--ready-file",
            str(ready),
            "--verify-ping",
            "--verify-timeout",
            str(a.verify_timeout),
            "--verify-window",
            str(a.verify_window),
            "--close-timeout",
            str(a.close_timeout),
            "--duration",
            str(max(60, int(self.remaining() - 60))),
            "--json-out",
            str(report),
        ]

    def start_server(self) -> dict[str, Any]:
        cmd = self.server_cmd()
        log(f"$ {shlex.join(cmd)}")
        with (self.workdir / "server.log").open("wb") as out:
            self.server = subprocess.Popen(
                cmd,
                cwd=servers.SERVER_CWD,  # a snapshot of millionws/ (see main)
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ok = wait_until(lambda: self.server.poll() is not None or port_accepts("127.0.0.1", self.args.port), 60)
        if not ok or self.server.poll() is not None:
            raise RuntimeError(f"server did not start: see {self.workdir / 'server.log'}")

        def all_workers() -> bool:
            if self.server.poll() is not None:
                raise RuntimeError(f"server exited with {self.server.returncode}: see server_log_tail")
            s = stats(self.args.port)
            return bool(s) and sum(1 for w in s["workers"] if w["pid"]) == self.args.workers

        if not wait_until(all_workers, 60, 0.5):
            raise RuntimeError("not every worker came up")
        return {"command": shlex.join(cmd), "pid": self.server.pid}

    def memory_reading(self) -> dict[str, Any]:
        assert self.server is not None
        reading: dict[str, Any] = {"t": round(time.time() - self.t0, 2)}
        reading["server"] = tree_memory(self.server.pid)
        if self.loadgen is not None and self.loadgen.poll() is None:
            reading["loadgen"] = tree_memory(self.loadgen.pid)
        reading["kernel"] = kernel_snapshot()
        return reading

    def run(self) -> dict[str, Any]:
        args = self.args
        result: dict[str, Any] = {
            "scenario": "million",
            "command": shlex.join([sys.executable, "-m", "benchmarks.million", *args.argv]),
            "machine": machine(),
            "fd_limit_note": FD_LIMIT_NOTE,
            "settings": {
                "connections": args.connections,
                "workers": args.workers,
                "loadgen_procs": args.procs,
                "sources": args.sources,
                "source_count": len(self.sources()),
                "ramp": args.ramp,
                "rate": args.rate,
                "max_pending_per_proc": args.max_pending if args.ramp == "fixed" else None,
                "window_max": args.window_max if args.ramp == "adaptive" else None,
                "latency_target_ms": args.latency_target_ms if args.ramp == "adaptive" else None,
                "ping_interval": args.ping_interval,
                "timer_resolution": args.timer_resolution,
                "ping_timeout": args.ping_timeout,
                "idle_window_s": args.idle_window,
                "time_limit_s": args.time_limit,
            },
        }
        self.result = result
        pre = result["preflight"] = self.preflight()
        if pre["problems"] and not args.force:
            result["ok"] = False
            result["error"] = "preflight: " + "; ".join(pre["problems"])
            return result
        settings = result["sysctl"] = self.apply_sysctls()
        conntrack = result["conntrack"] = (
            exempt_loopback_from_conntrack(args.connections) if not args.no_sysctl else {"applied": False}
        )
        report_path = self.workdir / "loadgen.json"
        report_path.unlink(missing_ok=True)
        sampler = threading.Thread(target=self.sample_loop, daemon=True)
        try:
            self.mark("server-start")
            result["server"] = self.start_server()
            time.sleep(2)
            baseline = self.memory_reading()
            result["memory_before"] = baseline
            drops_before = softnet_dropped()
            tcp_drops_before = tcp_drops()

            ready = self.workdir / "ready.json"
            for p in (ready, Path(str(ready) + ".done")):
                p.unlink(missing_ok=True)
            cmd = self.loadgen_cmd(ready, report_path)
            result["loadgen_command"] = shlex.join(cmd)
            log(f"$ {shlex.join(cmd)}")
            self.mark("ramp")
            t_ramp = time.time()
            self.loadgen = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            threading.Thread(target=self.read_loadgen_stderr, args=(self.loadgen.stderr,), daemon=True).start()
            self.cpu = CpuSampler({"server": self.server.pid, "loadgen": self.loadgen.pid}, interval=2.0)
            self.cpu.__enter__()
            sampler.start()

            # what must fit after the ramp: idle window, hold to the last ping, verify + close, cleanup
            reserve = args.idle_window + args.ping_interval + args.ping_margin + 150
            budget = max(60.0, self.remaining() - reserve)
            if not wait_until(lambda: ready.exists() or self.loadgen.poll() is not None, budget, 1.0):
                self.mark("ramp-timeout")
                result["error"] = f"not all connections settled within {budget:.0f} s"
            if ready.exists():
                info = json.loads(ready.read_text())
                t_ready = time.time()
                self.mark(f"all settled: established {info['established']} failed {info['failed']}")
                result["ramp"] = {
                    "established": info["established"],
                    "failed": info["failed"],
                    "seconds": round(t_ready - t_ramp, 1),
                    "rate_per_s": round(info["established"] / (t_ready - t_ramp), 1),
                    "cpu_server_pct": self.cpu.percent("server", t_ramp, t_ready),
                    "cpu_loadgen_pct": self.cpu.percent("loadgen", t_ramp, t_ready),
                    "core_busy_pct": [
                        self.cpu.percent(f"core{i}", t_ramp, t_ready) for i in range(os.cpu_count() or 1)
                    ],
                    "softnet_dropped": softnet_dropped() - drops_before,
                    # machine-wide: another tenant's run would count here too
                    "tcp_drops": {k: v - tcp_drops_before.get(k, 0) for k, v in tcp_drops().items()},
                }
                time.sleep(5)
                self.mark("memory-reading")
                held = self.memory_reading()
                result["memory_held"] = held
                result["memory_per_conn"] = self.per_conn(baseline, held, info["established"])
                log(f"memory per connection: {json.dumps(result['memory_per_conn'])}")
                s = stats(args.port)
                if s:
                    result["server_stats_held"] = {
                        "connections": s["total"]["connections"],
                        "per_worker_max": max(w["connections"] for w in s["workers"]),
                        "per_worker_min": min(w["connections"] for w in s["workers"]),
                        "fds_max": max((w["fds"] or 0) for w in s["workers"]),
                    }
                    log(f"server: {json.dumps(result['server_stats_held'])}")
                # CPU while idle: nothing but the server's keepalive pings and the answers to them.
                self.mark("idle-window")
                t_idle = time.time()
                time.sleep(args.idle_window)
                t_idle_end = time.time()
                self.phase = "hold"
                result["idle_cpu"] = {
                    "window_s": round(t_idle_end - t_idle, 1),
                    "ping_interval_s": args.ping_interval,
                    "pings_per_s_expected": round(info["established"] / args.ping_interval, 1),
                    "server_pct_of_one_core": self.cpu.percent("server", t_idle, t_idle_end),
                    "loadgen_pct_of_one_core": self.cpu.percent("loadgen", t_idle, t_idle_end),
                    "core_busy_pct": [
                        self.cpu.percent(f"core{i}", t_idle, t_idle_end) for i in range(os.cpu_count() or 1)
                    ],
                }
                log(f"idle CPU: {json.dumps(result['idle_cpu'])}")
                # Every connection must have had the time to be pinged (and to time out if it did not answer).
                last_open = t_ready
                wait_more = last_open + args.ping_interval + args.ping_margin - time.time()
                if wait_more > 0:
                    self.mark(f"hold {wait_more:.0f} s more so every connection is pinged")
                    time.sleep(wait_more)
                result["metrics_end_of_hold"] = self.pick_metrics()
                log(f"metrics: {json.dumps(result['metrics_end_of_hold'])}")
                self.mark("verify-and-close")
                Path(str(ready) + ".done").touch()
            wait_until(lambda: self.loadgen.poll() is not None, max(30.0, self.remaining() - 90), 1.0)
            self.mark("loadgen-finished" if self.loadgen.poll() is not None else "loadgen-timeout")
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, or `timeout --signal=INT` of just bench-million
            self.mark("interrupted")
            result["error"] = "interrupted before the end (time limit or signal)"
        except (RuntimeError, OSError, ValueError) as exc:
            self.mark(f"failed: {exc}")
            result["error"] = str(exc)
            log_path = self.workdir / "server.log"
            if log_path.exists():
                result["server_log_tail"] = log_path.read_text(errors="replace")[-3000:]
        finally:
            self.stop_sampling.set()
            if self.cpu is not None:
                self.cpu.__exit__(None, None, None)
            result["cleanup"] = self.cleanup()
            self.restore_sysctls(settings)
            restore_conntrack(conntrack)
        if self.loadgen is not None and report_path.exists():
            result["loadgen_report"] = json.loads(report_path.read_text())
            self.ramp_summary(result)
        result["samples"] = self.samples
        result["events"] = self.events
        result["verdict"] = self.verdict(result)
        result["ok"] = result["verdict"]["ok"]
        return result

    @staticmethod
    def ramp_summary(result: dict[str, Any]) -> None:
        """The load generator's view of the ramp next to ours: its rate, handshake latency and window."""
        rep = result["loadgen_report"]
        ramp = result.setdefault("ramp", {})
        connect = rep.get("connect", {})
        ramp["loadgen_rate_per_s"] = connect.get("rate_per_s")
        ramp["loadgen_elapsed_s"] = connect.get("elapsed_s")
        ramp["handshake_ms"] = connect.get("handshake_ms")
        window = rep.get("ramp")
        if window:
            ramp["window"] = {k: v for k, v in window.items() if k != "trace"}
            result["ramp_window_trace"] = window.get("trace")

    def pick_metrics(self) -> dict[str, Any] | None:
        # a scrape reads every worker's open descriptors (psutil): seconds at a million; one retry
        m = metrics_sum(self.args.port, 60.0) or metrics_sum(self.args.port, 60.0)
        if m is None:
            return None
        keep = {}
        for key, value in m.items():
            if (
                key.startswith(
                    (
                        "millionws_connections_active",
                        "millionws_disconnections_total",
                        "millionws_handshake_failures_total",
                        "millionws_connections_accepted_total",
                        "millionws_accept_errors_total",
                        "millionws_worker_restarts_total",
                    )
                )
                and value
            ):
                keep[key] = value
        return keep

    @staticmethod
    def per_conn(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
        if not n:
            return {}
        s0, s1, k0, k1 = before["server"], after["server"], before["kernel"], after["kernel"]
        out = {
            "server_pss": round((s1["pss"] - s0["pss"]) / n, 1),
            "server_pss_anon": round((s1["pss_anon"] - s0["pss_anon"]) / n, 1),
            "server_rss": round((s1["rss"] - s0["rss"]) / n, 1),
            "server_uss": round((s1["uss"] - s0["uss"]) / n, 1),
            "kernel_slab_per_pair": round((k1["slab"] - k0["slab"]) / n, 1),
            # both ends are the same objects (TCP sock, inode, dentry, file, epoll item): half is one end's
            "kernel_slab_per_end": round((k1["slab"] - k0["slab"]) / n / 2, 1),
            "kernel_sunreclaim_per_pair": round((k1["sunreclaim"] - k0["sunreclaim"]) / n, 1),
            "kernel_slab_sockets_per_pair": round((k1["slab_sockets"] - k0["slab_sockets"]) / n, 1),
            "kernel_slab_caches_per_pair": {
                name: round((k1["slab_caches"].get(name, 0) - k0["slab_caches"].get(name, 0)) / n, 1)
                for name in k1["slab_caches"]
            },
            "machine_used_per_pair": round((k0["mem_available"] - k1["mem_available"]) / n, 1),
        }
        if "loadgen" in after:
            out["loadgen_pss"] = round(after["loadgen"]["pss"] / n, 1)
        out["totals_gib"] = {
            "server_pss": round(s1["pss"] / 2**30, 3),
            "server_rss": round(s1["rss"] / 2**30, 3),
            "loadgen_pss": round(after.get("loadgen", {}).get("pss", 0) / 2**30, 3),
            "slab": round(k1["slab"] / 2**30, 3),
            "machine_used": round((k0["mem_available"] - k1["mem_available"]) / 2**30, 3),
            "mem_available_left": round(k1["mem_available"] / 2**30, 3),
        }
        return out

    def cleanup(self) -> dict[str, Any]:
        """Stop the load generator and the server and make sure nothing of either session is left.

        Bounded (about 2 minutes at worst) and deaf to further Ctrl-C / SIGTERM, so that a second signal
        cannot leave two million sockets' worth of processes behind.
        """
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        self.mark("cleanup")
        out: dict[str, Any] = {}
        for name, proc, timeout in (("loadgen", self.loadgen, 45.0), ("server", self.server, 30.0)):
            if proc is None:
                continue
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    stop_process(proc, 1)
            stop_process(proc, 5)
            left = wait_until(lambda p=proc: not session_pids(p.pid), 15, 0.5)
            out[name] = {"exit": proc.returncode, "session_empty": left}
            if not left:
                for pid in session_pids(proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                out[name]["killed_leftovers"] = True
        # the kernel takes a while to free two million sockets
        wait_until(lambda: (tcp_sockstat().get("tcp_inuse") or 0) < 50_000, 30, 1.0)
        out["tcp_after"] = tcp_sockstat()
        out["mem_available_after"] = meminfo().get("MemAvailable", 0)
        self.mark("cleaned up")
        return out

    def verdict(self, result: dict[str, Any]) -> dict[str, Any]:
        """Did a million connections hold, and what bound the run."""
        n = self.args.connections
        rep = result.get("loadgen_report") or {}
        idle = rep.get("idle", {})
        pinged = idle.get("server_pinged", {})
        verify = idle.get("verify", {})
        metrics = result.get("metrics_end_of_hold") or {}
        timeouts = sum(
            v for k, v in metrics.items() if k.startswith("millionws_disconnections_total") and 'reason="timeout"' in k
        )
        active = metrics.get("millionws_connections_active")
        checks = {
            "all_established": rep.get("connections", {}).get("established") == n,
            "no_failure": bool(rep) and not rep.get("failures"),
            "no_drop": bool(rep) and not rep.get("drops"),
            "server_active_at_end_of_hold": active == n,
            "every_connection_answered_a_server_ping": pinged.get("connections_pinged") == n
            and pinged.get("open_at_stop") == n,
            "no_keepalive_timeout_on_server": timeouts == 0 and bool(metrics),
            "every_connection_answered_our_ping": verify.get("pongs") == n and verify.get("missing") == 0,
            "cleanup_complete": all(
                v.get("session_empty", False)
                for k, v in result.get("cleanup", {}).items()
                if isinstance(v, dict) and "session_empty" in v
            ),
        }
        bound: list[str] = []
        ramp = result.get("ramp") or {}
        cores = ramp.get("core_busy_pct") or []
        if cores and None not in cores:
            busy = "/".join(f"{c:.0f}" for c in cores)
            window = ramp.get("window") or {}
            pacing = (
                f"the adaptive window (median {window.get('window_median')} handshakes in flight, p90 target "
                f"{window.get('target_p90_ms')} ms)"
                if self.args.ramp == "adaptive"
                else f"--rate {self.args.rate:g} over all load generator processes"
            )
            limit = "CPU (both cores saturated)" if min(cores) >= 90 else f"the pacing ({pacing}), CPU not saturated"
            bound.append(
                f"ramp speed: {limit}: {ramp.get('rate_per_s')} connections/s with cores {busy} % busy (server "
                f"{ramp.get('cpu_server_pct')} %, load generator {ramp.get('cpu_loadgen_pct')} % of one core; the "
                "rest is kernel TCP work of both ends and other tenants)"
            )
        mem = result.get("memory_per_conn", {}).get("totals_gib", {})
        if mem:
            bound.append(
                f"memory: {mem.get('machine_used')} GiB used by the run, {mem.get('mem_available_left')} GiB still "
                f"available; slab {mem.get('slab')} GiB (both ends of every loopback connection), server PSS "
                f"{mem.get('server_pss')} GiB, load generator PSS {mem.get('loadgen_pss')} GiB"
            )
        held = result.get("server_stats_held") or {}
        if held:
            bound.append(
                f"descriptors: at most {held.get('per_worker_max')} connections ({held.get('fds_max')} fds) in one "
                f"worker against the 20 000 open-files limit per process: that limit is why there are "
                f"{self.args.workers} workers"
            )
        return {"ok": all(checks.values()), "checks": checks, "bound": bound}


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    samples = result.get("samples") or []
    if not samples:
        return
    t = [s["t"] for s in samples]
    trace = result.get("ramp_window_trace") or []
    panels = 4 if trace else 3
    fig, axes = plt.subplots(
        panels, 1, figsize=(10, 11 if trace else 9), sharex=True, height_ratios=(3, 2, 1.6, 1.4)[-panels:]
    )
    ax1, ax2, ax4 = axes[0], axes[1], axes[-1]
    ax1.plot(t, [s["loadgen_established"] for s in samples], label="established (load generator, while opening)")
    ax1.plot(t, [((s["tcp_inuse"] or 0) / 2) for s in samples], label="TCP sockets in use / 2", alpha=0.7)
    st = [(s["t"], s["server_connections"]) for s in samples if "server_connections" in s]
    if st:
        ax1.plot([x for x, _ in st], [y for _, y in st], "o", ms=3, label="open WebSockets (server /stats)")
    ax1.set_ylabel("connections")
    ax1.set_title(
        f"{result['settings']['connections']:,} idle WebSockets: ramp and hold "
        f"({result['settings']['workers']} workers, {result['settings']['loadgen_procs']} load generator "
        f"processes, server pings every {result['settings']['ping_interval']:g} s)",
        fontsize=10,
    )
    for when, what in result.get("events", []):
        if what.startswith(("ramp", "idle-window", "verify", "cleanup")):
            ax1.axvline(when, color="grey", ls=":", lw=0.8)
            ax1.text(when, ax1.get_ylim()[1] * 0.02, what.split(":")[0], rotation=90, fontsize=7, color="grey")
    ax1.legend(fontsize=8)
    mem_total = result["machine"]["mem_total_bytes"]
    ax2.plot(t, [(mem_total - s["mem_available"]) / 2**30 for s in samples], label="memory used (GiB)")
    ax2.plot(t, [s["slab"] / 2**30 for s in samples], label="kernel slab (GiB)")
    ax2.set_ylabel("GiB")
    ax2.legend(loc="upper left", fontsize=8)
    if trace:
        # the trace's clock starts with the load generator, at the "ramp" event of ours
        start = next((when for when, what in result.get("events", []) if what == "ramp"), 0.0)
        ax3 = axes[2]
        tt = [start + row[0] for row in trace]
        ax3.plot(tt, [row[1] for row in trace], label="window (handshakes allowed in flight)")
        ax3.plot(tt, [row[2] for row in trace], label="in flight", alpha=0.6)
        ax3.set_ylabel("handshakes")
        ax3.legend(loc="upper left", fontsize=8)
        ax3b = ax3.twinx()
        ax3b.plot(tt, [row[3] if row[3] >= 0 else None for row in trace], color="tab:red", lw=0.7, label="p90 ms")
        ax3b.set_ylabel("p90 handshake ms", color="tab:red")
    ncores = len(samples[-1].get("core_busy_pct") or [])
    for i in range(ncores):
        ax4.plot(t, [(s.get("core_busy_pct") or [None] * ncores)[i] for s in samples], label=f"core {i} busy %")
    ax4.set_ylim(0, 105)
    ax4.set_ylabel("CPU %")
    ax4.set_xlabel("seconds since start")
    ax4.legend(loc="upper left", fontsize=8)
    m = result["machine"]
    fig.text(
        0.01,
        0.01,
        f"{m['cpus']} x {m['cpu_model']}, {m['mem_total_bytes'] / 2**30:.0f} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}, commit {m['git_commit'][:10]}, {m['date']}",
        fontsize=6,
        color="grey",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.million", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=55, help="server workers (<= 19 000 connections each)")
    parser.add_argument("--procs", type=int, default=0, help="load generator processes (default ceil(N / 18 000))")
    parser.add_argument("--sources", default="127.0.0.2-127.0.0.201", help="loopback source addresses")
    parser.add_argument(
        "--ramp",
        choices=("adaptive", "fixed"),
        default="adaptive",
        help="adaptive: a window of handshakes in flight that follows their latency; fixed: --rate and --max-pending",
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="new connections per second: adaptive: a ceiling (0 = none)"
    )
    parser.add_argument("--max-pending", type=int, default=64, help="fixed: handshakes in flight per process")
    parser.add_argument("--window-max", type=int, default=1024, help="adaptive: handshakes in flight, all processes")
    parser.add_argument("--latency-target-ms", type=float, default=500.0, help="adaptive: p90 handshake latency")
    parser.add_argument("--ping-interval", type=float, default=180.0, help="server keepalive ping interval (s)")
    parser.add_argument(
        "--timer-resolution",
        type=float,
        default=1.0,
        help="server timer wheel tick (s): 1.0 sends each worker's due pings once a second, in one batch",
    )
    parser.add_argument("--server-args", default="", help="more options for millionws serve, shell-quoted")
    parser.add_argument(
        "--ping-margin",
        type=float,
        default=25.0,
        help="hold this long beyond one ping interval after the last connection opened",
    )
    parser.add_argument("--idle-window", type=float, default=60.0, help="seconds of CPU measurement while idle")
    parser.add_argument("--verify-timeout", type=float, default=360.0)
    parser.add_argument(
        "--verify-window",
        type=int,
        default=2048,
        help="the load generator's own pings outstanding at once, all processes (all at once: a storm)",
    )
    parser.add_argument("--close-timeout", type=float, default=90.0)
    parser.add_argument(
        "--ping-timeout",
        type=float,
        default=None,
        help="server's pong deadline (default 20 s, or the interval if shorter: the ping period is the larger)",
    )
    parser.add_argument(
        "--time-limit", type=float, default=17 * 60, help="the run before cleanup (<= 2 min more), seconds"
    )
    parser.add_argument("--port", type=int, default=18900)
    parser.add_argument(
        "--max-busy", type=float, default=50.0, help="refuse to start if the CPUs are busier than this (%%, over 3 s)"
    )
    parser.add_argument("--force", action="store_true", help="start despite preflight problems")
    parser.add_argument("--no-sysctl", action="store_true", help="only check kernel settings, never set them")
    parser.add_argument("--out", type=Path, default=RESULTS / "million.json")
    parser.add_argument("--workdir", default="/tmp/millionws-million")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.procs:
        args.procs = math.ceil(args.connections / 18_000)
    if args.ping_timeout is None:
        args.ping_timeout = min(20.0, args.ping_interval) if args.ping_interval > 0 else 20.0
    # the load generator's own hold only bounds it: this driver ends the hold through READY.done
    args.hold_cap = int(args.time_limit)
    run = Run(args)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    snapshot = servers.use_snapshot()
    log(f"the server runs a snapshot of millionws/ taken now: {snapshot}")
    try:
        result = run.run()
    finally:
        servers.remove_snapshot()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    plot(result, args.out.with_suffix(".png"))
    verdict = result.get("verdict", {})
    for name, passed in verdict.get("checks", {}).items():
        log(f"{'PASS' if passed else 'FAIL'} {name}")
    for line in verdict.get("bound", []):
        log(f"bound: {line}")
    if result.get("error"):
        log(f"error: {result['error']}")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
