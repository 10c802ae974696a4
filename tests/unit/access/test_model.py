"""Ids, paths and records are validated with PVE-style per-parameter errors."""

import pytest

from binome.access.model import (
    AccessConfig,
    AclEntry,
    Group,
    Pool,
    Realm,
    Token,
    User,
    ValidationError,
    normalize_path,
    split_tokenid,
    split_userid,
    verify_acl_path,
    verify_poolid,
)


def errors_of(fn, *args, **kw):
    with pytest.raises(ValidationError) as e:
        fn(*args, **kw)
    return e.value.errors


def test_userids():
    assert split_userid("alice@pve") == ("alice", "pve")
    assert split_userid("a.b-c@corp.ldap") == ("a.b-c", "corp.ldap")
    for bad in ("alice", "al ice@pve", "a:b@pve", "a/b@pve", "@pve", "alice@1x", "a@p",
                "x" * 61 + "@pve"):
        assert errors_of(split_userid, bad) == {"userid": "invalid format"}, bad


def test_tokenids():
    assert split_tokenid("alice@pve!terraform") == ("alice@pve", "terraform")
    for bad in ("alice@pve", "alice@pve!", "alice@pve!1abc", "alice!tok", "alice@pve!a b"):
        assert errors_of(split_tokenid, bad) == {"tokenid": "invalid format"}, bad


def test_paths():
    assert normalize_path("vms//100/") == "/vms/100"
    assert normalize_path("/") == "/"
    assert normalize_path("/vms/1 00") is None
    for good in ("/", "/vms", "/vms/100", "/pool/a/b/c", "/access/realm/corp",
                 "/access/groups/ops", "/nodes/n1", "/storage/local", "/sdn/zones/z/v/10",
                 "/mapping/pci/gpu"):
        assert verify_acl_path(good) == good
    for bad in ("/vms/99", "/vms/abc", "/foo", "/pool/a/b/c/d", "/access/users",
                "/vms/100/x", "/mapping/x"):
        assert errors_of(verify_acl_path, bad) == {"path": f"invalid ACL path '{bad}'"}


def test_pool_ids():
    assert verify_poolid("web/dmz", create=True) == "web/dmz"
    assert "poolid" in errors_of(verify_poolid, "a/b/c/d")
    assert errors_of(verify_poolid, "1web", create=True) == {
        "poolid": "pool name must start with a letter"}
    assert verify_poolid("1web") == "1web"


def test_user_fields():
    u = User("alice@pve", email="a@example.org", groups=("ops",), password_hash="$argon2")
    assert u.to_public() == {"userid": "alice@pve", "enable": 1, "expire": 0,
                             "groups": ["ops"], "email": "a@example.org"}
    assert errors_of(User, "alice@pve", email="nope") == {
        "email": "value does not look like a valid email address"}
    assert "comment" in errors_of(User, "alice@pve", comment="x" * 2049)
    assert "groups" in errors_of(User, "alice@pve", groups=("bad group",))
    assert not User("a@pve", enable=False).active(0)
    assert not User("a@pve", expire=100).active(100)
    assert User("a@pve", expire=100).active(99)
    assert User("root@pam", enable=False).active(0)


def test_token_public_view_has_no_secret():
    t = Token("alice@pve!tf", secret_hash="$argon2id$...", comment="terraform")
    assert t.to_public() == {"tokenid": "tf", "expire": 0, "privsep": 1,
                             "comment": "terraform"}
    assert (t.userid, t.name) == ("alice@pve", "tf")


def test_realms():
    r = Realm("corp", "ldap", options={"server1": "10.0.0.1", "base_dn": "dc=x",
                                       "user_attr": "uid", "bind_dn": "cn=b"},
              bind_password="s3cret")
    assert "s3cret" not in str(r.to_public())
    assert errors_of(Realm, "corp", "ldap", options={"server1": "x", "base_dn": "dc=x"}) == {
        "user_attr": "property is missing and it is not optional"}
    assert errors_of(Realm, "pam", "ldap", options={})["realm"]
    assert errors_of(Realm, "x2", "pve")["realm"]
    assert "frob" in errors_of(Realm, "corp", "ad", options={"server1": "x", "frob": 1})
    assert errors_of(Realm, "corp", "pve2") == {"type": "invalid realm type 'pve2'"}
    assert errors_of(Realm, "pve", "pve", bind_password="x")["password"]
    Realm("oidc", "openid", options={"issuer-url": "https://id", "client-id": "c"})
    Realm("pve", "pve", tfa="type=oath,digits=6,step=30")
    assert "tfa" in errors_of(Realm, "pve", "pve", tfa="type=yubico")


def test_acl_entries_and_config_checks():
    cfg = AccessConfig(users={"alice@pve": User("alice@pve")}, groups={"ops": Group("ops")},
                       roles={"Ops": frozenset({"VM.Audit"})})
    cfg.check_acl_entry(AclEntry("/vms/100", "user", "alice@pve", "Ops"))
    cfg.check_acl_entry(AclEntry("/", "group", "ops", "PVEAuditor"))
    assert errors_of(cfg.check_acl_entry, AclEntry("/", "user", "bob@pve", "Ops")) == {
        "users": "user 'bob@pve' does not exist"}
    assert errors_of(cfg.check_acl_entry, AclEntry("/", "group", "ops", "Nope")) == {
        "roles": "role 'Nope' does not exist"}
    assert errors_of(cfg.check_acl_entry, AclEntry("/foo", "group", "ops", "Ops")) == {
        "path": "invalid ACL path '/foo'"}
    assert "tokens" in errors_of(cfg.check_acl_entry,
                                 AclEntry("/", "token", "alice@pve!xy", "Ops"))
    assert errors_of(AclEntry, "vms/100", "user", "alice@pve", "Ops")["path"]
    assert errors_of(AclEntry, "/", "robot", "x", "Ops") == {
        "type": "invalid ACL principal type 'robot'"}


def test_pool_members_and_lookup():
    p = Pool("web", vms=frozenset({100, 101}), storage=frozenset({"local"}))
    cfg = AccessConfig(pools={"web": p, "db": Pool("db", storage=frozenset({"local"}))})
    assert cfg.pool_of_vm(100) == "web"
    assert cfg.pool_of_vm(102) is None
    assert cfg.pools_of_storage("local") == ["db", "web"]
    assert "vms" in errors_of(Pool, "x", vms=frozenset({99}))
