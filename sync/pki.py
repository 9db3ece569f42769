"""A small certificate authority for the tests, the demo and the benchmarks.

The fleet's broker identifies every client by its TLS certificate: a box's
certificate CN is its device id, the central store's is ``central`` (see
``image/mosquitto/``). This module makes such a PKI in a folder, with
ECDSA P-256 keys (fast to make, accepted by Mosquitto and Python's ssl):

    <folder>/ca.pem  ca.key                    the authority
    <folder>/server.pem  server.key            the broker, for 127.0.0.1 and localhost
    <folder>/<name>.pem  <name>.key            one client (CN = name)

Private keys are written 0600 from the first byte. A production fleet keeps
its CA key offline and issues certificates at provisioning; nothing here is
meant for that.
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

from linetap.firmware.errors import ConfigError

CENTRAL = "central"  # CN of the central store's client certificate; no device may use it
SERVER_HOSTS = ("127.0.0.1", "localhost")
VALID_DAYS = 825
# A CN becomes a file name and an ACL user name: keep it to the device id alphabet.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


class CertificateAuthority:
    """The CA in ``folder``: made by :meth:`create`, reopened by :meth:`load`."""

    def __init__(self, folder: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.folder = Path(folder)
        self._key = key
        self._cert = cert

    @property
    def cert_file(self) -> Path:
        return self.folder / "ca.pem"

    @classmethod
    def create(cls, folder: Path, name: str = "linetap test CA") -> CertificateAuthority:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "ca.key").exists():
            raise ConfigError(f"a CA already exists in {folder}; open it with CertificateAuthority.load "
                              "or choose an empty folder")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=True, crl_sign=True,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write_key(folder / "ca.key", key)
        (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(folder, key, cert)

    @classmethod
    def load(cls, folder: Path) -> CertificateAuthority:
        folder = Path(folder)
        try:
            key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        except FileNotFoundError as e:
            raise ConfigError(f"no CA in {folder}: {e.filename} is missing; "
                              "make one with CertificateAuthority.create") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{folder / 'ca.key'} is not an EC key made by this module")
        return cls(folder, key, cert)

    def issue_server(self, hosts: tuple[str, ...] = SERVER_HOSTS, name: str = "server") -> Issued:
        """A broker certificate valid for ``hosts`` (IP addresses or DNS names)."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(name, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, x509.SubjectAlternativeName(names))

    def issue_client(self, common_name: str) -> Issued:
        """A client certificate whose CN is a device id, or :data:`CENTRAL` for the central store."""
        return self._issue(common_name, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def _issue(self, file_stem: str, common_name: str, usage: x509.ObjectIdentifier,
               alt_names: x509.SubjectAlternativeName | None) -> Issued:
        if not _NAME.fullmatch(file_stem):
            raise ConfigError(f"certificate name {file_stem!r} is not 1-64 characters of a-z, 0-9 "
                              "and '-' (device ids use the same alphabet)")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self._cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                                  critical=False))
        if alt_names is not None:
            builder = builder.add_extension(alt_names, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(self.folder / f"{file_stem}.pem", self.folder / f"{file_stem}.key")
        _write_key(issued.key_file, key)
        issued.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return issued


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key that is never readable by others, not even for an instant."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
