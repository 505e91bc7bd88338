"""A throw-away certificate authority for the managed broker's TLS listener, the tests and the demo.

``LocalCa(folder)`` creates (once) ``ca.pem`` + ``ca.key``, a server certificate for ``127.0.0.1``/``localhost``
(``server.pem`` + ``server.key``) and, on request, client certificates whose common name is the MQTT identity the
broker takes (``use_identity_as_username``): a device's checksummed address, or the oracle's name. Private keys are
written 0600 and never printed. Never use this CA outside a local stack: its key sits next to the certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from iotsettle.oracle.protocol.errors import NodeError

_VALIDITY = datetime.timedelta(days=825)
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class CertPair:
    """Paths of a certificate and its private key (0600)."""

    cert_file: Path
    key_file: Path


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class LocalCa:
    """The CA in ``folder``; files that exist are reused, so certificates stay valid across ``node up``.
    ``server_names``: the host names and IP addresses the server certificate is issued for."""

    def __init__(self, folder: Path, server_names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> None:
        self.folder = folder
        self.server_names = server_names

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    def ensure(self) -> None:
        """Create the CA and the server certificate unless they exist."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        if not (self.ca_file.exists() and (self.folder / "ca.key").exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iotsettle local CA")])
            cert = (
                self._builder(name, name, key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
                .sign(key, hashes.SHA256())
            )
            self._write(self.folder / "ca", cert, key)
        if not (self.folder / "server.pem").exists():
            self._issue("server", self.server_names[0], server=True)

    @property
    def server(self) -> CertPair:
        return CertPair(self.folder / "server.pem", self.folder / "server.key")

    def client(self, name: str) -> CertPair:
        """The client certificate for MQTT identity ``name`` (issued on first use)."""
        if not _NAME.match(name):
            raise NodeError(f"{name!r} cannot name a client certificate: use letters, digits, '.', '_' or '-'")
        self.ensure()
        pair = CertPair(self.folder / f"client-{name}.pem", self.folder / f"client-{name}.key")
        if not pair.cert_file.exists():
            self._issue(f"client-{name}", name, server=False)
        return pair

    # -- internals -------------------------------------------------------------------------------------------
    @staticmethod
    def _builder(
        subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
        )

    def _issue(self, stem: str, common_name: str, *, server: bool) -> None:
        ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        ca_key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise NodeError(f"{self.folder / 'ca.key'} is not the key this CA writes; delete {self.folder} to renew")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(subject, ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(name) for name in self.server_names]), critical=False
            )
        self._write(self.folder / stem, builder.sign(ca_key, hashes.SHA256()), key)

    @staticmethod
    def _write(stem: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        key_file = stem.parent / f"{stem.name}.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        os.chmod(key_file, 0o600)
        (stem.parent / f"{stem.name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
