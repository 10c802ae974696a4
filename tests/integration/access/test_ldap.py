"""LDAP realm against a real slapd started by the test on its own loopback address, in
clear text, over ldaps and with STARTTLS (a CA and server certificate made by the test)."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import ldap3
import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

from binome.access import ldap, ops
from binome.access.model import AccessConfig, AclEntry, Realm
from tests.integration.access.client import purge_realm, stored_access_config
from tests.integration.harness import PASSWORD, Cluster, stop_process

urllib3.disable_warnings()

ADDRESS = f"127.{os.getpid() % 200 + 20}.84.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return int(s.getsockname()[1])


PORT = _free_port()
TLS_PORT = _free_port()
BASE = "dc=example,dc=org"
ADMIN = f"cn=admin,{BASE}"
ADMIN_PW = "admin-secret"
SCHEMA = "/etc/ldap/schema"


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
                 issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ADDRESS))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A test CA, slapd's certificate for ADDRESS signed by it, and an unrelated CA."""
    root = tmp_path_factory.mktemp("pki")
    paths: dict[str, str] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("binome test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(ADDRESS, server_key, ca.subject, ca_key, ca=False)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _certificate("some other CA", other_key, None, other_key, ca=True)
    for name, cert in (("ca", ca), ("server", server), ("wrong-ca", other)):
        (root / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[name] = str(root / f"{name}.pem")
    (root / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    paths["server-key"] = str(root / "server.key")
    return paths


@pytest.fixture(scope="module")
def slapd(tmp_path_factory, pki: dict[str, str]) -> Iterator[str]:
    if shutil.which("slapd") is None and not os.path.exists("/usr/sbin/slapd"):
        pytest.skip("slapd is not installed (Debian package slapd)")
    root = tmp_path_factory.mktemp("slapd")
    (root / "db").mkdir()
    conf = root / "slapd.conf"
    conf.write_text(f"""
include {SCHEMA}/core.schema
include {SCHEMA}/cosine.schema
include {SCHEMA}/inetorgperson.schema
include {SCHEMA}/nis.schema
pidfile {root}/slapd.pid
TLSCACertificateFile {pki["ca"]}
TLSCertificateFile {pki["server"]}
TLSCertificateKeyFile {pki["server-key"]}
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix "{BASE}"
rootdn "{ADMIN}"
rootpw {ADMIN_PW}
directory {root}/db
access to * by * read
""")
    log = open(root / "slapd.log", "wb")
    proc = subprocess.Popen(["/usr/sbin/slapd", "-f", str(conf), "-h",
                             f"ldap://{ADDRESS}:{PORT}/ ldaps://{ADDRESS}:{TLS_PORT}/", "-d", "0"],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    try:
        deadline = time.monotonic() + 15
        for port in (PORT, TLS_PORT):
            while True:
                try:
                    socket.create_connection((ADDRESS, port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise AssertionError((root / "slapd.log").read_text()) from None
                    time.sleep(0.1)
        conn = ldap3.Connection(ldap3.Server(ADDRESS, port=PORT), ADMIN, ADMIN_PW,
                                auto_bind=True)
        conn.add(BASE, ["dcObject", "organization"], {"o": "Example", "dc": "example"})
        conn.add(f"ou=people,{BASE}", ["organizationalUnit"], {"ou": "people"})
        conn.add(f"ou=groups,{BASE}", ["organizationalUnit"], {"ou": "groups"})
        for uid, mail in (("alice", "alice@example.org"), ("bob", "bob@example.org"),
                          ("carol", None)):
            attrs = {"cn": uid, "sn": uid.title(), "givenName": uid.title(),
                     "userPassword": f"{uid}-pw"}
            if mail:
                attrs["mail"] = mail
            conn.add(f"uid={uid},ou=people,{BASE}", ["inetOrgPerson"], attrs)
        conn.add(f"cn=ops,ou=groups,{BASE}", ["groupOfNames"],
                 {"member": [f"uid=alice,ou=people,{BASE}", f"uid=bob,ou=people,{BASE}"]})
        conn.add(f"cn=dev,ou=groups,{BASE}", ["groupOfNames"],
                 {"member": [f"uid=carol,ou=people,{BASE}"]})
        conn.unbind()
        yield ADDRESS
    finally:
        stop_process(proc)


def realm(**extra) -> Realm:
    options = {"server1": ADDRESS, "port": PORT, "base_dn": BASE, "user_attr": "uid",
               "bind_dn": ADMIN, "sync_attributes": "email=mail,firstname=givenName,"
               "lastname=sn", **extra}
    return Realm("corp", "ldap", options=options, bind_password=ADMIN_PW)


async def test_password_check(slapd):
    client = ldap.LdapClient(realm())
    assert await client.check_password("alice", "alice-pw")
    assert not await client.check_password("alice", "wrong")
    assert not await client.check_password("alice", "")
    assert not await client.check_password("nobody", "x")
    assert not await client.check_password("*", "alice-pw")
    await client.check_connection()


async def test_bad_bind_password_is_a_clear_error_without_the_secret(slapd):
    bad = Realm("corp", "ldap", options=realm().options, bind_password="nope-secret")
    with pytest.raises(ldap.LdapError) as e:
        await ldap.LdapClient(bad).check_connection()
    assert "nope-secret" not in str(e.value)


@pytest.mark.parametrize("mode,port", [("ldaps", TLS_PORT), ("ldap+starttls", PORT)])
async def test_login_and_sync_over_tls_verified_by_the_ca(slapd, pki, caplog, mode, port):
    caplog.set_level(logging.DEBUG)
    good = realm(mode=mode, port=port, verify=1, capath=pki["ca"])
    client = ldap.LdapClient(good)
    assert await client.check_password("alice", "alice-pw")
    assert not await client.check_password("alice", "wrong")
    directory = await client.read()
    assert {"alice", "bob", "carol"} <= {u.name for u in directory.users}
    plan = ldap.plan_sync(AccessConfig(), good, directory,
                          ldap.SyncOptions.parse(good, {"scope": "both"}))
    assert "alice@corp" in plan.added_users and "ops-corp" in plan.added_groups
    # capath may also be a directory of CA certificates (the default /etc/ssl/certs)
    # holding no test CA: a refusal, as with a wrong CA file
    for wrong in (pki["wrong-ca"], "/etc/ssl/certs"):
        bad = ldap.LdapClient(realm(mode=mode, port=port, verify=1, capath=wrong))
        with pytest.raises(ldap.LdapError) as e:
            await bad.check_connection()
        assert "certificate verify failed" in str(e.value), str(e.value)
        assert f"{ADDRESS}:{port}" in str(e.value)
        with pytest.raises(ldap.LdapError):
            await bad.check_password("alice", "alice-pw")
    # verify=0 (PVE's default) encrypts without checking the certificate
    unverified = ldap.LdapClient(realm(mode=mode, port=port, capath=pki["wrong-ca"]))
    assert await unverified.check_password("bob", "bob-pw")
    assert ADMIN_PW not in caplog.text and "alice-pw" not in caplog.text


async def test_tls_client_options_and_clear_errors(slapd, pki):
    # a missing CA file is a configuration error naming the cause, not a crash
    missing = ldap.LdapClient(realm(mode="ldaps", port=TLS_PORT, verify=1,
                                    capath="/nonexistent/ca.pem"))
    with pytest.raises(ldap.LdapError, match="invalid CA"):
        await missing.check_connection()
    # ldaps spoken to the clear-text port, and no server at all: the server is named
    with pytest.raises(ldap.LdapError, match=f"{ADDRESS}:{PORT}"):
        await ldap.LdapClient(realm(mode="ldaps", port=PORT)).check_connection()
    # a TLS version the server does not speak is refused; the default (tlsv1_2) works
    pinned = ldap.LdapClient(realm(mode="ldaps", port=TLS_PORT, verify=1, capath=pki["ca"],
                                   sslversion="tlsv1"))
    with pytest.raises(ldap.LdapError):
        await pinned.check_connection()
    # a wrong bind password over TLS: a clear error without the secret
    bad = Realm("corp", "ldap", options=realm(mode="ldaps", port=TLS_PORT, verify=1,
                                              capath=pki["ca"]).options,
                bind_password="nope-tls-secret")
    with pytest.raises(ldap.LdapError, match="invalidCredentials") as e:
        await ldap.LdapClient(bad).check_connection()
    assert "nope-tls-secret" not in str(e.value)


async def test_sync_then_a_user_removed_from_the_directory(slapd):
    r = realm()
    cfg = ops.add_realm(AccessConfig(), r)
    directory = await ldap.LdapClient(r).read()
    assert {u.name for u in directory.users} == {"alice", "bob", "carol"}
    options = ldap.SyncOptions.parse(r, {"scope": "both", "remove-vanished": "acl;entry"})
    plan = ldap.plan_sync(cfg, r, directory, options)
    assert plan.added_users == ("alice@corp", "bob@corp", "carol@corp")
    assert set(plan.added_groups) == {"ops-corp", "dev-corp"}
    alice = plan.config.users["alice@corp"]
    assert (alice.email, alice.firstname, alice.lastname) == ("alice@example.org", "Alice",
                                                              "Alice")
    assert plan.config.members("ops-corp") == ["alice@corp", "bob@corp"]
    cfg = ops.modify_acl(plan.config, "/vms", ["PVEVMUser"], users=["bob@corp"])

    conn = ldap3.Connection(ldap3.Server(ADDRESS, port=PORT), ADMIN, ADMIN_PW, auto_bind=True)
    conn.delete(f"uid=bob,ou=people,{BASE}")
    conn.modify(f"cn=ops,ou=groups,{BASE}",
                {"member": [(ldap3.MODIFY_DELETE, [f"uid=bob,ou=people,{BASE}"])]})
    conn.unbind()

    directory = await ldap.LdapClient(r).read()
    dry = ldap.plan_sync(cfg, r, directory, ldap.SyncOptions.parse(
        r, {"scope": "both", "remove-vanished": "acl;entry", "dry-run": 1}))
    assert dry.removed_users == ("bob@corp",) and dry.removed_acl == 1
    assert "removed user: bob@corp" in dry.summary()
    assert "bob@corp" in cfg.users            # a dry run is the plan, not applied
    assert "bob@corp" not in dry.config.users
    assert dry.config.acl == ()
    assert dry.config.members("ops-corp") == ["alice@corp"]
    # without remove-vanished the vanished user stays
    keep = ldap.plan_sync(cfg, r, directory, ldap.SyncOptions.parse(r, {"scope": "users"}))
    assert "bob@corp" in keep.config.users and keep.removed_users == ()
    assert AclEntry("/vms", "user", "bob@corp", "PVEVMUser") in keep.config.acl


# -- through the API of a real cluster ----------------------------------------------------

def _login(cluster: Cluster, user: str, password: str) -> requests.Response:
    return requests.post(f"https://{cluster['n1'].address}:8006/api2/json/access/ticket",
                         data={"username": user, "password": password}, verify=False,
                         timeout=30)


def _sync(px: ProxmoxAPI, realm_id: str, **options: Any) -> list[str]:
    upid = px.access.domains(realm_id).sync.post(**options)
    status = Tasks.blocking_status(px, upid, timeout=60, polling_interval=0.2)
    assert status is not None and status["exitstatus"] == "OK", status
    return [line["t"] for line in px.nodes("n1").tasks(upid).log.get()]


def test_realm_api_sync_and_login(slapd: str, pki: dict[str, str], cluster: Cluster) -> None:
    px = ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                    verify_ssl=False, timeout=30)
    realm_id = f"ld{uuid.uuid4().hex[:6]}"
    dave = f"dave{uuid.uuid4().hex[:4]}"
    conn = ldap3.Connection(ldap3.Server(ADDRESS, port=PORT), ADMIN, ADMIN_PW, auto_bind=True)
    assert conn.add(f"uid={dave},ou=people,{BASE}", ["inetOrgPerson"],
                    {"cn": dave, "sn": "Dave", "userPassword": "dave-pw", "mail": "d@x.org"})
    assert conn.add(f"cn=web{dave},ou=groups,{BASE}", ["groupOfNames"],
                    {"member": [f"uid={dave},ou=people,{BASE}"]})
    # over ldaps, the server's certificate checked against the test's CA
    options = {"server1": ADDRESS, "port": TLS_PORT, "mode": "ldaps", "verify": 1,
               "capath": pki["ca"], "base_dn": BASE, "user_attr": "uid",
               "bind_dn": ADMIN, "sync_attributes": "email=mail"}
    try:
        # bad input: a clear per-parameter error, nothing stored
        with pytest.raises(ResourceException) as e:
            px.access.domains.post(realm=realm_id, type="ldap", **{**options, "mode": "bogus"})
        assert e.value.status_code == 400 and "mode" in e.value.errors
        with pytest.raises(ResourceException) as e:
            px.access.domains.post(realm=realm_id, type="ldap", server1=ADDRESS)
        assert e.value.status_code == 400 and "base_dn" in e.value.errors
        assert realm_id not in stored_access_config(cluster).realms

        px.access.domains.post(realm=realm_id, type="ldap", password=ADMIN_PW,
                               comment="directory", **options)
        listed = {r["realm"]: r for r in px.access.domains.get()}
        assert {"pam", "pve", realm_id} <= set(listed)
        assert listed[realm_id]["type"] == "ldap"
        # the login form reads the list without a ticket
        anon = requests.get(f"https://{cluster['n1'].address}:8006/api2/json/access/domains",
                            verify=False, timeout=10)
        assert anon.status_code == 200 and realm_id in anon.text and ADMIN_PW not in anon.text
        got = px.access.domains(realm_id).get()
        assert got["bind_dn"] == ADMIN and got["comment"] == "directory"
        assert "password" not in got and ADMIN_PW not in str(got)
        assert stored_access_config(cluster).realms[realm_id].bind_password == ADMIN_PW

        # a dry run logs the plan and stores nothing
        log = _sync(px, realm_id, scope="both", **{"dry-run": 1})
        assert any(line.startswith("added user:") and f"{dave}@{realm_id}" in line
                   for line in log), log
        assert f"{dave}@{realm_id}" not in stored_access_config(cluster).users

        log = _sync(px, realm_id, scope="both", **{"remove-vanished": "acl;entry"})
        assert any(f"{dave}@{realm_id}" in line for line in log), log
        cfg = stored_access_config(cluster)
        assert cfg.users[f"{dave}@{realm_id}"].email == "d@x.org"
        assert cfg.members(f"web{dave}-{realm_id}") == [f"{dave}@{realm_id}"]

        # a synced user logs in with the directory's password, not another
        r = _login(cluster, f"{dave}@{realm_id}", "dave-pw")
        assert r.status_code == 200, r.text
        assert r.json()["data"]["username"] == f"{dave}@{realm_id}"
        assert _login(cluster, f"{dave}@{realm_id}", "wrong").status_code == 401
        assert _login(cluster, f"{dave}@{realm_id}", "").status_code in (400, 401)

        # STARTTLS on the clear-text port works the same
        px.access.domains(realm_id).put(mode="ldap+starttls", port=PORT)
        assert _login(cluster, f"{dave}@{realm_id}", "dave-pw").status_code == 200
        # a CA that did not sign the server's certificate: no login, and a sync fails
        # with the reason in its task log (never the bind password)
        px.access.domains(realm_id).put(capath=pki["wrong-ca"])
        assert _login(cluster, f"{dave}@{realm_id}", "dave-pw").status_code == 401
        upid = px.access.domains(realm_id).sync.post(scope="both")
        status = Tasks.blocking_status(px, upid, timeout=60, polling_interval=0.2)
        assert status is not None and status["exitstatus"] != "OK"
        log = "\n".join(line["t"] for line in px.nodes("n1").tasks(upid).log.get())
        assert "certificate verify failed" in log + status["exitstatus"], (log, status)
        assert ADMIN_PW not in log + str(status)
        px.access.domains(realm_id).put(capath=pki["ca"], mode="ldaps", port=TLS_PORT)

        # gone from the directory: gone at the next sync, and no login
        assert conn.delete(f"uid={dave},ou=people,{BASE}")
        log = _sync(px, realm_id, scope="both", **{"remove-vanished": "acl;entry"})
        assert any(line.startswith("removed user:") and f"{dave}@{realm_id}" in line
                   for line in log), log
        assert f"{dave}@{realm_id}" not in stored_access_config(cluster).users
        assert _login(cluster, f"{dave}@{realm_id}", "dave-pw").status_code == 401

        px.access.domains(realm_id).put(comment="changed", delete="server2")
        assert px.access.domains(realm_id).get()["comment"] == "changed"
        with pytest.raises(ResourceException) as e:
            px.access.domains("pam").delete()
        assert e.value.status_code == 500
    finally:
        conn.delete(f"uid={dave},ou=people,{BASE}")
        conn.delete(f"cn=web{dave},ou=groups,{BASE}")
        conn.unbind()
        purge_realm(cluster, realm_id)
