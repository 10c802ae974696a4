"""Permission evaluation against PVE's documented rules (pveum.adoc, RPCEnvironment.pm)."""

import pytest

from binome.access.evaluator import Evaluator, PermissionCheckFailed
from binome.access.model import AccessConfig, AclEntry, Group, Pool, Token, User
from binome.access.privileges import ALL_PRIVILEGES
from binome.access.roles import BUILTIN_ROLES

ALICE = "alice@pve"


def config(acl=(), users=None, tokens=(), pools=None, roles=None):
    users = users or {ALICE: User(ALICE, groups=("ops",)), "bob@pve": User("bob@pve")}
    return AccessConfig(
        users=users, groups={"ops": Group("ops"), "dev": Group("dev")},
        roles=roles or {}, acl=tuple(acl),
        tokens={t.tokenid: t for t in tokens},
        pools=pools if pools is not None else {
            "P": Pool("P", vms=frozenset({100}), storage=frozenset({"local"}))},
    )


def acl(path, who, role, propagate=True, kind=None):
    kind = kind or ("token" if "!" in who else "user" if "@" in who else "group")
    return AclEntry(path, kind, who, role, propagate)


def privs(ev, path, who=ALICE):
    return set(ev.privileges(who, path))


ROLES = sorted(BUILTIN_ROLES)
PATHS = ("/", "/vms/100", "/vms/101", "/storage/local", "/nodes/n1", "/pool/P")

# Where a role granted (propagating) on a path applies (PVE: propagation down the tree;
# pool ACLs reach exactly the pool's members).
REACH = {
    "/": set(PATHS),
    "/vms/100": {"/vms/100"},
    "/pool/P": {"/pool/P", "/vms/100", "/storage/local"},
}


@pytest.mark.parametrize("grant_path", sorted(REACH))
@pytest.mark.parametrize("role", ROLES)
def test_permission_matrix(role, grant_path):
    for kind_who in (ALICE, "ops"):   # a user grant and a group grant behave alike alone
        ev = Evaluator(config([acl(grant_path, kind_who, role)]))
        for path in PATHS:
            expected = BUILTIN_ROLES[role] if path in REACH[grant_path] else set()
            assert privs(ev, path) == expected, (role, grant_path, path)
            for priv in ALL_PRIVILEGES:
                assert ev.check(ALICE, path, [priv]) == (priv in expected)


def test_bob_outside_the_group_gets_nothing():
    ev = Evaluator(config([acl("/", "ops", "Administrator")]))
    assert privs(ev, "/vms/100", "bob@pve") == set()


def test_deeper_level_replaces_not_merges():
    ev = Evaluator(config([acl("/", ALICE, "Administrator"),
                           acl("/vms/101", ALICE, "PVEAuditor", propagate=False)]))
    assert privs(ev, "/vms/101") == BUILTIN_ROLES["PVEAuditor"]
    assert privs(ev, "/vms/102") == ALL_PRIVILEGES


def test_pool_roles_include_inherited_ones_as_in_pve():
    # PVE computes pool roles with roles(user, /pool/P), which inherits from /: a member
    # VM gets them added even where a deeper regular entry restricted it.
    ev = Evaluator(config([acl("/", ALICE, "Administrator"),
                           acl("/vms/100", ALICE, "PVEAuditor", propagate=False)]))
    assert privs(ev, "/vms/100") == ALL_PRIVILEGES


def test_group_grant_deeper_beats_user_grant_higher():
    ev = Evaluator(config([acl("/", ALICE, "Administrator"),
                           acl("/vms/101", "ops", "PVEVMUser")]))
    assert privs(ev, "/vms/101") == BUILTIN_ROLES["PVEVMUser"]


def test_user_entries_over_group_entries_at_one_level():
    ev = Evaluator(config([acl("/vms/100", "ops", "PVEVMAdmin"),
                           acl("/vms/100", ALICE, "PVEAuditor")]))
    assert privs(ev, "/vms/100") == BUILTIN_ROLES["PVEAuditor"]


def test_groups_union_at_one_level():
    users = {ALICE: User(ALICE, groups=("ops", "dev"))}
    ev = Evaluator(config([acl("/", "ops", "PVEAuditor"), acl("/", "dev", "PVEVMUser")],
                          users=users))
    assert privs(ev, "/vms/100") == BUILTIN_ROLES["PVEAuditor"] | BUILTIN_ROLES["PVEVMUser"]


def test_noaccess_cancels_same_level_and_is_overridden_deeper():
    ev = Evaluator(config([acl("/", ALICE, "Administrator"), acl("/", ALICE, "NoAccess"),
                           acl("/vms/101", ALICE, "PVEVMUser")]))
    assert privs(ev, "/") == set()
    assert privs(ev, "/nodes/n1") == set()
    assert privs(ev, "/vms/101") == BUILTIN_ROLES["PVEVMUser"]


def test_non_propagating_grant_applies_only_there():
    ev = Evaluator(config([acl("/vms", ALICE, "PVEVMAdmin", propagate=False)]))
    assert privs(ev, "/vms") == BUILTIN_ROLES["PVEVMAdmin"]
    assert privs(ev, "/vms/101") == set()
    assert all(v is False for v in ev.privileges(ALICE, "/vms").values())


def test_pool_roles_add_to_regular_roles_without_propagation():
    ev = Evaluator(config([acl("/pool/P", ALICE, "PVEVMUser"),
                           acl("/vms/100", ALICE, "PVETemplateUser")]))
    got = ev.privileges(ALICE, "/vms/100")
    assert set(got) == BUILTIN_ROLES["PVEVMUser"] | BUILTIN_ROLES["PVETemplateUser"]
    assert got["VM.PowerMgmt"] is False and got["VM.Clone"] is True


def test_regular_noaccess_beats_pool_roles_and_pool_noaccess_beats_regular():
    ev = Evaluator(config([acl("/pool/P", ALICE, "PVEVMAdmin"),
                           acl("/vms/100", ALICE, "NoAccess")]))
    assert privs(ev, "/vms/100") == set()
    ev = Evaluator(config([acl("/pool/P", ALICE, "NoAccess"),
                           acl("/vms/100", ALICE, "PVEVMAdmin")]))
    assert privs(ev, "/vms/100") == set()


def test_nested_pool_inherits_from_parent_pool():
    pools = {"a": Pool("a"), "a/b": Pool("a/b", vms=frozenset({200}))}
    ev = Evaluator(config([acl("/pool/a", ALICE, "PVEVMUser")], pools=pools))
    assert privs(ev, "/vms/200") == BUILTIN_ROLES["PVEVMUser"]


def test_root_has_everything():
    ev = Evaluator(config())
    assert privs(ev, "/vms/999", "root@pam") == ALL_PRIVILEGES
    assert ev.check("root@pam", "/", ["Sys.Fence", "Permissions.Modify"])


def test_superuser_record_counts_as_administrator_on_root():
    users = {"admin@pve": User("admin@pve", superuser=True)}
    ev = Evaluator(config(users=users))
    assert privs(ev, "/vms/100", "admin@pve") == ALL_PRIVILEGES


def test_tokens_without_privsep_are_their_user():
    tok = Token(f"{ALICE}!tf", "h", privsep=False)
    ev = Evaluator(config([acl("/", ALICE, "PVEAuditor")], tokens=[tok]))
    assert privs(ev, "/vms/100", tok.tokenid) == BUILTIN_ROLES["PVEAuditor"]


def test_privsep_token_is_own_entries_intersected_with_user():
    tok = Token(f"{ALICE}!tf", "h")
    ev = Evaluator(config([acl("/", ALICE, "PVEVMUser", propagate=False),
                           acl("/vms", ALICE, "PVEVMUser"),
                           acl("/", tok.tokenid, "Administrator")], tokens=[tok]))
    assert privs(ev, "/vms/100", tok.tokenid) == BUILTIN_ROLES["PVEVMUser"]
    assert privs(ev, "/nodes/n1", tok.tokenid) == set()
    # propagate flags are ANDed: the user's grant on / does not propagate
    assert set(ev.privileges(tok.tokenid, "/").values()) == {False}
    lonely = Token(f"{ALICE}!none", "h")
    ev = Evaluator(config([acl("/", ALICE, "Administrator")], tokens=[lonely]))
    assert privs(ev, "/", lonely.tokenid) == set()
    assert privs(ev, "/", f"{ALICE}!missing") == set()


def test_privsep_token_pool_entries_count():
    tok = Token(f"{ALICE}!tf", "h")
    ev = Evaluator(config([acl("/", ALICE, "Administrator"),
                           acl("/pool/P", tok.tokenid, "PVEVMUser")], tokens=[tok]))
    assert privs(ev, "/vms/100", tok.tokenid) == BUILTIN_ROLES["PVEVMUser"]
    assert privs(ev, "/vms/101", tok.tokenid) == set()


def test_root_privsep_token_uses_its_own_entries():
    tok = Token("root@pam!ci", "h")
    ev = Evaluator(config([acl("/vms", tok.tokenid, "PVEAuditor")], tokens=[tok],
                          users={"root@pam": User("root@pam")}))
    assert privs(ev, "/vms/5", tok.tokenid) == BUILTIN_ROLES["PVEAuditor"]
    assert privs(ev, "/", tok.tokenid) == set()


def test_check_any_and_require():
    ev = Evaluator(config([acl("/vms/100", ALICE, "PVETemplateUser")]))
    assert ev.check(ALICE, "/vms/100", ["VM.Clone", "VM.Allocate"], any=True)
    assert not ev.check(ALICE, "/vms/100", ["VM.Clone", "VM.Allocate"])
    assert ev.check(ALICE, "/vms/100", [])
    with pytest.raises(PermissionCheckFailed, match=r"/vms/100, VM.Allocate"):
        ev.require(ALICE, "vms//100/", ["VM.Allocate"])


def test_permissions_listing_shape():
    ev = Evaluator(config([acl("/pool/P", ALICE, "PVEPoolUser"),
                           acl("/storage", ALICE, "PVEDatastoreUser")]))
    got = ev.permissions(ALICE)
    assert set(got) == {"/pool/P", "/storage", "/vms/100", "/storage/local"}
    assert got["/pool/P"] == {"Pool.Audit": 1}
    assert got["/vms/100"] == {"Pool.Audit": 0}
    assert got["/storage/local"] == {"Datastore.AllocateSpace": 1, "Datastore.Audit": 1,
                                     "Pool.Audit": 0}
    assert ev.permissions(ALICE, "/nodes/x") == {"/nodes/x": {}}


def test_cap_areas():
    ev = Evaluator(config([acl("/", ALICE, "PVEAuditor"), acl("/pool/P", ALICE, "PVEVMAdmin")]))
    cap = ev.cap(ALICE)
    assert set(cap) == {"vms", "access", "storage", "nodes", "sdn", "dc", "mapping"}
    assert cap["dc"] == {"Sys.Audit": 1, "SDN.Audit": 1}
    assert cap["vms"]["VM.Allocate"] == 1
    assert cap["nodes"] == {"Sys.Audit": 1}
    assert cap["access"] == {}


# -- delegation (PUT /access/acl) ---------------------------------------------------------

def test_permissions_modify_on_a_vm_cannot_grant_on_root():
    ev = Evaluator(config([acl("/vms/100", ALICE, "Administrator")]))
    with pytest.raises(PermissionCheckFailed, match=r"^/, Permissions.Modify"):
        ev.check_acl_change(ALICE, "/", ["PVEVMUser"], propagate=True)
    ev.check_acl_change(ALICE, "/vms/100", ["PVEVMUser"], propagate=True)


def test_allocate_holder_gives_only_roles_it_holds():
    ev = Evaluator(config([acl("/vms/100", ALICE, "PVEVMAdmin")]))
    ev.check_acl_change(ALICE, "/vms/100", ["PVEVMUser", "PVETemplateUser"], propagate=True)
    with pytest.raises(PermissionCheckFailed, match="Datastore"):
        ev.check_acl_change(ALICE, "/vms/100", ["PVEAdmin"], propagate=True)
    with pytest.raises(PermissionCheckFailed, match=r"Permissions\.Modify"):
        ev.check_acl_change(ALICE, "/vms/100", ["NoAccess"], propagate=False)
    with pytest.raises(PermissionCheckFailed, match="/vms/101"):
        ev.check_acl_change(ALICE, "/vms/101", ["PVEVMUser"], propagate=True)


def test_delegation_with_propagate_needs_propagating_privileges():
    ev = Evaluator(config([acl("/vms/101", ALICE, "PVEVMAdmin", propagate=False)]))
    ev.check_acl_change(ALICE, "/vms/101", ["PVEVMUser"], propagate=False)
    with pytest.raises(PermissionCheckFailed, match="propagated"):
        ev.check_acl_change(ALICE, "/vms/101", ["PVEVMUser"], propagate=True)
    ev.check_acl_change(ALICE, "/vms/101", ["PVEVMUser"], propagate=True, delete=True)


def test_strict_delegation_binds_permissions_modify_holders_too():
    custom = {"Delegator": frozenset({"Permissions.Modify", "VM.Audit"})}
    ev = Evaluator(config([acl("/vms/100", ALICE, "Delegator")], roles=custom))
    ev.check_acl_change(ALICE, "/vms/100", ["Administrator"], propagate=True)   # PVE's rule
    with pytest.raises(PermissionCheckFailed):
        ev.check_acl_change(ALICE, "/vms/100", ["Administrator"], propagate=True, strict=True)
    ev.check_acl_change(ALICE, "/vms/100", ["NoAccess"], propagate=True, strict=True)


def test_perm_modify_alternatives():
    ev = Evaluator(config([acl("/pool/P", ALICE, "PVEPoolAdmin"),
                           acl("/storage", ALICE, "PVEDatastoreAdmin")]))
    assert ev.can_modify_permissions(ALICE, "/pool/P")
    assert ev.can_modify_permissions(ALICE, "/storage/local")
    assert not ev.can_modify_permissions(ALICE, "/storage")
    assert not ev.can_modify_permissions(ALICE, "")


def test_userid_group_check():
    users = {ALICE: User(ALICE), "carol@pve": User("carol@pve", groups=("dev",)),
             "dave@pve": User("dave@pve", groups=("ops",))}
    ev = Evaluator(config([acl("/access/groups/dev", ALICE, "PVEUserAdmin")], users=users))
    assert ev.check_userid_group(ALICE, ["User.Modify"], "carol@pve")
    assert not ev.check_userid_group(ALICE, ["User.Modify"], "dave@pve")
    assert ev.check_userid_group(ALICE, ["User.Modify"], "new@pve", ["dev"], "create")
    assert not ev.check_userid_group(ALICE, ["User.Modify"], "new@pve", [], "create")
    assert not ev.check_userid_group(ALICE, ["User.Modify"], "new@pve", ["ops"], "create")
    assert not ev.check_userid_group(ALICE, ["User.Modify"], "ghost@pve", ["dev"], "update")
    ev = Evaluator(config([acl("/access/groups", ALICE, "PVEUserAdmin")], users=users))
    assert ev.check_userid_group(ALICE, ["User.Modify"], "dave@pve")


def test_userid_realm_check():
    ev = Evaluator(config([acl("/access/realm/pve", ALICE, "PVEUserAdmin")]))
    assert ev.check_userid_realm(ALICE, "x@pve")
    assert not ev.check_userid_realm(ALICE, "x@pam")
