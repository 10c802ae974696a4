"""Built-in roles carry PVE 9.1's exact privilege sets; custom roles are validated."""

import pytest

from binome.access.privileges import ALL_PRIVILEGES, BINOME_PRIVILEGES, PVE_PRIVILEGES
from binome.access.roles import BUILTIN_ROLES, RoleError, parse_privs, validate_custom_role

VM_ALL = {
    "VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Console", "VM.Migrate",
    "VM.PowerMgmt", "VM.Replicate", "VM.Snapshot", "VM.Snapshot.Rollback",
    "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk",
    "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options",
    "VM.GuestAgent.Audit", "VM.GuestAgent.FileRead", "VM.GuestAgent.FileSystemMgmt",
    "VM.GuestAgent.FileWrite", "VM.GuestAgent.Unrestricted",
}
DS_ALL = {"Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate",
          "Datastore.Audit"}

EXPECTED = {
    "NoAccess": set(),
    "PVEAdmin": VM_ALL | DS_ALL | {
        "SDN.Allocate", "SDN.Audit", "SDN.Use", "Sys.Audit", "Sys.Console", "Sys.Syslog",
        "User.Modify", "Group.Allocate", "Realm.AllocateUser", "Pool.Allocate", "Pool.Audit",
        "Mapping.Audit", "Mapping.Use"},
    "PVEAuditor": {"VM.Audit", "VM.GuestAgent.Audit", "Sys.Audit", "Datastore.Audit",
                   "SDN.Audit", "Pool.Audit", "Mapping.Audit"},
    "PVEVMAdmin": VM_ALL,
    "PVEVMUser": {"VM.Audit", "VM.Backup", "VM.Config.CDROM", "VM.Config.Cloudinit",
                  "VM.Console", "VM.GuestAgent.Audit", "VM.GuestAgent.FileRead",
                  "VM.GuestAgent.FileSystemMgmt", "VM.GuestAgent.FileWrite", "VM.PowerMgmt"},
    "PVETemplateUser": {"VM.Audit", "VM.Clone"},
    "PVESysAdmin": {"Sys.Audit", "Sys.Console", "Sys.Syslog"},
    "PVEDatastoreAdmin": DS_ALL,
    "PVEDatastoreUser": {"Datastore.AllocateSpace", "Datastore.Audit"},
    "PVESDNAdmin": {"SDN.Allocate", "SDN.Audit", "SDN.Use"},
    "PVESDNUser": {"SDN.Audit", "SDN.Use"},
    "PVEUserAdmin": {"User.Modify", "Group.Allocate", "Realm.AllocateUser"},
    "PVEPoolAdmin": {"Pool.Allocate", "Pool.Audit"},
    "PVEPoolUser": {"Pool.Audit"},
    "PVEMappingAdmin": {"Mapping.Audit", "Mapping.Modify", "Mapping.Use"},
    "PVEMappingUser": {"Mapping.Audit", "Mapping.Use"},
    "BinomeHAAdmin": {"HA.Audit", "HA.Modify"},
    "BinomeVolumeAdmin": {"Volume.Audit", "Volume.Modify"},
}


def test_pve_has_47_privileges_and_binome_adds_its_own():
    assert len(PVE_PRIVILEGES) == 47
    assert "VM.Monitor" not in ALL_PRIVILEGES
    assert BINOME_PRIVILEGES == {"HA.Audit", "HA.Modify", "Sys.Fence", "Volume.Audit",
                                 "Volume.Modify"}


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_builtin_role_privileges(role):
    assert BUILTIN_ROLES[role] == EXPECTED[role]


def test_administrator_has_everything_and_no_unexpected_roles():
    assert BUILTIN_ROLES["Administrator"] == ALL_PRIVILEGES
    assert set(BUILTIN_ROLES) == set(EXPECTED) | {"Administrator"}


def test_root_tier_only_in_administrator():
    root_only = {"Sys.PowerMgmt", "Sys.Modify", "Sys.Incoming", "Sys.AccessNetwork",
                 "Realm.Allocate", "Permissions.Modify", "Sys.Fence"}
    for name, privs in BUILTIN_ROLES.items():
        if name != "Administrator":
            assert not privs & root_only, name


def test_custom_role_validation():
    assert validate_custom_role("Ops", "VM.Audit,VM.PowerMgmt") == {"VM.Audit", "VM.PowerMgmt"}
    assert validate_custom_role("ops-2", ["HA.Audit"]) == {"HA.Audit"}
    with pytest.raises(RoleError) as e:
        validate_custom_role("Ops", "VM.Audit,VM.Fly")
    assert e.value.errors == {"privs": "invalid privilege 'VM.Fly'"}


def test_vm_monitor_is_gone_as_in_pve_9():
    # PVE 9 dropped VM.Monitor (pve-access-control 0706945): a role naming it is refused
    # with PVE's text, as `pveum role add ... VM.Monitor` is on PVE 9
    with pytest.raises(RoleError) as e:
        validate_custom_role("Terraform", "VM.Audit VM.Monitor VM.PowerMgmt")
    assert e.value.errors == {"privs": "invalid privilege 'VM.Monitor'"}


def test_stored_role_drops_unknown_privileges_with_a_warning():
    # PVE's parse_user_config: "ignore invalid privilege" (a role written before PVE 9)
    from binome.access.repository import ROLES, decode
    cfg, warnings = decode({ROLES + "Old": {"roleid": "Old",
                                            "privs": ["VM.Audit", "VM.Monitor"]}})
    assert cfg.roles == {"Old": frozenset({"VM.Audit"})}
    assert warnings == [f"{ROLES}Old: ignore invalid privilege 'VM.Monitor'"]
    for bad in ("PVEVMAdmin", "pvething", "BinomeX", "Administrator", "bad name", ""):
        with pytest.raises(RoleError) as e:
            validate_custom_role(bad)
        assert "roleid" in e.value.errors


def test_parse_privs_accepts_pve_separators():
    assert parse_privs("VM.Audit; Sys.Audit VM.Console") == {"VM.Audit", "Sys.Audit",
                                                              "VM.Console"}
    assert parse_privs("") == frozenset()
