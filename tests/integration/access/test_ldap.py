"""LDAP realm against a real slapd started by the test on its own loopback address."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import ldap3
import pytest

from binome.access import ldap, ops
from binome.access.model import AccessConfig, AclEntry, Realm

ADDRESS = f"127.{os.getpid() % 200 + 20}.84.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return int(s.getsockname()[1])


PORT = _free_port()
BASE = "dc=example,dc=org"
ADMIN = f"cn=admin,{BASE}"
ADMIN_PW = "admin-secret"
SCHEMA = "/etc/ldap/schema"


@pytest.fixture(scope="module")
def slapd(tmp_path_factory) -> Iterator[str]:
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
                             f"ldap://{ADDRESS}:{PORT}/", "-d", "0"],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((ADDRESS, PORT), timeout=0.5).close()
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
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
