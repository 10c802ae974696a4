"""Every privilege name binome knows: Proxmox VE's 47 and binome's own, by tier.

PVE generates its roles from per-area tiers (root, admin, user, audit); the tiers are
kept here so `roles.py` can build the built-in roles exactly as PVE does.

binome's own privileges, named in PVE's ``Area.Action`` style, cover what PVE has no
privilege for. They are granted only by ``Administrator`` and binome's ``Binome*`` roles,
so every PVE built-in role keeps PVE's exact privilege set:

* ``HA.Audit``: read HA resources, rules and status (PVE asks ``Sys.Audit`` on ``/``;
  binome's HA methods accept either).
* ``HA.Modify``: add/remove/change HA resources and rules, migrate/relocate through HA
  (PVE asks ``Sys.Console`` on ``/``; either is accepted).
* ``Sys.Fence``: fence a node, change fencing devices, arm/disarm fencing. Root tier:
  cutting a node's power is as strong as ``Sys.PowerMgmt``.
* ``Volume.Audit``: read replicated volumes' state (roles, sync progress, peers).
* ``Volume.Modify``: promote/demote, resync, verify, resolve a split brain.
"""

from __future__ import annotations

from typing import Final

# Per area: (root tier, admin tier, user tier, audit tier), from pve-access-control
# AccessControl.pm $privgroups (9.1).
PVE_PRIVILEGE_GROUPS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "VM": (
        (),
        ("VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk",
         "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options",
         "VM.Allocate", "VM.Clone", "VM.Migrate", "VM.Replicate", "VM.Snapshot",
         "VM.Snapshot.Rollback", "VM.GuestAgent.Unrestricted"),
        ("VM.Config.CDROM", "VM.Config.Cloudinit", "VM.Console", "VM.Backup",
         "VM.PowerMgmt", "VM.GuestAgent.FileRead", "VM.GuestAgent.FileWrite",
         "VM.GuestAgent.FileSystemMgmt"),
        ("VM.Audit", "VM.GuestAgent.Audit"),
    ),
    "Sys": (
        ("Sys.PowerMgmt", "Sys.Modify", "Sys.Incoming", "Sys.AccessNetwork"),
        ("Sys.Console", "Sys.Syslog"),
        (),
        ("Sys.Audit",),
    ),
    "Datastore": (
        (),
        ("Datastore.Allocate", "Datastore.AllocateTemplate"),
        ("Datastore.AllocateSpace",),
        ("Datastore.Audit",),
    ),
    "SDN": (
        (),
        ("SDN.Allocate",),
        ("SDN.Use",),
        ("SDN.Audit",),
    ),
    "User": (
        ("Realm.Allocate",),
        ("User.Modify", "Group.Allocate", "Realm.AllocateUser"),
        (),
        (),
    ),
    "Pool": (
        (),
        ("Pool.Allocate",),
        ("Pool.Audit",),
        ("Pool.Audit",),
    ),
    "Mapping": (
        (),
        ("Mapping.Modify",),
        ("Mapping.Use",),
        ("Mapping.Audit",),
    ),
}

# Not in any tier: only Administrator has it (PVE).
PERMISSIONS_MODIFY: Final = "Permissions.Modify"

# binome's own, by area and tier like PVE's; see the module docstring.
BINOME_PRIVILEGE_GROUPS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "HA": ((), ("HA.Modify",), (), ("HA.Audit",)),
    "Fence": (("Sys.Fence",), (), (), ()),
    "Volume": ((), ("Volume.Modify",), (), ("Volume.Audit",)),
}


def _flatten(groups: dict[str, tuple[tuple[str, ...], ...]]) -> frozenset[str]:
    return frozenset(p for tiers in groups.values() for tier in tiers for p in tier)


PVE_PRIVILEGES: Final[frozenset[str]] = _flatten(PVE_PRIVILEGE_GROUPS) | {PERMISSIONS_MODIFY}
BINOME_PRIVILEGES: Final[frozenset[str]] = _flatten(BINOME_PRIVILEGE_GROUPS)
ALL_PRIVILEGES: Final[frozenset[str]] = PVE_PRIVILEGES | BINOME_PRIVILEGES


def is_privilege(name: str) -> bool:
    return name in ALL_PRIVILEGES


def unknown_privileges(names: object) -> list[str]:
    """The names in `names` that are no privilege, sorted (empty when all are known)."""
    return sorted(n for n in names if n not in ALL_PRIVILEGES)  # type: ignore[attr-defined]
