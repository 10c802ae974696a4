"""The certificates this node's API serves on 8006: the one owner of that choice.

Owns the node's custom certificate files, PVE's `pveproxy-ssl.pem` and `pveproxy-ssl.key`
(uploaded with `POST /nodes/{node}/certificates/custom` or ordered through ACME), in the
node's `pki` directory (the key 0600, root only, never returned or logged). The cluster's
own node certificate (`pki.py`: `node.pem`, or `selfsigned.pem` before the node joins a
cluster) stays what node-to-node calls see and trust.

What is served (`ApiServer` asks `served()` and `custom()`): a client that names the
server (TLS SNI: a browser or API client using a DNS name) gets the custom certificate
when there is one; a client connecting by IP address (no SNI: every call between the
cluster's nodes, which trust the cluster CA only) gets the cluster's node certificate.
`changed` is called after every change so the server reloads its TLS contexts: new
connections get the new certificate without a restart.

`set_custom` is PVE's `set_cert_files` (same checks and texts), done in the order that
never changes anything on bad input: the chain and key are parsed and matched first,
then both files are written.
"""

from __future__ import annotations

import re
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from binome.cluster import pki
from binome.errors import BinomeError

CUSTOM_CERT = "pveproxy-ssl.pem"
CUSTOM_KEY = "pveproxy-ssl.key"
NOT_PEM = "not a valid PEM-formatted string."

_B64 = r"[0-9A-Za-z+/]"


def _pem_re(label: str) -> str:
    return (rf"-----BEGIN {label}-----(?:\s|\n)*(?:(?:{_B64})+\s*\n)*(?:{_B64})*"
            rf"(?:=\s*\n=|={{0,2}})?\s*\n-----END {label}-----(?:\s|\n)*")


_CHAIN_RE = re.compile(rf"(?:{_pem_re('CERTIFICATE')}\n+)*{_pem_re('CERTIFICATE')}")
_KEY_RE = re.compile(_pem_re(".*?"))
_LEADING = re.compile(r"^.*?(?=-----BEGIN .*?-----)", re.S)


class CertificateError(BinomeError):
    """A refused change, PVE's text (the API's 500)."""


class PemError(ValueError):
    """A parameter that is no PEM of its kind: `errors` per parameter (the API's 400)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def strip_leading_text(text: str) -> str:
    """PVE's strip_leading_text: whatever precedes the first PEM header goes."""
    return _LEADING.sub("", text, count=1)


def check_chain(text: str) -> str:
    """PVE's `pem-certificate-chain` format (ValueError with PVE's text)."""
    text = strip_leading_text(text)
    if not _CHAIN_RE.fullmatch(text):
        raise ValueError(NOT_PEM)
    return text


def check_pem_string(text: str) -> str:
    """PVE's `pem-string` format: one PEM block of any label."""
    text = strip_leading_text(text)
    if not _KEY_RE.fullmatch(text):
        raise ValueError(NOT_PEM)
    return text


def _no_password() -> bytes:
    raise ValueError("the key is encrypted")


def verify_pair(chain: bytes, key: bytes) -> None:
    """The chain parses, the key parses and is the leaf's (CertificateError with PVE's
    text); both loaded into a TLS context as the server will load them."""
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError as exc:
        raise PemError({"certificates": f"unable to read certificate - {exc}"}) from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise PemError({"key": f"unable to read private key - {exc}"}) from None
    leaf = certs[0].public_key()
    if private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            leaf.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertificateError("Setting certificate files failed - key does not match the "
                               "certificate (chain)")
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        cert_path.write_bytes(chain)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                cert_path, key_path, password=_no_password)
        except (ssl.SSLError, ValueError) as exc:
            raise CertificateError(f"Setting certificate files failed - could not load "
                                   f"certificate (chain) ({exc})") from None


class NodeCertificates:
    """The node's served certificates (module docstring)."""

    def __init__(self, paths: pki.PkiPaths, is_member: Callable[[], bool],
                 changed: Callable[[], None] = lambda: None) -> None:
        self.paths = paths
        self._is_member = is_member
        self.changed = changed

    @property
    def custom_cert(self) -> Path:
        return self.paths.root / CUSTOM_CERT

    @property
    def custom_key(self) -> Path:
        return self.paths.root / CUSTOM_KEY

    def served(self) -> tuple[Path, Path]:
        """The cluster's node certificate and key (self-signed before a cluster)."""
        if self._is_member():
            return self.paths.node_cert, self.paths.node_key
        return self.paths.self_signed_cert, self.paths.self_signed_key

    def custom(self) -> tuple[Path, Path] | None:
        """The custom certificate and key, when both exist."""
        if self.custom_cert.exists() and self.custom_key.exists():
            return self.custom_cert, self.custom_key
        return None

    def public(self) -> Path:
        """The certificate a client naming this node sees (custom, else the node's)."""
        pair = self.custom()
        return pair[0] if pair else self.served()[0]

    def info(self) -> list[dict[str, object]]:
        """PVE's `certificates/info`: the CA, the node's certificate, the custom one."""
        out = []
        for path in dict.fromkeys([self.paths.ca_cert, self.served()[0], self.custom_cert]):
            try:
                out.append(pki.certificate_info(path))
            except (OSError, ValueError):
                continue
        return out

    def set_custom(self, certificates: str, key: str | None, force: bool) -> dict[str, object]:
        """PVE's upload_custom_cert + set_cert_files; PemError (400) or CertificateError
        (500), nothing written then. Returns the new certificate's info."""
        errors = {}
        try:
            chain = check_chain(certificates)
        except ValueError as exc:
            errors["certificates"] = str(exc)
        key_text = None
        if key:
            try:
                key_text = check_pem_string(key)
            except ValueError as exc:
                errors["key"] = str(exc)
        elif not self.custom_key.exists():
            errors["key"] = "Attempted to upload custom certificate without (existing) key."
        if errors:
            raise PemError(errors)
        if not force and self.custom_cert.exists():
            raise CertificateError("Custom certificate file exists but force flag is not set.")
        if not force and self.custom_key.exists():
            raise CertificateError("Custom certificate key file exists but force flag is not "
                                   "set.")
        key_bytes = key_text.encode() if key_text is not None else self.custom_key.read_bytes()
        verify_pair(chain.encode(), key_bytes)
        if key_text is not None:
            pki.write_private(self.custom_key, key_bytes)
        pki.write_public(self.custom_cert, chain.encode())
        self.changed()
        return pki.certificate_info(self.custom_cert)

    def delete_custom(self) -> None:
        """PVE's remove_custom_cert: both files go; the node's own certificate is served."""
        self.custom_cert.unlink(missing_ok=True)
        self.custom_key.unlink(missing_ok=True)
        self.changed()

    def custom_pem(self) -> str:
        """The custom chain (PVE reads it for a renewal's or revocation's old certificate)."""
        try:
            return self.custom_cert.read_text()
        except FileNotFoundError:
            raise CertificateError(f"error opening '{self.custom_cert}': No such file or "
                                   "directory") from None

    def custom_expires_before(self, when: float | None = None) -> bool:
        """PVE's check_expiry of the custom certificate: it ends before `when`."""
        cert = pki.load_cert(self.custom_cert.read_bytes())
        return cert.not_valid_after_utc.timestamp() < (time.time() if when is None else when)
