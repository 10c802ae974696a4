"""Method permission declarations checked as PVE's exec_api2_perm_check does."""

from binome.access.evaluator import Evaluator
from binome.access.model import AccessConfig, AclEntry, Group, Pool, Token, User
from binome.access.permission import (
    ANY_USER,
    ROOT_ONLY,
    WORLD,
    And,
    AnyUser,
    Or,
    Perm,
    PermModify,
    UseridGroup,
    UseridRealm,
    UseridSelf,
    check,
    describe,
    refuses_tokens,
)

CFG = AccessConfig(
    users={"alice@pve": User("alice@pve", groups=("ops",)), "bob@pve": User("bob@pve")},
    groups={"ops": Group("ops")},
    pools={"P": Pool("P", vms=frozenset({100}))},
    tokens={"alice@pve!tf": Token("alice@pve!tf", "h", privsep=False),
            "root@pam!ci": Token("root@pam!ci", "h")},
    acl=(AclEntry("/pool/P", "user", "alice@pve", "PVEVMAdmin"),
         AclEntry("/vms/101", "user", "alice@pve", "PVETemplateUser"),
         AclEntry("/access/groups/ops", "user", "bob@pve", "PVEUserAdmin")),
)
EV = Evaluator(CFG)
CLONE = And(Perm("/vms/{vmid}", ("VM.Clone",)),
            Or(Perm("/vms/{newid}", ("VM.Allocate",)),
               Perm("/pool/{pool}", ("VM.Allocate",), require_param="pool")))


def test_perm_with_params():
    power = Perm("/vms/{vmid}", ("VM.PowerMgmt",))
    assert check(power, EV, "alice@pve", {"vmid": 100})
    assert not check(power, EV, "alice@pve", {"vmid": 101})
    assert not check(power, EV, "alice@pve", {})
    assert check(power, EV, "alice@pve!tf", {"vmid": 100})
    snap = Perm("/vms/{vmid}", ("VM.Snapshot", "VM.Snapshot.Rollback"), any=True)
    assert check(snap, EV, "alice@pve", {"vmid": "100"})


def test_clone_declaration_as_pve():
    assert check(CLONE, EV, "alice@pve", {"vmid": 101, "newid": 100})
    assert check(CLONE, EV, "alice@pve", {"vmid": 101, "newid": 999, "pool": "P"})
    assert not check(CLONE, EV, "alice@pve", {"vmid": 101, "newid": 999})
    assert not check(CLONE, EV, "bob@pve", {"vmid": 101, "newid": 100})


def test_world_any_root():
    assert check(WORLD, EV, "nobody@pve", {})
    assert check(ANY_USER, EV, "bob@pve", {})
    assert check(ROOT_ONLY, EV, "root@pam", {})
    assert not check(ROOT_ONLY, EV, "root@pam!ci", {})
    assert not check(ROOT_ONLY, EV, "alice@pve", {})
    assert check(Perm("/", ("Sys.Modify",)), EV, "root@pam", {})
    assert not check(Perm("/", ("Sys.Modify",)), EV, "root@pam!ci", {})


def test_userid_checks():
    assert check(UseridSelf(), EV, "bob@pve", {"userid": "bob@pve"})
    assert not check(UseridSelf(), EV, "bob@pve", {"userid": "alice@pve"})
    assert check(UseridGroup(("User.Modify",)), EV, "bob@pve", {"userid": "alice@pve"})
    assert not check(UseridGroup(("User.Modify",), "create"), EV, "bob@pve",
                     {"userid": "new@pve"})
    assert check(UseridGroup(("User.Modify",), "create"), EV, "bob@pve",
                 {"userid": "new@pve", "groups": "ops"})
    assert not check(UseridRealm(), EV, "bob@pve", {"userid": "new@pve"})


def test_a_token_is_never_its_user_for_self():
    # PVE compares the full authid: 'alice@pve!tf' is not 'alice@pve', privsep or not,
    # so a token cannot lift its own privsep nor mint tokens for its user (issue 11 audit)
    cfg = AccessConfig(
        users={"carol@pve": User("carol@pve")},
        tokens={"carol@pve!sep": Token("carol@pve!sep", "h", privsep=True),
                "carol@pve!full": Token("carol@pve!full", "h", privsep=False)})
    ev = Evaluator(cfg)
    token_perm = Or(UseridSelf(), UseridGroup(("User.Modify",)))
    assert check(token_perm, ev, "carol@pve", {"userid": "carol@pve", "tokenid": "sep"})
    for authid in ("carol@pve!sep", "carol@pve!full"):
        assert not check(UseridSelf(), ev, authid, {"userid": "carol@pve"})
        assert not check(token_perm, ev, authid, {"userid": "carol@pve", "tokenid": "sep"})
        assert not check(token_perm, ev, authid, {"userid": "carol@pve", "tokenid": "new"})
    # a token with the real privilege (its user's, unseparated) passes through it
    assert check(token_perm, EV, "alice@pve!tf", {"userid": "alice@pve"}) is False
    assert check(UseridGroup(("User.Modify",)), Evaluator(AccessConfig(
        users={"bob@pve": User("bob@pve"), "alice@pve": User("alice@pve", groups=("ops",))},
        groups={"ops": Group("ops")},
        tokens={"bob@pve!bt": Token("bob@pve!bt", "h", privsep=False)},
        acl=(AclEntry("/access/groups/ops", "user", "bob@pve", "PVEUserAdmin"),))),
        "bob@pve!bt", {"userid": "alice@pve"})


def test_perm_modify():
    assert check(PermModify("{path}"), EV, "alice@pve", {"path": "/vms/100"})
    assert not check(PermModify("{path}"), EV, "alice@pve", {"path": "/"})
    assert not check(PermModify(""), EV, "alice@pve", {})


def test_tokens_refused_where_pve_refuses_them():
    assert refuses_tokens("alice@pve!tf", allow_token=False)
    assert not refuses_tokens("alice@pve", allow_token=False)
    assert not refuses_tokens("alice@pve!tf", allow_token=True)


def test_describe():
    assert describe(CLONE) == ("(VM.Clone on /vms/{vmid} and (VM.Allocate on /vms/{newid} or "
                               "VM.Allocate on /pool/{pool} (needs pool)))")
    assert describe(AnyUser("list filtered by VM.Audit")) == \
        "any user; list filtered by VM.Audit"
    assert describe(ROOT_ONLY) == "root@pam only"
