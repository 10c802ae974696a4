"""realm sync's pure parts: option parsing (with the realm's defaults) and the plan."""

from __future__ import annotations

import pytest

from binome.access import ops
from binome.access.ldap import Directory, DirectoryGroup, DirectoryUser, SyncOptions, plan_sync
from binome.access.model import AccessConfig, AclEntry, Realm, ValidationError

REALM = Realm("corp", "ldap", options={"server1": "ldap.example", "base_dn": "dc=x",
                                       "user_attr": "uid",
                                       "sync-defaults-options": "scope=users,enable-new=0"})


def _dir(*names: str) -> Directory:
    users = tuple(DirectoryUser(f"uid={n},dc=x", n, {"mail": f"{n}@x"}) for n in names)
    return Directory(users, (DirectoryGroup("cn=ops,dc=x", "ops",
                                            frozenset(u.dn for u in users)),))


def test_options_fall_back_to_the_realm_defaults() -> None:
    o = SyncOptions.parse(REALM, {})
    assert (o.scope, o.enable_new, o.dry_run) == ("users", False, False)
    o = SyncOptions.parse(REALM, {"scope": "both", "remove-vanished": "acl;entry",
                                  "dry-run": True})
    assert o.scope == "both" and o.remove_vanished == {"acl", "entry"} and o.dry_run
    with pytest.raises(ValidationError) as e:
        SyncOptions.parse(REALM, {"remove-vanished": "acl;bogus"})
    assert "remove-vanished" in e.value.errors


def test_plan_adds_then_removes_vanished_with_their_acl() -> None:
    cfg = ops.add_realm(AccessConfig(), REALM)
    both = SyncOptions.parse(REALM, {"scope": "both", "remove-vanished": "acl;entry"})
    plan = plan_sync(cfg, REALM, _dir("bob", "alice"), both)
    assert plan.added_users == ("alice@corp", "bob@corp") and plan.added_groups == ("ops-corp",)
    assert not plan.config.users["alice@corp"].enable     # enable-new=0 from the defaults
    cfg = ops.modify_acl(plan.config, "/vms", ["PVEVMUser"], users=["bob@corp"])
    plan = plan_sync(cfg, REALM, _dir("alice"), both)
    assert plan.removed_users == ("bob@corp",) and plan.removed_acl == 1
    assert "removed user: bob@corp" in plan.summary()
    assert plan.config.members("ops-corp") == ["alice@corp"]
    kept = plan_sync(cfg, REALM, _dir("alice"), SyncOptions.parse(REALM, {"scope": "users"}))
    assert "bob@corp" in kept.config.users
    assert AclEntry("/vms", "user", "bob@corp", "PVEVMUser") in kept.config.acl
