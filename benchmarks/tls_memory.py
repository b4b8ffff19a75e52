"""TLS memory research for issue 11: what an idle server-side TLS connection costs, and how far below it one can go.

    python benchmarks/tls_memory.py all --quick           # everything, ~5 min (1 000 connections for PSS)
    python benchmarks/tls_memory.py all                   # everything, ~15 min (10 000 connections for PSS)
    python benchmarks/tls_memory.py breakdown             # OpenSSL allocations per idle connection, by file:line
    python benchmarks/tls_memory.py cpu                   # µs per 64 B echo: SSLObject vs detached record layer
    python benchmarks/tls_memory.py pss --connections 10000 --kinds plain,sslobject,detached,picows,websockets
    ~/.pyenv/versions/3.12.1/bin/python benchmarks/tls_memory.py ktls   # kernel TLS probe (Python >= 3.12)

breakdown: one fresh process per variant. Before ``ssl`` is imported it loads the libcrypto that ``_ssl`` links
against and installs ``CRYPTO_set_mem_functions`` callbacks from a tiny C library compiled here (gcc), which
record every live OpenSSL allocation with the file:line OpenSSL passes. Connections are handshaken in memory
(SSLObject + MemoryBIO pairs), one 64 B message each way; the client halves are freed; the live allocations
that are left, minus a baseline, divided by N, are what an idle server-side connection holds. Python objects
are measured with tracemalloc in the same run (they live in pymalloc arenas that mallinfo2 does not see).

pss: the GUIDE §4 method. Each server kind runs in its own process (an epoll reactor of this file for
plain/sslobject/detached, picows and websockets with an ``ssl`` context), a separate client process opens N
WebSocket connections (wss except for ``plain``); PSS of the server is read before and once all are open;
every connection is then verified with one echo. Certificates are ECDSA P-256, made on the fly.

The detached record layer is a research prototype: benchmarks/tls_detached_prototype.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import ctypes
import datetime
import gc
import hashlib
import importlib.util
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

# --------------------------------------------------------------------------------------------------------------
# certificates and contexts


def make_cert(directory: str | Path, kind: str = "ecdsa") -> str:
    """A self-signed certificate + key for localhost/127.0.0.1 in one PEM file; returns its path."""
    import ipaddress

    try:
        from cryptography import x509
    except ImportError:  # e.g. a pyenv Python without it (the kTLS probe): the openssl command does the same
        return _make_cert_cli(directory, kind)
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    path = Path(directory) / f"{kind}.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(path)


def _make_cert_cli(directory: str | Path, kind: str) -> str:
    path = Path(directory) / f"{kind}.pem"
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if kind == "ecdsa" else ["-newkey", "rsa:2048"]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            *key,
            "-nodes",
            "-keyout",
            f"{path}.key",
            "-out",
            f"{path}.crt",
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    path.write_bytes(Path(f"{path}.crt").read_bytes() + Path(f"{path}.key").read_bytes())
    return str(path)


def ssl_libs() -> dict[str, str]:
    """soname -> path of the libssl/libcrypto that this Python's _ssl links against (found without loading it)."""
    origin = importlib.util.find_spec("_ssl").origin
    out = subprocess.run(["ldd", origin], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: line.split()[2] for line in out.splitlines() if "=>" in line}


def ctx_ptr(ctx: ssl.SSLContext) -> int:
    """SSL_CTX* of an SSLContext: PySSLContext is PyObject_HEAD (16 bytes) then ``SSL_CTX *ctx`` (CPython 3.11)."""
    return ctypes.c_void_p.from_address(id(ctx) + 16).value


def ssl_ptr(sslobj: ssl.SSLObject) -> int:
    """SSL* of an SSLObject: PySSLSocket is PyObject_HEAD, ``PyObject *Socket``, then ``SSL *ssl`` (CPython 3.11)."""
    return ctypes.c_void_p.from_address(id(sslobj._sslobj) + 24).value


def versions() -> dict[str, Any]:
    from importlib import metadata

    pkgs = {}
    for name in ("cryptography", "picows", "websockets", "psutil"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    return {
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "packages": pkgs,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg": os.getloadavg(),
    }


# --------------------------------------------------------------------------------------------------------------
# in-memory handshakes


def pump(server: ssl.SSLObject, si: ssl.MemoryBIO, so: ssl.MemoryBIO, client: ssl.SSLObject, ci, co) -> None:
    sdone = cdone = False
    while not (sdone and cdone):
        if not cdone:
            try:
                client.do_handshake()
                cdone = True
            except ssl.SSLWantReadError:
                pass
        si.write(co.read())
        if not sdone:
            try:
                server.do_handshake()
                sdone = True
            except ssl.SSLWantReadError:
                pass
        ci.write(so.read())


def detached_handshake(proto: Any, sctx: ssl.SSLContext, tap: Any, client: ssl.SSLObject, ci: ssl.MemoryBIO,
                       co: ssl.MemoryBIO) -> Any:
    """An in-memory handshake between ``client`` and the prototype's server side; its detached record layer."""
    hs = proto.Handshaker(sctx, tap)
    done = False
    while not done:
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        out, done = hs.feed(co.read())
        ci.write(out)
    return hs.detached


def client_ctx(certfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certfile)
    return ctx


# --------------------------------------------------------------------------------------------------------------
# breakdown: OpenSSL allocations by file:line (child process per variant)

MEMTRACK_C = r"""
#include <stdlib.h>
#include <stdint.h>
#include <malloc.h>
typedef struct { void *p; size_t n; const char *file; int line; } ent;
#define CAP (1u << 21)
static ent tab[CAP];
static void *const TOMB = (void *)1;
static size_t h(void *p) {
    uintptr_t x = (uintptr_t)p; x ^= x >> 17; x *= 0x9E3779B97F4A7C15ull; return (x >> 20) & (CAP - 1);
}
static void ins(void *p, size_t n, const char *f, int l) {
    for (size_t i = h(p);; i = (i + 1) & (CAP - 1))
        if (tab[i].p == NULL || tab[i].p == TOMB) {
            tab[i].p = p; tab[i].n = n; tab[i].file = f; tab[i].line = l; return;
        }
}
static void del(void *p) {
    for (size_t i = h(p);; i = (i + 1) & (CAP - 1)) {
        if (tab[i].p == NULL) return;
        if (tab[i].p == p) { tab[i].p = TOMB; return; }
    }
}
void *mt_malloc(size_t n, const char *f, int l) { void *p = malloc(n); if (p) ins(p, n, f, l); return p; }
void *mt_realloc(void *o, size_t n, const char *f, int l) {
    if (o) del(o);
    void *p = realloc(o, n);
    if (p) ins(p, n, f, l); else if (o && n) ins(o, malloc_usable_size(o), f, l);
    return p;
}
void mt_free(void *p, const char *f, int l) { if (p) { del(p); free(p); } }
/* live entries; n becomes the malloc chunk size (usable + 8 bytes of header) */
size_t mt_snapshot(ent *out, size_t max) {
    size_t k = 0;
    for (size_t i = 0; i < CAP && k < max; i++)
        if (tab[i].p != NULL && tab[i].p != TOMB) { out[k] = tab[i]; out[k].n = malloc_usable_size(tab[i].p) + 8; k++; }
    return k;
}
"""

# file:line (OpenSSL 3.0.x as built by Debian 12) -> component; prefixes match file names
COMPONENTS = [
    ("ssl/ssl_lib.c:691", "SSL struct (SSL_new zalloc: s3 state + RECORD_LAYER with 32 pipeline slots)"),
    ("ssl/ssl_lib.c", "other SSL_new allocations"),
    ("providers/implementations/ciphers/cipher_aes_gcm", "AEAD provider ctx x2 (key schedule + GHASH table)"),
    ("providers/implementations/ciphers/cipher_chacha20", "AEAD provider ctx x2 (key schedule + GHASH table)"),
    ("crypto/evp/evp_enc.c", "EVP_CIPHER_CTX x2"),
    ("crypto/buffer/buffer.c:135", "MemoryBIO data buffers (capacity kept after drain)"),
    ("crypto/buffer/buffer.c", "MemoryBIO BIO + BUF_MEM structs"),
    ("crypto/bio/", "MemoryBIO BIO + BUF_MEM structs"),
    ("ssl/ssl_sess.c", "SSL_SESSION"),
    ("crypto/threads_pthread.c", "locks (pthread rwlocks of SSL, session, BIOs, keys)"),
    ("ssl/ssl_cert.c", "CERT (per-SSL copy of the cert config)"),
    ("providers/implementations/digests", "transcript hash / HMAC state (EVP_MD_CTX + SHA state)"),
    ("crypto/evp/digest.c", "transcript hash / HMAC state (EVP_MD_CTX + SHA state)"),
    ("crypto/evp/p_lib.c", "ephemeral key-share keys kept after the handshake (EVP_PKEY + key)"),
    ("crypto/ec/", "ephemeral key-share keys kept after the handshake (EVP_PKEY + key)"),
    ("crypto/x509/x509_vpm.c", "X509_VERIFY_PARAM"),
    ("ssl/t1_lib.c", "shared sigalgs / groups lists"),
    ("ssl/record/", "record-layer read/write buffers"),
    ("ssl/s3_lib.c", "s3 handshake state"),
    ("ssl/statem/", "handshake state machine leftovers"),
]


def component_of(site: str) -> str:
    site = site.removeprefix("../")
    for prefix, name in COMPONENTS:
        if site.startswith(prefix):
            return name
    return "other small (stacks, ex_data, packets, ...)"


VARIANTS: dict[str, dict[str, Any]] = {
    "tls13_default": {"desc": "TLS 1.3, ECDSA P-256, default suite, num_tickets=2 (Python default)"},
    "tls13_t0": {"desc": "TLS 1.3, ECDSA, default suite, num_tickets=0", "tickets": 0},
    "tls13_aes128": {
        "desc": "TLS 1.3, ECDSA, TLS_AES_128_GCM_SHA256, tickets 0",
        "tickets": 0,
        "suite": "TLS_AES_128_GCM_SHA256",
    },
    "tls13_chacha": {
        "desc": "TLS 1.3, ECDSA, TLS_CHACHA20_POLY1305_SHA256, tickets 0",
        "tickets": 0,
        "suite": "TLS_CHACHA20_POLY1305_SHA256",
    },
    "tls13_rsa": {"desc": "TLS 1.3, RSA-2048 cert, default suite, tickets 0", "tickets": 0, "cert": "rsa"},
    "tls12": {"desc": "TLS 1.2, ECDSA, ECDHE-ECDSA-AES128-GCM-SHA256", "tls12": True},
    "tls13_16k": {
        "desc": "TLS 1.3, tickets 0, one 16 KiB message each way instead of 64 B",
        "tickets": 0,
        "msg": 16384,
    },
    "tls13_16k_chunked": {
        "desc": "TLS 1.3, tickets 0, 16 KiB messages fed/written through the BIOs in 4 KiB pieces",
        "tickets": 0,
        "msg": 16384,
        "chunk": 4096,
    },
    "tls13_free_buffers": {
        "desc": "TLS 1.3, tickets 0, then SSL_free_buffers(ssl) via ctypes",
        "tickets": 0,
        "free_buffers": True,
    },
    "tls13_16k_free_buffers": {
        "desc": "TLS 1.3, tickets 0, 16 KiB messages, then SSL_free_buffers",
        "tickets": 0,
        "msg": 16384,
        "free_buffers": True,
    },
    "detached": {
        "desc": "detached record layer (prototype): Detached13 kept, AEAD objects dropped when idle",
        "tickets": 0,
        "detached": True,
    },
    "detached_cached": {
        "desc": "detached record layer (prototype): Detached13 kept with its 2 cached AEAD objects",
        "tickets": 0,
        "detached": True,
        "cache": True,
    },
}


def breakdown_child(variant: str, n: int, certdir: str, memtrack: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: ``ssl`` must not have been imported before the allocator is swapped."""

    class Ent(ctypes.Structure):
        _fields_ = [("p", ctypes.c_void_p), ("n", ctypes.c_size_t), ("file", ctypes.c_char_p), ("line", ctypes.c_int)]

    libs = ssl_libs()
    mt = ctypes.CDLL(memtrack)  # already hooked into libcrypto by CHILD_BOOT
    libssl = ctypes.CDLL(libs["libssl.so.3"])
    libc = ctypes.CDLL("libc.so.6")

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (f, ctypes.c_size_t)
            for f in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    libc.mallinfo2.restype = MallInfo2

    def heap() -> int:
        mi = libc.mallinfo2()
        return mi.uordblks + mi.hblkhd

    import tracemalloc

    from benchmarks import tls_detached_prototype as proto

    v = VARIANTS[variant]
    cert = os.path.join(certdir, f"{v.get('cert', 'ecdsa')}.pem")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert)
    if "tickets" in v:
        sctx.num_tickets = v["tickets"]
    if v.get("tls12"):
        sctx.maximum_version = ssl.TLSVersion.TLSv1_2
        sctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    if v.get("suite"):
        libssl.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        assert libssl.SSL_CTX_set_ciphersuites(ctx_ptr(sctx), v["suite"].encode()) == 1
    tap = proto.KeylogTap(sctx) if v.get("detached") else None
    cctx = client_ctx(cert)
    msg = b"x" * v.get("msg", 64)
    libssl.SSL_free_buffers.argtypes = [ctypes.c_void_p]
    libssl.SSL_ctrl.restype = ctypes.c_long
    libssl.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    libssl.SSL_get_ex_data.restype = ctypes.c_void_p
    libssl.SSL_get_ex_data.argtypes = [ctypes.c_void_p, ctypes.c_int]
    facts: dict[str, Any] = {}
    freed = 0

    def one() -> Any:
        nonlocal freed
        ci, co = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = cctx.wrap_bio(ci, co, server_hostname="localhost")
        if tap is not None:
            det = detached_handshake(proto, sctx, tap, client, ci, co)
            client.write(msg)
            plain, _reply, _eof = det.receive(co.read())
            assert plain == msg
            ci.write(det.send(msg))
            assert client.read(len(msg) + 1) == msg
            if not v.get("cache"):
                det.drop_cache()
            return det
        si, so = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = sctx.wrap_bio(si, so, server_side=True)
        pump(server, si, so, client, ci, co)
        client.write(msg)
        wire = co.read()
        step = v.get("chunk", len(wire))
        got = b""
        for i in range(0, len(wire), step):  # with "chunk": the incoming BIO never holds more than that
            si.write(wire[i : i + step])
            try:
                while True:
                    got += server.read(len(msg))
            except ssl.SSLWantReadError:
                pass
        assert got == msg
        step = v.get("chunk", len(msg))
        for i in range(0, len(msg), step):  # with "chunk": records of at most that much, drained one by one
            server.write(msg[i : i + step])
            ci.write(so.read())
        got = b""
        while len(got) < len(msg):
            got += client.read(len(msg))
        if not facts:
            p = ssl_ptr(server)
            facts["ssl_ptr_verified"] = libssl.SSL_get_ex_data(p, 0) == id(server._sslobj)
            facts["ssl_mode_hex"] = hex(libssl.SSL_ctrl(p, 33, 0, None))  # SSL_CTRL_MODE
            facts["release_buffers_set"] = bool(libssl.SSL_ctrl(p, 33, 0, None) & 0x10)
            facts["version"] = server.version()
            facts["cipher"] = server.cipher()[0]
        if v.get("free_buffers"):
            freed += libssl.SSL_free_buffers(ssl_ptr(server))
        return (server, si, so)

    class Entries(ctypes.Array):
        _type_ = Ent
        _length_ = 1 << 20

    table = Entries()

    def snap() -> tuple[collections.Counter, collections.Counter]:
        k = mt.mt_snapshot(table, len(table))
        size: collections.Counter = collections.Counter()
        count: collections.Counter = collections.Counter()
        for i in range(k):
            e = table[i]
            site = f"{e.file.decode() if e.file else '?'}:{e.line}"
            size[site] += e.n
            count[site] += 1
        return size, count

    warm = [one() for _ in range(5)]  # first-use costs (provider fetches, caches) go to the baseline
    gc.collect()
    tracemalloc.start()
    b_size, b_count = snap()
    b_heap = heap()
    t0 = tracemalloc.get_traced_memory()[0]
    keep = [one() for _ in range(n)]
    gc.collect()
    t1 = tracemalloc.get_traced_memory()[0]
    a_heap = heap()
    a_size, a_count = snap()
    tracemalloc.stop()
    sites = {}
    for site in a_size.keys() | b_size.keys():
        d = (a_size[site] - b_size[site]) / n
        if abs(d) >= 1:
            sites[site] = {"bytes": round(d, 1), "allocs": round((a_count[site] - b_count[site]) / n, 2)}
    comps: collections.Counter = collections.Counter()
    for site, d in sites.items():
        comps[component_of(site)] += d["bytes"]
    openssl = sum(d["bytes"] for d in sites.values())
    python_objs = (t1 - t0) / n
    del warm, keep
    return {
        "variant": variant,
        "desc": v["desc"],
        "connections": n,
        "openssl_bytes_per_conn": round(openssl),
        "openssl_allocs_per_conn": round(sum(d["allocs"] for d in sites.values()), 1),
        "python_bytes_per_conn_tracemalloc": round(python_objs),
        "total_bytes_per_conn": round(openssl + python_objs),
        "mallinfo2_bytes_per_conn": round((a_heap - b_heap) / n),
        "components": dict(sorted(((k, round(b)) for k, b in comps.items()), key=lambda kv: -kv[1])),
        "sites": dict(sorted(sites.items(), key=lambda kv: -kv[1]["bytes"])),
        "ssl_free_buffers_returned_1": freed,
        **facts,
    }


# Runs as ``python -c`` so that nothing imports ssl before OpenSSL's allocator is replaced.
CHILD_BOOT = r"""
import ctypes, importlib.util, subprocess, sys
origin = importlib.util.find_spec("_ssl").origin
ldd = subprocess.run(["ldd", origin], capture_output=True, text=True, check=True).stdout
libs = {line.split()[0]: line.split()[2] for line in ldd.splitlines() if "=>" in line}
mt = ctypes.CDLL(sys.argv[4])
crypto = ctypes.CDLL(libs["libcrypto.so.3"], mode=ctypes.RTLD_GLOBAL)
crypto.CRYPTO_set_mem_functions.argtypes = [ctypes.c_void_p] * 3
if crypto.CRYPTO_set_mem_functions(ctypes.cast(mt.mt_malloc, ctypes.c_void_p),
                                   ctypes.cast(mt.mt_realloc, ctypes.c_void_p),
                                   ctypes.cast(mt.mt_free, ctypes.c_void_p)) != 1:
    raise SystemExit("CRYPTO_set_mem_functions refused: OpenSSL allocated before the hook")
sys.path.insert(0, sys.argv[5])
import json
from benchmarks.tls_memory import breakdown_child
print(json.dumps(breakdown_child(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])))
"""


def build_memtrack(directory: str) -> str:
    src = Path(directory) / "memtrack.c"
    out = Path(directory) / "memtrack.so"
    src.write_text(MEMTRACK_C)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return str(out)


def cmd_breakdown(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    if not shutil.which("gcc"):
        raise SystemExit("breakdown needs gcc (apt-get install -y gcc)")
    memtrack = build_memtrack(workdir)
    for kind in ("ecdsa", "rsa"):
        if not os.path.exists(os.path.join(workdir, f"{kind}.pem")):
            make_cert(workdir, kind)
    results = {}
    for variant in args.variants.split(","):
        out = subprocess.run(
            [sys.executable, "-c", CHILD_BOOT, variant, str(args.conns), workdir, memtrack, str(HERE.parent)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"breakdown child {variant} failed")
        res = json.loads(out.stdout)
        results[variant] = res
        log(
            f"{variant:24s} openssl {res['openssl_bytes_per_conn']:6d} B"
            f" + python {res['python_bytes_per_conn_tracemalloc']:5d}"
            f" B = {res['total_bytes_per_conn']:6d} B/conn  (mallinfo2 {res['mallinfo2_bytes_per_conn']} B)"
        )
    return results


# --------------------------------------------------------------------------------------------------------------
# cpu: µs per 64 B echo (decrypt one record + encrypt one record), in memory


def cmd_cpu(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    from benchmarks import tls_detached_prototype as proto

    cert = (
        make_cert(workdir, "ecdsa")
        if not os.path.exists(os.path.join(workdir, "ecdsa.pem"))
        else os.path.join(workdir, "ecdsa.pem")
    )
    libssl = ctypes.CDLL(ssl_libs()["libssl.so.3"])
    libssl.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    n = args.messages
    msg = b"m" * 64
    results: dict[str, Any] = {}
    for suite in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"):
        sctx, tap = proto.server_context(cert)
        assert libssl.SSL_CTX_set_ciphersuites(ctx_ptr(sctx), suite.encode()) == 1
        cctx = client_ctx(cert)
        # SSLObject path
        si, so, ci, co = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        server = sctx.wrap_bio(si, so, server_side=True)
        client = cctx.wrap_bio(ci, co, server_hostname="localhost")
        pump(server, si, so, client, ci, co)
        records = []
        for _ in range(n):
            client.write(msg)
            records.append(co.read())
        best_ssl = float("inf")
        for _ in range(args.repeat):
            # fresh connection state per repeat is not needed for SSLObject timing: reuse the same records
            si2, so2, ci2, co2 = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
            server = sctx.wrap_bio(si2, so2, server_side=True)
            client = cctx.wrap_bio(ci2, co2, server_hostname="localhost")
            pump(server, si2, so2, client, ci2, co2)
            records = []
            for _ in range(n):
                client.write(msg)
                records.append(co2.read())
            t = time.perf_counter()
            for rec in records:
                si2.write(rec)
                data = server.read(65536)
                server.write(data)
                so2.read()
            best_ssl = min(best_ssl, (time.perf_counter() - t) / n * 1e6)
        # detached path, with and without the per-connection AEAD cache
        tap.take()  # the SSLObject handshakes above logged on the same context: drop their lines
        best_det = {}
        for cache in (True, False):
            proto.CACHE_AEAD = cache
            best = float("inf")
            for _ in range(args.repeat):
                ci3, co3 = ssl.MemoryBIO(), ssl.MemoryBIO()
                client = cctx.wrap_bio(ci3, co3, server_hostname="localhost")
                det = detached_handshake(proto, sctx, tap, client, ci3, co3)
                records = []
                for _ in range(n):
                    client.write(msg)
                    records.append(co3.read())
                replies = []
                t = time.perf_counter()
                for rec in records:
                    data, _reply, _eof = det.receive(rec)
                    replies.append(det.send(data))
                best = min(best, (time.perf_counter() - t) / n * 1e6)
                # correctness: every echo decrypts on the OpenSSL client, in order
                ci3.write(b"".join(replies))
                got = b""
                while len(got) < n * len(msg):
                    got += client.read(1 << 16)
                assert got == msg * n
            best_det[cache] = best
        proto.CACHE_AEAD = True
        # the same AEAD work with the AEAD objects kept (what caching per connection would buy, at ~0.1-2 KB/conn)
        aead_cls, key_len, _h, _hash_len = proto.SUITE_BY_ID[proto.SUITE_IDS[suite]]
        key = os.urandom(key_len)
        aead = aead_cls(key)
        nonce = os.urandom(12)
        hdr = b"\x17\x03\x03\x00\x51"
        ct = aead.encrypt(nonce, msg + b"\x17", hdr)
        t = time.perf_counter()
        for _ in range(n):
            aead.decrypt(nonce, ct, hdr)
            aead.encrypt(nonce, msg + b"\x17", hdr)
        cached = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for _ in range(n):
            aead_cls(key).decrypt(nonce, ct, hdr)
            aead_cls(key).encrypt(nonce, msg + b"\x17", hdr)
        uncached = (time.perf_counter() - t) / n * 1e6
        tap.close()
        results[suite] = {
            "sslobject_us_per_echo": round(best_ssl, 2),
            "detached_cached_aead_us_per_echo": round(best_det[True], 2),
            "detached_uncached_aead_us_per_echo": round(best_det[False], 2),
            "aead_only_cached_objects_us": round(cached, 2),
            "aead_only_new_objects_us": round(uncached, 2),
        }
        log(
            f"{suite:30s} SSLObject {best_ssl:6.2f} µs  detached {best_det[True]:6.2f} µs (AEAD per call "
            f"{best_det[False]:6.2f} µs)  "
            f"(bare AEAD: cached {cached:.2f} µs, constructed per call {uncached:.2f} µs)"
        )
    return results


# --------------------------------------------------------------------------------------------------------------
# servers for the PSS method


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def http_101(request: bytes) -> bytes | None:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + ws_accept(value.strip()) + b"\r\n\r\n"
            )
    return None


class Conn:
    """Per-connection record of the test reactor (millionws style: __slots__, b"" when idle)."""

    __slots__ = ("sock", "state", "tls", "inb", "outb", "buf")

    def __init__(self, sock: socket.socket, tls: Any) -> None:
        self.sock = sock
        self.state = 0  # 0 TLS handshake, 1 HTTP, 2 WebSocket
        self.tls = tls  # None | (SSLObject, in, out) | Handshaker | Detached13
        self.inb = None
        self.outb = None
        self.buf = b""


def serve_reactor(kind: str, host: str, port: int, certfile: str) -> None:
    """plain / sslobject / detached: one epoll loop, echo on /anything, idle connections cost what they hold.

    detached: the AEAD objects a connection caches while it is busy (~2.6 KB each inside cryptography's OpenSSL)
    are dropped by a once-a-second sweep over the connections that did I/O since the previous sweep.

    A ``_trim`` suffix (``detached_trim``): after a second without events, call glibc's ``malloc_trim(0)`` once,
    which hands back the free pages that handshakes left in the middle of the heap (``kept`` memory that a
    long-lived allocation above them pins otherwise).
    """
    from benchmarks import tls_detached_prototype as proto

    trim = kind.endswith("_trim")
    kind = kind.removesuffix("_trim")
    libc = ctypes.CDLL("libc.so.6") if trim else None
    trimmed = True

    ctx = tap = None
    if kind == "sslobject":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile)
        ctx.num_tickets = 0  # same as detached, and what a server that wants little memory would do anyway
    elif kind == "detached":
        ctx, tap = proto.server_context(certfile)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(4096)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns: dict[int, Conn] = {}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("listening", flush=True)

    def send(c: Conn, data: bytes) -> None:
        if not data:
            return
        if c.outb:
            c.outb += data
            return
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            c.outb = data[sent:]
            ep.modify(c.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def seal(c: Conn, data: bytes) -> bytes:
        if kind == "plain":
            return data
        if kind == "sslobject" or isinstance(c.tls, tuple):
            sobj, _inc, out = c.tls
            sobj.write(data)
            return out.read()
        return c.tls.send(data)

    def close(c: Conn) -> None:
        fd = c.sock.fileno()
        conns.pop(fd, None)
        try:
            ep.unregister(fd)
        except OSError:
            pass
        c.sock.close()

    def on_plain(c: Conn, data: bytes) -> bool:
        buf = c.buf + data if c.buf else data
        if c.state == 1:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                c.buf = buf
                return True
            resp = http_101(buf[:end])
            if resp is None:
                return False
            send(c, seal(c, resp))
            c.state = 2
            buf = buf[end + 4 :]
        out = []
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            ln = b1 & 0x7F
            pos = 2
            if ln == 126:
                if len(buf) < 4:
                    break
                ln = struct.unpack_from(">H", buf, 2)[0]
                pos = 4
            elif ln == 127:
                return False
            if len(buf) < pos + 4 + ln:
                break
            mask = buf[pos : pos + 4]
            payload = bytes(x ^ mask[i & 3] for i, x in enumerate(buf[pos + 4 : pos + 4 + ln]))
            buf = buf[pos + 4 + ln :]
            op = b0 & 0x0F
            if op == 8:
                send(c, seal(c, b"\x88\x00"))
                return False
            if op == 9:
                op = 10
            hdr = bytes([0x80 | op, ln]) if ln < 126 else bytes([0x80 | op, 126]) + struct.pack(">H", ln)
            out.append(hdr + payload)
        c.buf = buf
        if out:
            send(c, seal(c, b"".join(out)))
        return True

    def on_readable(c: Conn) -> bool:
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if kind == "plain":
            return on_plain(c, data)
        if kind == "sslobject" or isinstance(c.tls, tuple):
            sobj, inc, out = c.tls
            inc.write(data)
            if c.state == 0:
                try:
                    sobj.do_handshake()
                    c.state = 1
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return False
                send(c, out.read())
                if c.state == 0:
                    return True
            chunks = []
            try:
                while True:
                    chunk = sobj.read(65536)
                    if not chunk:  # close_notify (CPython returns b"" for SSL_ERROR_ZERO_RETURN)
                        return False
                    chunks.append(chunk)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLError):
                return False
            send(c, out.read())
            return on_plain(c, b"".join(chunks)) if chunks else True
        # detached
        if c.state == 0:
            hs = c.tls
            try:
                out, done = hs.feed(data)
            except ssl.SSLError:
                return False
            send(c, out)
            if not done:
                return True
            c.state = 1
            if hs.detached is None:  # TLS 1.2: keep OpenSSL
                c.tls = (hs.sslobj, hs.incoming, hs.outgoing)
                return True
            c.tls = hs.detached
            data = hs.leftover
            if not data:
                return True
        try:
            plain, reply, eof = c.tls.receive(data)
        except proto.TLSAlert as exc:
            send(c, exc.alert)
            return False
        send(c, reply)
        if plain and not on_plain(c, plain):
            return False
        if eof:
            send(c, c.tls.close_notify())
            return False
        return True

    lfd = lsock.fileno()
    hot: set[Conn] = set()
    next_sweep = time.monotonic() + 1.0
    while not stop:
        try:
            events = ep.poll(1.0)
        except InterruptedError:
            continue
        now = time.monotonic()
        if now >= next_sweep:  # detached: connections that did I/O since the last sweep drop their AEAD objects
            for c in hot:
                if isinstance(c.tls, proto.Detached13):
                    c.tls.drop_cache()
            hot.clear()
            next_sweep = now + 1.0
        if libc is not None:
            if events:
                trimmed = False
            elif not trimmed:
                libc.malloc_trim(0)
                trimmed = True
        for fd, ev in events:
            if fd == lfd:
                while True:
                    try:
                        s, _addr = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    s.setblocking(False)
                    if kind == "plain":
                        tls: Any = None
                    elif kind == "sslobject":
                        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
                        tls = (ctx.wrap_bio(inc, out, server_side=True), inc, out)
                    else:
                        tls = proto.Handshaker(ctx, tap)
                    c = Conn(s, tls)
                    if kind == "plain":
                        c.state = 1
                    conns[s.fileno()] = c
                    ep.register(s.fileno(), select.EPOLLIN)
                continue
            c = conns.get(fd)
            if c is None:
                continue
            if ev & select.EPOLLOUT and c.outb:
                try:
                    sent = c.sock.send(c.outb)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    close(c)
                    continue
                c.outb = c.outb[sent:] or None
                if c.outb is None:
                    ep.modify(fd, select.EPOLLIN)
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                if not on_readable(c):
                    close(c)
                elif kind == "detached":
                    hot.add(c)


def serve_peer(kind: str, host: str, port: int, certfile: str) -> None:
    """picows / websockets echo servers with an ssl context (their defaults otherwise, as in benchmarks/peers)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile)

    async def main() -> None:
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
        if kind == "picows":
            from picows import WSListener, WSMsgType, ws_create_server

            class Echo(WSListener):
                def on_ws_frame(self, transport, frame) -> None:
                    if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                        transport.send(frame.msg_type, frame.get_payload_as_bytes())
                    elif frame.msg_type is WSMsgType.CLOSE:
                        transport.send_close(frame.get_close_code())
                        transport.disconnect()

            server = await ws_create_server(
                lambda _req: Echo(), host, port, ssl=ctx, backlog=4096, enable_auto_ping=False
            )
        else:
            from websockets.asyncio.server import serve

            async def echo(ws) -> None:
                async for message in ws:
                    await ws.send(message)

            server = await serve(echo, host, port, ssl=ctx, compression=None, ping_interval=None, backlog=4096)
        print("listening", flush=True)
        await stop
        server.close()

    asyncio.run(main())


# --------------------------------------------------------------------------------------------------------------
# client for the PSS method (separate process)


def run_client(
    host: str, port: int, n: int, tls: bool, certfile: str, ready: str, done: str, out: str, hold: float
) -> None:
    ctx = client_ctx(certfile) if tls else None
    sem = asyncio.Semaphore(64)
    result = {"established": 0, "verified": 0, "errors": collections.Counter()}

    async def open_one(i: int):
        async with sem:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(
                        host,
                        port,
                        ssl=ctx,
                        server_hostname="localhost" if tls else None,
                        local_addr=(f"127.0.0.{2 + i % 50}", 0),
                    ),
                    30,
                )
                key = base64.b64encode(os.urandom(16))
                w.write(
                    b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
                )
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
                if b" 101 " not in head.split(b"\r\n", 1)[0] or ws_accept(key) not in head:
                    raise RuntimeError(f"no 101: {head[:200]!r}")
                result["established"] += 1
                return r, w
            except Exception as exc:
                result["errors"][f"{type(exc).__name__}: {exc}"[:120]] += 1
                return None

    async def verify(pair) -> None:
        r, w = pair
        payload = os.urandom(8).hex().encode()
        mask = os.urandom(4)
        w.write(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload)))
        try:
            hdr = await asyncio.wait_for(r.readexactly(2), 30)
            body = await asyncio.wait_for(r.readexactly(hdr[1] & 0x7F), 30)
            if body == payload:
                result["verified"] += 1
        except Exception as exc:
            result["errors"]["verify_" + type(exc).__name__] += 1
        w.close()

    async def main() -> None:
        pairs = [p for p in await asyncio.gather(*(open_one(i) for i in range(n))) if p]
        Path(ready).write_text(str(len(pairs)))
        deadline = time.monotonic() + hold
        while not os.path.exists(done) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for i in range(0, len(pairs), 500):
            await asyncio.gather(*(verify(p) for p in pairs[i : i + 500]))
        await asyncio.sleep(0.5)

    asyncio.run(main())
    result["errors"] = dict(result["errors"])
    Path(out).write_text(json.dumps(result))


def pss_of(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss", "Pss_Anon", "Rss"):
            out[name.lower()] = int(rest.split()[0]) * 1024
    return out


def cmd_pss(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    cert = os.path.join(workdir, "ecdsa.pem")
    if not os.path.exists(cert):
        make_cert(workdir, "ecdsa")
    runs: list[dict[str, Any]] = []
    kinds = args.kinds.split(",")
    port = args.port
    for run in range(args.runs):
        for kind in kinds:
            port += 1
            runs.append(pss_once(args, workdir, cert, kind, port, run))
    summary: dict[str, Any] = {}
    for kind in kinds:
        rs = [r for r in runs if r["kind"] == kind]
        per = sorted(r["pss_per_conn"] for r in rs)
        summary[kind] = {
            "pss_per_conn_median": per[len(per) // 2],
            "pss_per_conn_runs": per,
            "pss_anon_per_conn_runs": sorted(r["pss_anon_per_conn"] for r in rs),
            "established": [r["established"] for r in rs],
            "verified": [r["verified"] for r in rs],
        }
    return {"connections": args.connections, "runs": runs, "summary": summary}


def pss_once(args: argparse.Namespace, workdir: str, cert: str, kind: str, port: int, run: int) -> dict[str, Any]:
    role = "_serve-peer" if kind in ("picows", "websockets") else "_serve"
    cmd = [sys.executable, __file__, role, kind, args.host, str(port), cert]
    if args.pin:
        cmd = ["taskset", "-c", args.pin, *cmd]
    log_path = Path(workdir) / f"{kind}-{run}.log"
    with open(log_path, "w") as logf:
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, start_new_session=True)
    try:
        line = server.stdout.readline()
        if b"listening" not in line:
            raise RuntimeError(f"{kind} did not start: {log_path.read_text()[-2000:]}")
        tls = kind != "plain"

        def client(n: int, tag: str, wait_done: bool) -> tuple[subprocess.Popen, str, str, str]:
            ready, done, out = (str(Path(workdir) / f"{kind}-{run}-{tag}.{s}") for s in ("ready", "done", "json"))
            for p in (ready, done, out):
                Path(p).unlink(missing_ok=True)
            ccmd = [
                sys.executable,
                __file__,
                "_client",
                args.host,
                str(port),
                str(n),
                "1" if tls else "0",
                cert,
                ready,
                done,
                out,
                "600" if wait_done else "0",
            ]
            if args.client_cpus:
                ccmd = ["taskset", "-c", args.client_cpus, *ccmd]
            return subprocess.Popen(ccmd), ready, done, out

        proc, _r, _d, _o = client(args.warmup, "warm", False)
        proc.wait(timeout=300)
        time.sleep(args.settle)
        before = pss_of(server.pid)
        t0 = time.monotonic()
        proc, ready, done, out = client(args.connections, "main", True)
        while not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() - t0 > 600:
                raise RuntimeError(f"client for {kind} ended early / too slow")
            time.sleep(0.2)
        open_s = time.monotonic() - t0
        time.sleep(args.settle)
        during = pss_of(server.pid)
        Path(done).write_text("")
        proc.wait(timeout=300)
        res = json.loads(Path(out).read_text())
        time.sleep(1)
        after = pss_of(server.pid)
        est = max(res["established"], 1)
        r = {
            "kind": kind,
            "run": run,
            "established": res["established"],
            "verified": res["verified"],
            "errors": res["errors"],
            "open_seconds": round(open_s, 1),
            "pss_per_conn": round((during["pss"] - before["pss"]) / est),
            "pss_anon_per_conn": round((during["pss_anon"] - before["pss_anon"]) / est),
            "rss_per_conn": round((during["rss"] - before["rss"]) / est),
            "pss_kept_after_close_per_conn": round((after["pss"] - before["pss"]) / est),
            "before": before,
            "during": during,
            "after": after,
        }
        log(
            f"run {run} {kind:11s} {r['established']:6d} conns ({r['verified']} verified) in {open_s:5.1f} s: "
            f"PSS {r['pss_per_conn']:6d} B/conn, Pss_Anon {r['pss_anon_per_conn']:6d}, kept after close "
            f"{r['pss_kept_after_close_per_conn']}"
        )
        return r
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# --------------------------------------------------------------------------------------------------------------
# kTLS probe (Python >= 3.12 for ssl.OP_ENABLE_KTLS)


KTLS_SCRIPT = r"""
import socket, ssl, sys, threading
cert = sys.argv[1]
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert); sctx.options |= ssl.OP_ENABLE_KTLS
sctx.num_tickets = 0
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.load_verify_locations(cert)
ls = socket.create_server(("127.0.0.1", 0)); port = ls.getsockname()[1]
MARK = b"PLAINTEXT-MARKER-" * 4
def srv():
    s, _ = ls.accept()
    t = sctx.wrap_socket(s, server_side=True)
    data = t.recv(1000)
    t.sendall(MARK)
    print("server:", t.version(), t.cipher()[0], "got", data == MARK, flush=True)
    t.close()
th = threading.Thread(target=srv); th.start()
c = cctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
c.sendall(MARK)
print("client got echo:", c.recv(1000) == MARK, flush=True)
th.join(); c.close()
"""


def cmd_ktls(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    res: dict[str, Any] = {"python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION}
    try:
        import gzip

        config = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
        res["kernel_config"] = [
            ln
            for ln in config.splitlines()
            if ln.startswith(("CONFIG_TLS", "# CONFIG_TLS ", "CONFIG_MODULES", "# CONFIG_MODULES "))
        ]
    except OSError as exc:
        res["kernel_config"] = f"unreadable: {exc}"
    try:
        res["tcp_available_ulp"] = Path("/proc/sys/net/ipv4/tcp_available_ulp").read_text().strip()
    except OSError as exc:
        res["tcp_available_ulp"] = str(exc)
    res["lib_modules_exists"] = os.path.isdir("/lib/modules")
    res["openssl_built_with_ktls"] = "OPENSSL_NO_KTLS" not in _configuration_h()
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    try:
        cli.setsockopt(socket.IPPROTO_TCP, 31, b"tls")  # TCP_ULP
        res["setsockopt_tcp_ulp_tls"] = "ok"
    except OSError as exc:
        res["setsockopt_tcp_ulp_tls"] = f"{exc.__class__.__name__}: errno {exc.errno} ({os.strerror(exc.errno)})"
    cli.close()
    srv.close()
    res["has_OP_ENABLE_KTLS"] = hasattr(ssl, "OP_ENABLE_KTLS")
    if not res["has_OP_ENABLE_KTLS"]:
        res["verdict"] = "this Python has no ssl.OP_ENABLE_KTLS (needs >= 3.12); run with python3.12"
        return res
    cert = make_cert(workdir, "ecdsa")
    script = Path(workdir) / "ktls_probe.py"
    script.write_text(KTLS_SCRIPT)
    trace = Path(workdir) / "ktls.strace"
    cmd = [sys.executable, str(script), cert]
    if shutil.which("strace"):
        cmd = [
            "strace",
            "-f",
            "-s",
            "128",
            "-e",
            "trace=setsockopt,sendto,write,sendmsg,recvfrom,read",
            "-o",
            str(trace),
            *cmd,
        ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    res["probe_stdout"] = out.stdout.strip().splitlines()
    if trace.exists():
        lines = trace.read_text().splitlines()
        res["strace_tcp_ulp"] = [ln.split(" ", 1)[1] for ln in lines if "TCP_ULP" in ln or ", 31," in ln]
        # the crypto_info argument holds the connection's key and IV: keep only its length
        res["strace_sol_tls"] = [
            re.sub(r'"(?:[^"\\]|\\.)*"', '"<crypto_info redacted>"', ln.split(" ", 1)[1])
            for ln in lines
            if "SOL_TLS" in ln
        ]
        res["lines_with_plaintext_marker"] = [ln.split(" ", 1)[1][:100] for ln in lines if "PLAINTEXT-MARKER" in ln]
        io = [ln.split(" ", 1)[1] for ln in lines if ln.split(" ", 1)[1].startswith(("write(", "sendto(", "sendmsg("))]
        res["socket_writes"] = [
            re.sub(r'"(?:[^"\\]|\\.)*"', '"..."', ln)[:80] for ln in io if not ln.startswith("write(1,")
        ]
    ulp_failed = any("ENOENT" in ln for ln in res.get("strace_tcp_ulp", []))
    res["verdict"] = (
        'kTLS unavailable: the kernel has no TLS ULP; OpenSSL tries setsockopt(TCP_ULP, "tls"), gets ENOENT '
        "and silently keeps doing the record layer in user space (handshake and data still work)"
        if ulp_failed
        else "see fields"
    )
    return res


def _configuration_h() -> str:
    for p in ("/usr/include/x86_64-linux-gnu/openssl/configuration.h", "/usr/include/openssl/configuration.h"):
        if os.path.exists(p):
            return Path(p).read_text()
    return ""


# --------------------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[tls_memory] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    # internal roles first (no argparse: they run as children)
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        role, rest = sys.argv[1], sys.argv[2:]
        if role == "_serve":
            serve_reactor(rest[0], rest[1], int(rest[2]), rest[3])
        elif role == "_serve-peer":
            serve_peer(rest[0], rest[1], int(rest[2]), rest[3])
        elif role == "_client":
            run_client(
                rest[0], int(rest[1]), int(rest[2]), rest[3] == "1", rest[4], rest[5], rest[6], rest[7], float(rest[8])
            )
        return
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("command", choices=["all", "breakdown", "cpu", "pss", "ktls"])
    parser.add_argument("--quick", action="store_true", help="smaller counts (1 000 PSS connections, 100 in memory)")
    parser.add_argument("--conns", type=int, default=300, help="breakdown: connections per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="breakdown variants, comma-separated")
    parser.add_argument("--messages", type=int, default=20000, help="cpu: echoes per timing")
    parser.add_argument("--repeat", type=int, default=3, help="cpu: timings per path (best is kept)")
    parser.add_argument("--connections", type=int, default=10000, help="pss: connections per server")
    parser.add_argument("--kinds", default="plain,sslobject,detached,picows,websockets")
    parser.add_argument("--runs", type=int, default=1, help="pss: runs (kinds interleave)")
    parser.add_argument("--warmup", type=int, default=200, help="pss: connections opened and closed first")
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19400)
    parser.add_argument("--pin", default="", help="taskset -c for servers (e.g. 0)")
    parser.add_argument("--client-cpus", default="", help="taskset -c for the client (e.g. 1)")
    parser.add_argument("--json-out", default="")
    args = parser.parse_args()
    if args.quick:
        args.connections = min(args.connections, 1000)
        args.conns = min(args.conns, 100)
        args.messages = min(args.messages, 5000)
    workdir = tempfile.mkdtemp(prefix="tls-memory-")
    report: dict[str, Any] = {"command": " ".join(sys.argv), "versions": versions()}
    try:
        if args.command in ("all", "breakdown"):
            report["breakdown"] = cmd_breakdown(args, workdir)
        if args.command in ("all", "cpu"):
            report["cpu"] = cmd_cpu(args, workdir)
        if args.command in ("all", "ktls"):
            report["ktls"] = cmd_ktls(args, workdir)
            log(f"ktls: {report['ktls']['verdict']}")
        if args.command in ("all", "pss"):
            report["pss"] = cmd_pss(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(report, indent=2, default=str)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
