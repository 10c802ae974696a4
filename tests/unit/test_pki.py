"""Cluster CA, node certificates signed from a CSR, and SHA-256 fingerprints."""

import hashlib
import ipaddress
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from binome.cluster import pki


@pytest.fixture(scope="module")
def ca():
    return pki.create_ca("lab")


@pytest.fixture(scope="module")
def node_key():
    return pki.new_key()


def san_of(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_ca_is_a_ca(ca):
    _key, cert = ca
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert cert.subject == cert.issuer
    assert "binome cluster CA lab" in cert.subject.rfc4514_string()
    cert.verify_directly_issued_by(cert)


def test_node_cert_verifies_against_ca(ca, node_key):
    ca_key, ca_cert = ca
    cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(node_key, "n1"), "n1", ["10.0.0.1"])
    cert.verify_directly_issued_by(ca_cert)
    assert cert.issuer == ca_cert.subject
    assert cert.public_key().public_numbers() == node_key.public_key().public_numbers()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_node_cert_does_not_verify_against_other_ca(ca, node_key):
    ca_key, ca_cert = ca
    _other_key, other_cert = pki.create_ca("other")
    cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(node_key, "n1"), "n1", ["10.0.0.1"])
    with pytest.raises((ValueError, TypeError)):
        cert.verify_directly_issued_by(other_cert)


def test_sans_exact(ca, node_key):
    ca_key, ca_cert = ca
    addrs = ["10.0.0.1", "192.168.5.7", "fd00::1", "10.0.0.1"]
    cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(node_key, "n1"), "n1", addrs)
    san = san_of(cert)
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["localhost", "n1"]
    assert sorted(map(str, san.get_values_for_type(x509.IPAddress))) == sorted(
        ["10.0.0.1", "192.168.5.7", "fd00::1"])
    assert len(list(san)) == 5   # duplicate address listed once


def test_eku_server_and_client(ca, node_key):
    ca_key, ca_cert = ca
    cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(node_key, "n1"), "n1", ["10.0.0.1"])
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_csr_sans_ignored(ca, node_key):
    ca_key, ca_cert = ca
    evil = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil.example")]))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("evil.example"), x509.IPAddress(ipaddress.ip_address("6.6.6.6"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(node_key, hashes.SHA256())
    )
    cert = pki.sign_node_cert(ca_key, ca_cert, evil, "n2", ["10.0.0.2"])
    san = san_of(cert)
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["localhost", "n2"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n2"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_csr_pem_round_trip(node_key):
    csr = pki.make_csr(node_key, "n1")
    again = x509.load_pem_x509_csr(pki.csr_pem(csr))
    assert again.is_signature_valid
    assert again.subject == csr.subject


def test_cert_and_key_pem_round_trip(ca):
    key, cert = ca
    assert pki.load_cert(pki.cert_pem(cert)) == cert
    loaded = pki.load_key(pki.key_pem(key))
    assert loaded.private_numbers() == key.private_numbers()


def test_fingerprint_format_and_value(ca):
    _key, cert = ca
    fp = pki.fingerprint(cert)
    assert re.fullmatch(r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}", fp), fp
    der = cert.public_bytes(serialization.Encoding.DER)
    assert fp.replace(":", "") == hashlib.sha256(der).hexdigest().upper()


def test_fingerprints_differ_between_certs(ca):
    _key, cert = ca
    _key2, cert2 = pki.create_ca("lab")
    assert pki.fingerprint(cert) != pki.fingerprint(cert2)


def test_normalize_fingerprint_accepts_variants(ca):
    _key, cert = ca
    fp = pki.fingerprint(cert)
    plain = fp.replace(":", "")
    for variant in (fp, fp.lower(), plain, plain.lower(), "sha256:" + fp, "SHA256:" + plain,
                    f"  {fp}\n"):
        assert pki.normalize_fingerprint(variant) == fp, variant


@pytest.mark.parametrize("bad", [
    "", "AB", "AB:" * 30 + "CD", "AB" * 31, "AB" * 33, "AB:" * 31 + "CD:", "GG" * 32,
    "sha1:" + "AB" * 32, "AB-" * 31 + "CD", "AB:" * 15 + "AB" * 17,
])
def test_normalize_fingerprint_rejects(bad):
    with pytest.raises(ValueError):
        pki.normalize_fingerprint(bad)


def test_self_signed_has_sans(node_key):
    cert = pki.self_signed(node_key, "n1", ["10.0.0.1"])
    cert.verify_directly_issued_by(cert)
    san = san_of(cert)
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["localhost", "n1"]


def test_ensure_self_signed_writes_once(tmp_path):
    paths = pki.PkiPaths(tmp_path / "pki")
    pki.ensure_self_signed(paths, "n1", ["10.0.0.1"])
    first = paths.self_signed_cert.read_bytes()
    assert paths.self_signed_key.stat().st_mode & 0o777 == 0o600
    pki.ensure_self_signed(paths, "n1", ["10.0.0.1"])
    assert paths.self_signed_cert.read_bytes() == first
    assert not paths.has_cluster_cert()


def test_certificate_info_as_pve_describes_it(ca, node_key, tmp_path):
    """PVE's get_certificate_info fields (`GET /nodes/{node}/certificates/info`)."""
    ca_key, ca_cert = ca
    cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(node_key, "n1"), "n1",
                              ["10.0.0.1", "fd00::1"])
    path = tmp_path / "node.pem"
    path.write_bytes(pki.cert_pem(cert))
    info = pki.certificate_info(path)
    assert info["filename"] == "node.pem"
    assert info["fingerprint"] == pki.fingerprint(cert)
    # OpenSSL's one-line names; the issuer is the CA's subject
    assert str(info["subject"]).startswith("/") and "/CN=n1" in str(info["subject"])
    assert info["issuer"] == pki.certificate_info(_write(tmp_path / "ca.pem", ca_cert))["subject"]
    assert info["notbefore"] == int(cert.not_valid_before_utc.timestamp())
    assert info["notafter"] == int(cert.not_valid_after_utc.timestamp())
    # DNS names, then addresses; IPv6 as PVE unpacks it (eight 4-digit groups)
    assert sorted(info["san"]) == sorted(["n1", "localhost", "10.0.0.1",
                                          "fd00:0000:0000:0000:0000:0000:0000:0001"])
    assert info["pem"] == pki.cert_pem(cert).decode()
    assert (info["public-key-type"], info["public-key-bits"]) == ("id-ecPublicKey", 256)


def _write(path, cert):
    path.write_bytes(pki.cert_pem(cert))
    return path
