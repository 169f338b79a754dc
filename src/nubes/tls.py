"""The cloud's own CA and the API's server certificate (the `cryptography` library).

The CA is made once, at the API's first start, and kept in `<state>/tls/` (key 0600). The server
certificate is issued anew at every start for the names the API listens on, so a changed
address needs no manual step. A join token carries the CA's fingerprint (sha256 of its DER
form): a new machine pins it before it trusts anything the API says, as `kubeadm join
--discovery-token-ca-cert-hash` does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 365


@dataclass(frozen=True)
class ServerFiles:
    ca_cert: Path
    cert: Path
    key: Path


def fingerprint(pem: bytes) -> str:
    """sha256 of the certificate's DER form, hex: what a join token pins."""
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(directory: Path, name: str = "nubes CA") -> Path:
    """A new self-signed CA in directory (ca.pem, ca.key); the certificate's path."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    write_private(directory / "ca.key", _key_pem(key))
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / "ca.pem"


def ensure_ca(directory: Path) -> Path:
    if not (directory / "ca.pem").exists() or not (directory / "ca.key").exists():
        return make_ca(directory)
    return directory / "ca.pem"


def _san(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(n for n in names if n):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = x509.load_pem_x509_certificate(ensure_ca(directory).read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return ca_cert, ca_key


def _sign(
    directory: Path,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    names: list[str],
    usage: x509.ObjectIdentifier,
) -> bytes:
    """A certificate for public_key signed by the CA in directory: names in its SAN, and one
    extended key usage (server or client), so a host's serving certificate can never pass
    for the API's client certificate and the other way round."""
    ca_cert, ca_key = _load_ca(directory)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _issue_pair(
    directory: Path, stem: str, common_name: str, names: list[str], usage: x509.ObjectIdentifier
) -> ServerFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(directory, key.public_key(), common_name, names, usage)
    write_private(directory / f"{stem}.key", _key_pem(key))
    (directory / f"{stem}.pem").write_bytes(cert)
    return ServerFiles(directory / "ca.pem", directory / f"{stem}.pem", directory / f"{stem}.key")


def issue_server_cert(directory: Path, names: list[str]) -> ServerFiles:
    """A server certificate signed by the CA in directory, valid for names (IPs or DNS)."""
    return _issue_pair(directory, "server", "nubes-api", names, ExtendedKeyUsageOID.SERVER_AUTH)


# -- the API's channel to the agents (consoles) ------------------------------------------------

API_CLIENT_NAME = "nubes-api"


def host_server_name(host_id: str) -> str:
    """The name a host's serving certificate is issued for, and the API checks when it dials
    the host: bound to the host's id, not to an address that can change."""
    return f"{host_id}.host.nubes"


def issue_api_client_cert(directory: Path) -> ServerFiles:
    """The certificate the API presents to agents (client auth only), made at each start."""
    usage = ExtendedKeyUsageOID.CLIENT_AUTH
    return _issue_pair(directory, "api-client", API_CLIENT_NAME, [], usage)


def make_host_key() -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _key_pem(key), key


def host_csr(key: ec.EllipticCurvePrivateKey, host_id: str) -> bytes:
    """What an agent sends for its serving certificate: it keeps the key, the API signs."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_host_csr(directory: Path, csr_pem: bytes, host_id: str) -> bytes:
    """The serving certificate of host_id. Whatever names the request asks for, the
    certificate names only this host (a host cannot get one that passes for another)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise ValueError("the certificate signing request's signature does not verify")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("the certificate signing request must carry an EC (P-256) key")
    return _sign(
        directory, public_key, host_id, [host_server_name(host_id)], ExtendedKeyUsageOID.SERVER_AUTH
    )


def cert_expires(pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def issued_by(pem: bytes, ca_pem: bytes) -> bool:
    """Whether the certificate was signed by this CA (a host that joined another cloud, or
    whose cloud made a new CA, asks for a new one)."""
    cert = x509.load_pem_x509_certificate(pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def mutual_server_context(ca_pem: bytes, cert: Path, key: Path) -> ssl.SSLContext:
    """An agent's listener: its own certificate, and only clients with a certificate from
    the cloud's CA (OpenSSL checks the client-auth usage of the client's certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def mutual_client_context(ca_pem: bytes, cert: Path, key: Path) -> ssl.SSLContext:
    """The API dialing an agent: trusts only the cloud's CA, presents its client certificate."""
    ctx = client_context(ca_pem)
    ctx.load_cert_chain(cert, key)
    return ctx


def peer_common_name(peer: dict[str, Any] | None) -> str:
    """The CN of a peer certificate as `SSLSocket.getpeercert()` gives it."""
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    """Trust exactly this CA, nothing from the system store: a cloud's hosts pin their cloud."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
