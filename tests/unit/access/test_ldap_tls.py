"""How an LDAP realm's TLS options become a connection (PVE's connect_and_bind): scheme and
port, which CA store, client certificate, pinned TLS version. No directory is contacted
here; the handshakes themselves are tested against slapd in
tests/integration/access/test_ldap.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from binome.access.ldap import LdapClient, LdapError
from binome.access.model import Realm


def _client(**options: object) -> LdapClient:
    return LdapClient(Realm("corp", "ldap", options={"server1": "ldap1.example",
                                                      "server2": "ldap2.example",
                                                      "base_dn": "dc=x", "user_attr": "uid",
                                                      **options}))


@pytest.mark.parametrize("options,use_ssl,port,starttls", [
    ({}, False, 389, False),
    ({"mode": "ldaps"}, True, 636, False),
    ({"mode": "ldap+starttls"}, False, 389, True),
    ({"mode": "ldaps", "port": 1636}, True, 1636, False),
])
def test_scheme_and_port(options, use_ssl, port, starttls) -> None:
    client = _client(**options)
    servers = client._servers()
    assert [s.host for s in servers] == ["ldap1.example", "ldap2.example"]
    assert {(s.ssl, s.port) for s in servers} == {(use_ssl, port)}
    assert (client._mode() == "ldap+starttls") is starttls
    assert (client._tls() is None) is (client._mode() == "ldap")


def test_verify_uses_capath_as_file_or_directory(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a handshake")
    tls = _client(mode="ldaps", verify=1, capath=str(ca))._tls()
    assert tls is not None and tls.validate == ssl.CERT_REQUIRED
    assert (tls.ca_certs_file, tls.ca_certs_path) == (str(ca), None)
    tls = _client(mode="ldaps", verify=1, capath=str(tmp_path))._tls()
    assert tls is not None and (tls.ca_certs_file, tls.ca_certs_path) == (None, str(tmp_path))
    tls = _client(mode="ldap+starttls", verify=1)._tls()              # PVE's default store
    assert tls is not None and tls.ca_certs_path == "/etc/ssl/certs"


def test_client_certificate_only_when_verifying(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_text("x")
    key.write_text("x")
    tls = _client(mode="ldaps", verify=1, capath=str(tmp_path), cert=str(cert),
                  certkey=str(key))._tls()
    assert tls is not None
    assert (tls.certificate_file, tls.private_key_file) == (str(cert), str(key))
    # PVE passes clientcert/clientkey only with verify=1, and checks nothing without it
    tls = _client(mode="ldaps", cert=str(cert), certkey=str(key))._tls()
    assert tls is not None and tls.validate == ssl.CERT_NONE
    assert tls.certificate_file is None and tls.ca_certs_file is None


def test_tls_version_is_pinned_default_tlsv1_2() -> None:
    tls = _client(mode="ldaps")._tls()
    assert tls is not None and tls.pinned_version == ssl.TLSVersion.TLSv1_2
    tls = _client(mode="ldaps", sslversion="tlsv1_3")._tls()
    assert tls is not None and tls.pinned_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(LdapError, match="sslversion"):
        _client(mode="ldaps", sslversion="sslv3")._tls()


def test_missing_ca_file_is_a_clear_error() -> None:
    with pytest.raises(LdapError, match="invalid CA public key file"):
        _client(mode="ldaps", verify=1, capath="/nonexistent/ca.pem")._tls()


async def test_unreachable_servers_are_each_named() -> None:
    client = LdapClient(Realm("corp", "ldap", options={
        "server1": "127.0.0.1", "server2": "127.0.0.1", "port": 9, "base_dn": "dc=x",
        "user_attr": "uid"}),
        timeout=2)
    with pytest.raises(LdapError) as e:
        await client.check_connection()
    assert str(e.value).startswith("LDAP connection failed: 127.0.0.1:9: ")
    assert str(e.value).count("127.0.0.1:9") == 2
