"""Access changes refuse bad input with PVE's texts and change nothing."""

import pytest

from binome.access import ops
from binome.access.model import AccessConfig, AclEntry, Group, Realm, TfaEntry, TfaUser, User
from binome.access.model import ValidationError as VE
from binome.access.ops import AccessError

LDAP = {"server1": "ldap.example", "base_dn": "dc=example", "user_attr": "uid"}


@pytest.fixture
def cfg():
    c = AccessConfig()
    c = ops.add_group(c, Group("ops", "operators"))
    c = ops.add_user(c, User("alice@pve", groups=("ops",)))
    c = ops.add_user(c, User("bob@pve"))
    c = ops.add_pool(c, "web")
    return c


def test_users(cfg):
    with pytest.raises(AccessError, match="already exists"):
        ops.add_user(cfg, User("alice@pve"))
    with pytest.raises(AccessError, match="already exists"):
        ops.add_user(cfg, User("root@pam"))
    with pytest.raises(VE) as e:
        ops.add_user(cfg, User("carol@corp"))
    assert e.value.errors == {"userid": "domain 'corp' does not exist"}
    with pytest.raises(VE) as e:
        ops.add_user(cfg, User("carol@pve", groups=("nope",)))
    assert e.value.errors == {"groups": "no such group 'nope'"}
    c = ops.update_user(cfg, "bob@pve", {"email": "b@x.org", "enable": False}, groups=["ops"])
    assert c.users["bob@pve"].groups == ("ops",) and not c.users["bob@pve"].enable
    c = ops.update_user(c, "bob@pve", {}, delete=["email", "enable"])
    assert c.users["bob@pve"].email == "" and c.users["bob@pve"].enable
    with pytest.raises(VE):
        ops.update_user(cfg, "bob@pve", {"password": "x"})
    with pytest.raises(AccessError, match="does not exist"):
        ops.update_user(cfg, "ghost@pve", {})
    c = ops.add_group(cfg, Group("dev"))
    c = ops.update_user(c, "alice@pve", {}, groups=["dev"], append=True)
    assert c.users["alice@pve"].groups == ("ops", "dev")
    assert c.members("dev") == ["alice@pve"]


def test_delete_user_drops_tokens_acl_and_tfa(cfg):
    c = ops.add_token(cfg, "alice@pve", "tf", "hash", now=0)
    c = ops.modify_acl(c, "/", ["PVEAuditor"], users=["alice@pve", "bob@pve"],
                       tokens=["alice@pve!tf"], groups=["ops"])
    c = ops.set_tfa(c, TfaUser("alice@pve", (TfaEntry("r", "recovery"),)))
    assert c.users["alice@pve"].keys == "x"
    c = ops.delete_user(c, "alice@pve")
    assert "alice@pve" not in c.users and not c.tokens and "alice@pve" not in c.tfa
    assert {(e.ugid_type, e.ugid) for e in c.acl} == {("user", "bob@pve"), ("group", "ops")}
    with pytest.raises(AccessError):
        ops.delete_user(c, "root@pam")


def test_groups(cfg):
    with pytest.raises(AccessError, match="already exists"):
        ops.add_group(cfg, Group("ops"))
    c = ops.modify_acl(cfg, "/vms", ["PVEVMUser"], groups=["ops"])
    c = ops.delete_group(c, "ops")
    assert c.users["alice@pve"].groups == () and not c.acl
    with pytest.raises(AccessError, match="does not exist"):
        ops.delete_group(c, "ops")


def test_roles(cfg):
    c = ops.add_role(cfg, "Ops", "VM.Audit")
    c = ops.update_role(c, "Ops", "VM.Console", append=True)
    assert c.roles["Ops"] == {"VM.Audit", "VM.Console"}
    c = ops.update_role(c, "Ops", ["Sys.Audit"])
    assert c.roles["Ops"] == {"Sys.Audit"}
    with pytest.raises(AccessError, match="already exists"):
        ops.add_role(c, "Ops")
    with pytest.raises(AccessError, match="built-in"):
        ops.update_role(c, "PVEAdmin", "VM.Audit")
    with pytest.raises(AccessError, match="built-in"):
        ops.delete_role(c, "NoAccess")
    c = ops.modify_acl(c, "/", ["Ops"], users=["bob@pve"])
    c = ops.delete_role(c, "Ops")
    assert len(c.acl) == 1 and c.role_privs("Ops") is None


def test_acl(cfg):
    c = ops.modify_acl(cfg, "vms//100/", ["PVEVMUser", "PVEAuditor"], users=["bob@pve"],
                       propagate=False)
    assert {(e.path, e.roleid, e.propagate) for e in c.acl} == {
        ("/vms/100", "PVEVMUser", False), ("/vms/100", "PVEAuditor", False)}
    c = ops.modify_acl(c, "/vms/100", ["PVEVMUser"], users=["bob@pve"])   # replaces
    assert len(c.acl) == 2 and AclEntry("/vms/100", "user", "bob@pve", "PVEVMUser") in c.acl
    c = ops.modify_acl(c, "/vms/100", ["PVEVMUser", "PVEAuditor"], users=["bob@pve"],
                       delete=True)
    assert c.acl == ()
    assert ops.modify_acl(cfg, "/", ["Administrator"], users=["root@pam"]).acl == ()
    for kwargs, param in ((dict(users=["ghost@pve"]), "users"),
                          (dict(groups=["nope"]), "groups"),
                          (dict(tokens=["bob@pve!nope"]), "tokens")):
        with pytest.raises(VE) as e:
            ops.modify_acl(cfg, "/", ["PVEAuditor"], **kwargs)
        assert param in e.value.errors
    with pytest.raises(VE) as e:
        ops.modify_acl(cfg, "/", ["Nope"], users=["bob@pve"])
    assert e.value.errors == {"roles": "role 'Nope' does not exist"}
    with pytest.raises(VE):
        ops.modify_acl(cfg, "/nowhere", ["PVEAuditor"], users=["bob@pve"])
    with pytest.raises(AccessError):
        ops.modify_acl(cfg, "/", ["PVEAuditor"])


def test_pools(cfg):
    with pytest.raises(AccessError, match="already exists"):
        ops.add_pool(cfg, "web")
    with pytest.raises(AccessError, match="parent pool"):
        ops.add_pool(cfg, "x/y")
    c = ops.add_pool(cfg, "web/dmz")
    c = ops.add_pool(c, "db")
    c = ops.update_pool(c, "web", vms=[100, 101], storage=["local"], comment="web farm")
    assert c.pools["web"].vms == {100, 101} and c.pools["web"].comment == "web farm"
    with pytest.raises(AccessError) as moved:
        ops.update_pool(c, "db", vms=[100])
    assert str(moved.value) == "VM 100 belongs already to pool 'web' and 'allow-move' is " \
                               "not set"
    for again in ({"vms": [100]}, {"vms": [100], "allow_move": True}, {"storage": ["local"]}):
        with pytest.raises(AccessError, match="is already a pool member"):
            ops.update_pool(c, "web", **again)
    c2 = ops.update_pool(c, "db", vms=[100], allow_move=True)
    assert c2.pool_of_vm(100) == "db" and c2.pools["web"].vms == {101}
    with pytest.raises(AccessError, match="does not exist"):
        ops.update_pool(c, "db", vms=[555], existing_vms=[100, 101])
    with pytest.raises(AccessError, match="not a pool member"):
        ops.update_pool(c, "db", vms=[101], delete=True)
    with pytest.raises(AccessError, match="not empty"):
        ops.delete_pool(c, "web")
    c = ops.update_pool(c, "web", vms=[100, 101], storage=["local"], delete=True)
    c = ops.modify_acl(c, "/pool/db", ["PVEPoolUser"], users=["bob@pve"])
    c = ops.delete_pool(c, "db")
    assert c.acl == ()
    with pytest.raises(AccessError, match="not empty"):
        ops.delete_pool(c, "web")  # has web/dmz
    c = ops.modify_acl(ops.update_pool(c, "web", vms=[100]), "/vms/100", ["PVEVMUser"],
                       users=["bob@pve"])
    c = ops.remove_vm(c, 100)
    assert c.pool_of_vm(100) is None and c.acl == ()


def test_tokens(cfg):
    c = ops.add_token(cfg, "alice@pve", "tf", "h1", comment="terraform", now=0)
    with pytest.raises(AccessError, match="already exists"):
        ops.add_token(c, "alice@pve", "tf", "h2", now=0)
    with pytest.raises(VE):
        ops.add_token(c, "alice@pve", "1bad", "h2", now=0)
    disabled = ops.update_user(c, "bob@pve", {"enable": False})
    with pytest.raises(AccessError, match="disabled"):
        ops.add_token(disabled, "bob@pve", "tf", "h", now=0)
    with pytest.raises(AccessError, match="does not exist"):
        ops.add_token(c, "ghost@pve", "tf", "h", now=0)
    c = ops.update_token(c, "alice@pve!tf", privsep=False, secret_hash="h3")
    assert not c.tokens["alice@pve!tf"].privsep and c.tokens["alice@pve!tf"].secret_hash == "h3"
    c = ops.modify_acl(c, "/", ["PVEAuditor"], tokens=["alice@pve!tf"])
    c = ops.delete_token(c, "alice@pve!tf")
    assert not c.tokens and not c.acl
    with pytest.raises(AccessError, match="no such token"):
        ops.delete_token(c, "alice@pve!tf")


def test_realms(cfg):
    c = ops.add_realm(cfg, Realm("corp", "ldap", options=LDAP, bind_password="pw", default=True))
    with pytest.raises(AccessError, match="already exists"):
        ops.add_realm(c, Realm("corp", "ldap", options=LDAP))
    with pytest.raises(AccessError, match="already exists"):
        ops.add_realm(c, Realm("pve", "pve"))
    c = ops.update_realm(c, "corp", {"port": 1389, "comment": "HQ"})
    assert c.realms["corp"].options["port"] == 1389 and c.realms["corp"].bind_password == "pw"
    c = ops.update_realm(c, "corp", {}, delete=["password", "comment"])
    assert c.realms["corp"].bind_password is None and c.realms["corp"].comment == ""
    with pytest.raises(VE):
        ops.update_realm(c, "corp", {"mode": "carrier-pigeon"})
    c = ops.add_realm(c, Realm("ad1", "ad", options={"server1": "dc1"}, default=True))
    assert not c.realms["corp"].default
    c = ops.update_realm(c, "pve", {"tfa": "type=oath"})
    assert c.realms["pve"].tfa == "type=oath"
    with pytest.raises(AccessError):
        ops.delete_realm(c, "pam")
    c = ops.delete_realm(c, "corp")
    assert "corp" not in c.realms
