"""Echo peer on Go + gorilla/websocket: builds gorilla/main.go when needed, then becomes that binary.

    python benchmarks/peers/gorilla_server.py --host 127.0.0.1 --port 8005

The server itself is ``gorilla/main.go`` (same CLI and routes as the other peers: /echo, /fanout,
/fanout/publish, "listening" on stdout, ``--tls-cert/--tls-key``). This launcher keeps ``PEERS`` a map of
name -> script: it compiles main.go into a cache directory if the binary is missing or older than the source,
then ``exec``s it with the same arguments, so the pid the drivers measure (and pin) is the Go server's.

The build is offline: GOPATH mode against Debian's packaged sources (``golang-go`` and
``golang-github-gorilla-websocket-dev`` put gorilla under /usr/share/gocode), with GOPROXY=off so nothing is
ever downloaded. ``scripts/bench-system-deps`` (run by ``just bench-setup``) installs both packages.
Cache: $MILLIONWS_GORILLA_CACHE, else $XDG_CACHE_HOME/millionws/gorilla, else ~/.cache/millionws/gorilla.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "gorilla" / "main.go"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages install Go sources
GORILLA = Path(GOPATH) / "src" / "github.com" / "gorilla" / "websocket"
INSTALL_HINT = (
    "install them with scripts/bench-system-deps "
    "(or: apt-get install golang-go golang-github-gorilla-websocket-dev)"
)


def cache_dir() -> Path:
    explicit = os.environ.get("MILLIONWS_GORILLA_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "millionws" / "gorilla"


def missing_toolchain() -> str:
    """Why the Go peer cannot be built here ('' if it can): the tests skip on this, outside CI."""
    if shutil.which("go") is None:
        return f"no `go` on PATH (Debian golang-go); {INSTALL_HINT}"
    if not GORILLA.is_dir():
        return f"no gorilla/websocket sources in {GORILLA} (Debian golang-github-gorilla-websocket-dev); {INSTALL_HINT}"
    return ""


def build(binary: Path | None = None) -> Path:
    """Compile main.go into ``binary`` (default: the cache) unless it is already newer than the source."""
    out = binary or cache_dir() / "gorilla-echo"
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    why = missing_toolchain()
    if why:
        raise SystemExit(f"gorilla peer: {why}")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GO111MODULE": "off",  # GOPATH mode: imports resolve in /usr/share/gocode, no go.mod, no module proxy
        "GOPATH": GOPATH,
        "GOPROXY": "off",  # belt and braces: never reach for the network
        "GOFLAGS": "",  # a -mod=... from the environment is an error in GOPATH mode
        "CGO_ENABLED": "0",  # pure-Go net and crypto: no C compiler needed, and a static binary
        "GOCACHE": str(out.parent / "go-build"),  # $HOME may be unset or read-only under the drivers
    }
    # Build next to the target and rename: a concurrent launcher never execs a half-written binary.
    fd, tmp = tempfile.mkstemp(prefix=".gorilla-echo-", dir=out.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            ["go", "build", "-trimpath", "-o", tmp, str(SOURCE)],
            env=env,
            cwd=SOURCE.parent,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"gorilla peer: go build failed ({done.returncode}):\n{done.stderr[-4000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def main() -> None:
    binary = build()
    # exec, not a child: the drivers pin, measure and signal this pid, which must be the Go server.
    os.execv(binary, [str(binary), *sys.argv[1:]])


if __name__ == "__main__":
    main()
