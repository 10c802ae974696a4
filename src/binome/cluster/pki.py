"""The cluster CA and node certificates, and SHA-256 fingerprints.

One CA per cluster, created by `cluster create`. Every node (and witness) gets a
certificate signed by it, used for the API on 8006 and for etcd's peer and
client TLS. The node's private key is generated on the node and never leaves
it: joining sends a CSR. Before a node belongs to a cluster its API uses a
self-signed certificate. `certificate_info` describes a certificate file as PVE's
`certificates/info` does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from binome import durable

CA_DAYS = 3650
NODE_DAYS = 3650
FINGERPRINT_RE = re.compile(r"^(?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{64}$")


@dataclass(frozen=True)
class PkiPaths:
    """Where a node keeps its key material."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def node_cert(self) -> Path:
        return self.root / "node.pem"

    @property
    def node_key(self) -> Path:
        return self.root / "node.key"

    @property
    def self_signed_cert(self) -> Path:
        return self.root / "selfsigned.pem"

    @property
    def self_signed_key(self) -> Path:
        return self.root / "selfsigned.key"

    def has_cluster_cert(self) -> bool:
        return self.ca_cert.exists() and self.node_cert.exists() and self.node_key.exists()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def load_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    durable.write_bytes(path, data, mode=0o600)   # 0600 from creation: never readable by others


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    durable.write_bytes(path, data)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sans(addresses: list[str], names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    entries += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
    return x509.SubjectAlternativeName(entries)


def create_ca(cluster_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "binome"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"binome cluster CA {cluster_name}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_csr(key: ec.EllipticCurvePrivateKey, node_name: str) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
        .sign(key, hashes.SHA256())
    )


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_node_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                   csr: x509.CertificateSigningRequest, node_name: str,
                   addresses: list[str]) -> x509.Certificate:
    """Issue a node certificate; the CA decides the SANs, never the CSR."""
    if not csr.is_signature_valid:
        raise ValueError("certificate request signature is invalid")
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "binome"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
        .issuer_name(ca_cert.subject).public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=NODE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_sans(addresses, [node_name, "localhost"]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def self_signed(key: ec.EllipticCurvePrivateKey, node_name: str,
                addresses: list[str]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=NODE_DAYS))
        .add_extension(_sans(addresses, [node_name, "localhost"]), critical=False)
        .sign(key, hashes.SHA256())
    )


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, colon-separated uppercase hex (as PVE shows it)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def _oneline(name: x509.Name) -> str:
    """OpenSSL's X509_NAME_oneline: `/CN=n1/O=binome`."""
    return "".join(f"/{attr.rfc4514_attribute_name}={attr.value!s}" for attr in name)


def _san_entries(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    for entry in ext:
        if isinstance(entry, x509.DNSName):
            out.append(entry.value)
        elif isinstance(entry, x509.IPAddress) and isinstance(entry.value, ipaddress.IPv4Address):
            out.append(str(entry.value))
        elif isinstance(entry, x509.IPAddress) and isinstance(entry.value, ipaddress.IPv6Address):
            # PVE unpacks IPv6 as eight 4-digit groups, uncompressed
            raw = entry.value.packed.hex()
            out.append(":".join(raw[i:i + 4] for i in range(0, 32, 4)))
    return out


def certificate_info(path: Path) -> dict[str, object]:
    """PVE's get_certificate_info (`GET /nodes/{node}/certificates/info`): a PEM
    certificate file's fingerprint, subject, issuer, validity, SANs, PEM and key."""
    cert = load_cert(path.read_bytes())
    key = cert.public_key()
    key_type = ("id-ecPublicKey" if isinstance(key, ec.EllipticCurvePublicKey)
                else "rsaEncryption" if isinstance(key, rsa.RSAPublicKey) else "unknown")
    info: dict[str, object] = {
        "filename": path.name,
        "fingerprint": fingerprint(cert),
        "subject": _oneline(cert.subject),
        "issuer": _oneline(cert.issuer),
        "notbefore": int(cert.not_valid_before_utc.timestamp()),
        "notafter": int(cert.not_valid_after_utc.timestamp()),
        "san": _san_entries(cert),
        "pem": cert_pem(cert).decode(),
        "public-key-type": key_type,
    }
    if isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        info["public-key-bits"] = key.key_size
    return info


def normalize_fingerprint(value: str) -> str:
    """Accept `AA:BB:...` or plain hex, any case; return the colon form. ValueError if bad."""
    value = value.strip()
    if value.lower().startswith("sha256:"):
        value = value[7:]
    if not FINGERPRINT_RE.match(value):
        raise ValueError("invalid SHA-256 fingerprint (expected 32 hex bytes, colon-separated)")
    digest = value.replace(":", "").upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def ensure_self_signed(paths: PkiPaths, node_name: str, addresses: list[str]) -> None:
    if paths.self_signed_cert.exists() and paths.self_signed_key.exists():
        return
    key = new_key()
    write_private(paths.self_signed_key, key_pem(key))
    write_public(paths.self_signed_cert, cert_pem(self_signed(key, node_name, addresses)))
