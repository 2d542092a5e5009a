"""Certificates made for a test: a test CA, the leaf certificates it issues (as PEM
files on disk) and TLS server contexts for them."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _valid(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


@dataclass(frozen=True)
class Authority:
    """A test CA; ``file`` is its certificate as PEM (what a client trusts)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    file: Path

    def issue(
        self,
        directory: Path,
        stem: str,
        names: Sequence[str],
        usage: x509.ObjectIdentifier = SERVER_AUTH,
    ) -> tuple[Path, Path]:
        """A certificate for ``names`` (host names or IP addresses; the common name is
        ``stem``) and its unencrypted key, as ``stem.crt`` and ``stem.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _valid(x509.CertificateBuilder())
            .subject_name(_name(stem))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_file, key_file


def authority(directory: Path, stem: str, common_name: str) -> Authority:
    """A self-signed test CA, its certificate written to ``stem.crt``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _valid(x509.CertificateBuilder())
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    file = directory / f"{stem}.crt"
    file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(key, cert, file)


@dataclass(frozen=True)
class ServerPki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def server_pki(directory: Path, host: str) -> ServerPki:
    """A test CA and a server certificate it issued for ``host`` only."""
    ca = authority(directory, "ca", f"AgentIAM test CA for {host}")
    cert_file, key_file = ca.issue(directory, "server", [host])
    return ServerPki(ca.file, cert_file, key_file)


def server_context(
    cert: tuple[Path, Path],
    *,
    client_ca: Path | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A TLS server context for ``cert`` (certificate and key files); with
    ``client_ca``, clients must present a certificate it issued."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
    if maximum is not None:
        context.maximum_version = maximum
    return context
