"""Headless Chromium driven over the Chrome DevTools Protocol, for tests that need a real browser.

``Browser(*flags)`` starts ``chromium --headless`` with a fresh profile and talks CDP to it over
``--remote-debugging-pipe`` (file descriptors 3 and 4, messages separated by NUL: no port, nothing to
connect to).  :meth:`Browser.run` opens a new ``about:blank`` page, evaluates an async JavaScript
function body in it (``await`` allowed), returns what it returned (JSON values) and closes the page.
One browser serves many :meth:`run` calls; start it once per module.

Certificates: :func:`spki_flag` trusts exactly one key (``--ignore-certificate-errors-spki-list``,
the base64 SHA-256 of the certificate's SubjectPublicKeyInfo), which works headless and without
touching any certificate store; every other certificate is still refused.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization


class BrowserError(Exception):
    """The page threw, the protocol said no, or the browser did not answer in time."""


def chromium_path() -> str | None:
    """The Chromium executable: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def spki_hash(cert_path: str | Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a PEM certificate: what ``--ignore-certificate-errors-spki-list``
    takes."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def spki_flag(*cert_paths: str | Path) -> str:
    """The flag that makes Chromium accept these certificates' keys, and no other untrusted one."""
    return "--ignore-certificate-errors-spki-list=" + ",".join(spki_hash(p) for p in cert_paths)


class Browser:
    def __init__(self, *flags: str, executable: str | None = None, timeout: float = 30.0) -> None:
        exe = executable or chromium_path()
        if exe is None:
            raise FileNotFoundError("chromium not found (tests/interop/install-chromium.sh installs it)")
        self.profile = tempfile.TemporaryDirectory(prefix="millionws-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def pipes_on_3_and_4() -> None:  # in the child: CDP reads fd 3 and writes fd 4
            r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))  # out of the way
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.log = open(Path(self.profile.name) / "chromium.log", "wb")  # closed in close()
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox",  # root: the setuid sandbox refuses to run
             "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}", "--no-first-run",
             "--no-default-browser-check", "--disable-gpu", "--disable-extensions", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--metrics-recording-only", "--mute-audio", *flags, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=pipes_on_3_and_4,
            pass_fds=(3, 4), start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.timeout = timeout
        self._next_id = 0
        self._inbox = b""
        self.events: list[dict] = []  # the CDP events of the last run() (with network=True: Network.*)
        self.version = self.call("Browser.getVersion")["product"]

    # -- the protocol ------------------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        """One CDP command; its result (events that arrive meanwhile go to ``events``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._receive(deadline, method)
            if "method" in reply:
                self.events.append(reply)
            elif reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply["result"]

    def _receive(self, deadline: float, method: str) -> dict:
        while b"\0" not in self._inbox:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError(f"{method}: no answer from the browser in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"{method}: the browser exited: {self.output()[-2000:]}")
            self._inbox += chunk
        line, self._inbox = self._inbox.split(b"\0", 1)
        return json.loads(line)

    # -- pages -------------------------------------------------------------------------------------
    def run(self, body: str, timeout: float | None = None, network: bool = False) -> Any:
        """Evaluate ``body``, the body of an async function, in a new ``about:blank`` page; what it returns
        (a JSON value).  An exception in the page raises :class:`BrowserError` with its message.

        With ``network``, the page's Network events are kept in ``events`` (for WebSockets:
        ``Network.webSocketWillSendHandshakeRequest`` and ``Network.webSocketHandshakeResponseReceived``
        carry the handshake's headers, ``Network.webSocketFrameSent``/``Received`` the frames)."""
        self.events = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        try:
            session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            if network:
                self.call("Network.enable", session=session)
            reply = self.call("Runtime.evaluate", {"expression": f"(async () => {{\n{body}\n}})()",
                                                   "awaitPromise": True, "returnByValue": True},
                              session=session, timeout=timeout)
        finally:
            self.call("Target.closeTarget", {"targetId": target})
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return reply["result"].get("value")

    def handshakes(self) -> list[tuple[dict, dict]]:
        """(request headers, response headers) of each WebSocket handshake in ``events`` (run with network)."""
        requests, responses = {}, {}
        for event in self.events:
            if event["method"] == "Network.webSocketWillSendHandshakeRequest":
                requests[event["params"]["requestId"]] = event["params"]["request"]["headers"]
            elif event["method"] == "Network.webSocketHandshakeResponseReceived":
                responses[event["params"]["requestId"]] = event["params"]["response"]["headers"]
        return [(requests.get(key, {}), headers) for key, headers in responses.items()]

    def output(self) -> str:
        self.log.flush()
        return (Path(self.profile.name) / "chromium.log").read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("Browser.close", timeout=5)
            except (BrowserError, OSError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self.log.close()
        self.profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
