"""A throw-away test CA and server certificate for wss:// benchmarks, made at run time.

    python -m benchmarks.tlscert DIR      # writes DIR/ca.pem, DIR/server.pem, DIR/server.key; prints their paths

Nothing here is committed or reused: each driver run makes its own in its temporary directory and deletes it
afterwards, so no key ever lives in the repository. The server certificate is for ``127.0.0.1`` and
``localhost`` (subjectAltName), signed by the CA, valid for two days; both keys are ECDSA P-256, the cheapest
common choice for the server's handshake (what a deployment would use too), so handshake figures are not
dominated by RSA signing. Made with the ``openssl`` command line tool when there is one (no Python dependency),
else with the ``cryptography`` package if it is installed.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

_DAYS = 2
_SAN = "IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True)
class TestCert:
    """PEM files: the CA to trust (``--ca``), the server's certificate and its key (``{cert}``, ``{key}``)."""

    __test__: ClassVar[bool] = False  # not a test class, whatever pytest thinks of the name

    ca: Path
    cert: Path
    key: Path

    def subst(self) -> dict[str, str]:
        """What server commands may name: {cert}, {key} and {ca}."""
        return {"{cert}": str(self.cert), "{key}": str(self.key), "{ca}": str(self.ca)}


def make_test_cert(directory: Path) -> TestCert:
    """Write a CA and a server certificate for 127.0.0.1/localhost into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = TestCert(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if shutil.which("openssl"):
        _with_openssl(directory, out)
    else:
        _with_cryptography(out)
    out.key.chmod(0o600)
    return out


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}...: {done.stderr.strip()[-400:]}")


def _with_openssl(directory: Path, out: TestCert) -> None:
    ca_key = directory / "ca.key"
    csr = directory / "server.csr"
    ext = directory / "server.ext"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run(
        "openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(out.ca), "-days", str(_DAYS),
        "-subj", "/CN=millionws benchmark CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _run("openssl", "req", "-new", *ec, "-keyout", str(out.key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text(
        f"subjectAltName={_SAN}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _run(
        "openssl", "x509", "-req", "-in", str(csr), "-CA", str(out.ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", str(_DAYS), "-sha256", "-extfile", str(ext), "-out", str(out.cert),
    )  # fmt: skip
    for path in (ca_key, csr, ext, directory / "ca.srl"):  # the CA key signs nothing more: gone
        path.unlink(missing_ok=True)


def _with_cryptography(out: TestCert) -> None:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise RuntimeError("no openssl command and no cryptography package: cannot make a test certificate") from None
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "millionws benchmark CA")])

    def build(subject: x509.Name, public_key: object, is_ca: bool) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_DAYS))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )

    ca = build(ca_name, ca_key.public_key(), True).sign(ca_key, hashes.SHA256())
    server = (
        build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), key.public_key(), False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


if __name__ == "__main__":
    made = make_test_cert(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(f"ca={made.ca}\ncert={made.cert}\nkey={made.key}")
