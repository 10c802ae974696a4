"""Every registered API method declares its permission on purpose, and each declaration
names only parameters the method has; the declarations PVE's clients rely on are pinned
to PVE's (qemu-server Qemu.pm, pve-manager Pool.pm/Storage/*.pm/Tasks.pm/Cluster.pm)."""

from __future__ import annotations

import re
from typing import Any

import pytest

import binome.api.methods  # noqa: F401  (registers every method)
from binome.access.evaluator import Evaluator
from binome.access.model import AccessConfig, AclEntry, User
from binome.access.permission import (
    And,
    AnyUser,
    Decl,
    Or,
    Perm,
    PermModify,
    UseridGroup,
    UseridRealm,
    UseridSelf,
    check,
)
from binome.api.registry import ANY_USER, ApiMethod, registry

PLACEHOLDER = re.compile(r"\{([^}]+)\}")


def _leaves(decl: Decl) -> list[Decl]:
    if isinstance(decl, And | Or):
        return [leaf for item in decl.items for leaf in _leaves(item)]
    return [decl]


def _by_route(method: str, path: str) -> ApiMethod:
    for m in registry.methods:
        if m.method == method and m.path == path:
            return m
    raise AssertionError(f"{method} {path} is not registered")


@pytest.mark.parametrize("m", registry.methods, ids=lambda m: f"{m.method} {m.path}")
def test_declared_on_purpose(m: ApiMethod) -> None:
    # the registry's default is ANY_USER: a method left on it was never audited
    assert m.permission != ANY_USER, "declare permission= (AnyUser('what is filtered') " \
                                     "if every user may call it)"
    for leaf in _leaves(m.permission):
        if isinstance(leaf, AnyUser):
            assert leaf.filter, "AnyUser needs a text saying what the handler filters"


@pytest.mark.parametrize("m", registry.methods, ids=lambda m: f"{m.method} {m.path}")
def test_declared_paths_name_parameters(m: ApiMethod) -> None:
    for leaf in _leaves(m.permission):
        names: list[str] = []
        if isinstance(leaf, Perm | PermModify):
            names += PLACEHOLDER.findall(leaf.path)
        if isinstance(leaf, Perm) and leaf.require_param:
            names.append(leaf.require_param)
        if isinstance(leaf, UseridSelf | UseridRealm | UseridGroup):
            names.append(leaf.param)
        for name in names:
            assert name in m.parameters, f"{name} is not a parameter of {m.name}"


# (method, path, PVE's declaration) — the ones clients and the matrix test depend on
PVE = [
    ("POST", "/nodes/{node}/qemu",
     Or(Perm("/vms/{vmid}", ("VM.Allocate",)),
        Perm("/pool/{pool}", ("VM.Allocate",), require_param="pool"))),
    ("POST", "/nodes/{node}/qemu/{vmid}/clone",
     And(Perm("/vms/{vmid}", ("VM.Clone",)),
         Or(Perm("/vms/{newid}", ("VM.Allocate",)),
            Perm("/pool/{pool}", ("VM.Allocate",), require_param="pool")))),
    ("DELETE", "/nodes/{node}/qemu/{vmid}", Perm("/vms/{vmid}", ("VM.Allocate",))),
    ("GET", "/nodes/{node}/qemu/{vmid}/config", Perm("/vms/{vmid}", ("VM.Audit",))),
    ("POST", "/nodes/{node}/qemu/{vmid}/status/start", Perm("/vms/{vmid}", ("VM.PowerMgmt",))),
    ("POST", "/nodes/{node}/qemu/{vmid}/vncproxy", Perm("/vms/{vmid}", ("VM.Console",))),
    ("POST", "/nodes/{node}/qemu/{vmid}/termproxy", Perm("/vms/{vmid}", ("VM.Console",))),
    ("POST", "/nodes/{node}/qemu/{vmid}/migrate", Perm("/vms/{vmid}", ("VM.Migrate",))),
    ("PUT", "/nodes/{node}/qemu/{vmid}/resize", Perm("/vms/{vmid}", ("VM.Config.Disk",))),
    # qemu-server move_vm_disk (Datastore.AllocateSpace and the target VM's
    # VM.Config.Disk: checked in the handler), and its alias
    ("POST", "/nodes/{node}/qemu/{vmid}/move_disk", Perm("/vms/{vmid}", ("VM.Config.Disk",))),
    ("POST", "/nodes/{node}/qemu/{vmid}/move-disk", Perm("/vms/{vmid}", ("VM.Config.Disk",))),
    # qemu-server API2/Qemu.pm snapshot_list, snapshot, get/update_snapshot_config,
    # rollback (VM.PowerMgmt too with start=1: checked in the handler), delsnapshot
    ("GET", "/nodes/{node}/qemu/{vmid}/snapshot", Perm("/vms/{vmid}", ("VM.Audit",))),
    ("POST", "/nodes/{node}/qemu/{vmid}/snapshot", Perm("/vms/{vmid}", ("VM.Snapshot",))),
    ("GET", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config",
     Perm("/vms/{vmid}", ("VM.Snapshot", "VM.Snapshot.Rollback", "VM.Audit"), any=True)),
    ("PUT", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config",
     Perm("/vms/{vmid}", ("VM.Snapshot",))),
    ("POST", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback",
     Perm("/vms/{vmid}", ("VM.Snapshot", "VM.Snapshot.Rollback"), any=True)),
    ("DELETE", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}",
     Perm("/vms/{vmid}", ("VM.Snapshot",))),
    ("POST", "/storage", Perm("/storage", ("Datastore.Allocate",))),
    ("GET", "/nodes/{node}/storage/{storage}/status",
     Perm("/storage/{storage}", ("Datastore.Audit", "Datastore.AllocateSpace"), any=True)),
    ("GET", "/nodes/{node}/status", Perm("/nodes/{node}", ("Sys.Audit",))),
    ("GET", "/cluster/status", Perm("/", ("Sys.Audit",))),
    ("POST", "/pools", Perm("/pool/{poolid}", ("Pool.Allocate",))),
    ("PUT", "/pools", Perm("/pool/{poolid}", ("Pool.Allocate",))),
    ("DELETE", "/pools", Perm("/pool/{poolid}", ("Pool.Allocate",))),
    ("GET", "/pools/{poolid}", Perm("/pool/{poolid}", ("Pool.Audit",))),
    ("GET", "/cluster/ha/resources",
     Or(Perm("/", ("Sys.Audit",)), Perm("/", ("HA.Audit",)))),
    ("POST", "/cluster/ha/resources",
     Or(Perm("/", ("Sys.Console",)), Perm("/", ("HA.Modify",)))),
    ("POST", "/cluster/ha/fence/{node}/fence", Perm("/", ("Sys.Fence",))),
    # pve-manager Cluster/Notifications.pm
    ("GET", "/cluster/notifications/endpoints/smtp/{name}",
     Or(Perm("/mapping/notifications", ("Mapping.Modify",)),
        Perm("/mapping/notifications", ("Mapping.Audit",)))),
    ("POST", "/cluster/notifications/targets/{name}/test",
     Or(Perm("/mapping/notifications", ("Mapping.Modify",)),
        Perm("/mapping/notifications", ("Mapping.Audit",)),
        Perm("/mapping/notifications", ("Mapping.Use",)))),
    ("POST", "/cluster/notifications/endpoints/webhook",
     And(Perm("/mapping/notifications", ("Mapping.Modify",)),
         Or(Perm("/", ("Sys.Audit", "Sys.Modify")), Perm("/", ("Sys.AccessNetwork",))))),
    ("DELETE", "/cluster/notifications/endpoints/gotify/{name}",
     Perm("/mapping/notifications", ("Mapping.Modify",))),
    ("PUT", "/cluster/notifications/matchers/{name}",
     Perm("/mapping/notifications", ("Mapping.Modify",))),
    # pve-manager API2/Cluster/MetricServer.pm
    ("GET", "/cluster/metrics/server", Perm("/", ("Sys.Audit",))),
    ("GET", "/cluster/metrics/server/{id}", Perm("/", ("Sys.Audit",))),
    ("POST", "/cluster/metrics/server/{id}", Perm("/", ("Sys.Modify",))),
    ("PUT", "/cluster/metrics/server/{id}", Perm("/", ("Sys.Modify",))),
    ("DELETE", "/cluster/metrics/server/{id}", Perm("/", ("Sys.Modify",))),
    # qemu-server API2/Qemu/Agent.pm (PVE 9): each command's privilege or Unrestricted
    ("GET", "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces",
     Perm("/vms/{vmid}", ("VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted"), any=True)),
    ("POST", "/nodes/{node}/qemu/{vmid}/agent/ping",
     Perm("/vms/{vmid}", ("VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted"), any=True)),
    ("POST", "/nodes/{node}/qemu/{vmid}/agent/fsfreeze-status",
     Perm("/vms/{vmid}", ("VM.GuestAgent.Audit", "VM.GuestAgent.FileSystemMgmt",
                          "VM.GuestAgent.Unrestricted"), any=True)),
    ("POST", "/nodes/{node}/qemu/{vmid}/agent/fsfreeze-freeze",
     Perm("/vms/{vmid}", ("VM.GuestAgent.FileSystemMgmt", "VM.GuestAgent.Unrestricted"),
          any=True)),
    ("POST", "/nodes/{node}/qemu/{vmid}/agent/shutdown",
     Perm("/vms/{vmid}", ("VM.PowerMgmt", "VM.GuestAgent.Unrestricted"), any=True)),
    ("POST", "/nodes/{node}/qemu/{vmid}/agent",
     Perm("/vms/{vmid}", ("VM.GuestAgent.Unrestricted",))),
    ("POST", "/nodes/{node}/qemu/{vmid}/agent/exec",
     Perm("/vms/{vmid}", ("VM.GuestAgent.Unrestricted",))),
    ("GET", "/nodes/{node}/qemu/{vmid}/agent/exec-status",
     Perm("/vms/{vmid}", ("VM.GuestAgent.Unrestricted",))),
    ("GET", "/nodes/{node}/qemu/{vmid}/agent/file-read",
     Perm("/vms/{vmid}", ("VM.GuestAgent.FileRead", "VM.GuestAgent.Unrestricted"), any=True)),
    ("POST", "/nodes/{node}/qemu/{vmid}/agent/file-write",
     Perm("/vms/{vmid}", ("VM.GuestAgent.FileWrite", "VM.GuestAgent.Unrestricted"), any=True)),
    ("POST", "/nodes/{node}/qemu/{vmid}/agent/set-user-password",
     Perm("/vms/{vmid}", ("VM.GuestAgent.Unrestricted",))),
    # qemu-server Qemu.pm vm_feature: ['perm', '/vms/{vmid}', ['VM.Audit']]
    ("GET", "/nodes/{node}/qemu/{vmid}/feature", Perm("/vms/{vmid}", ("VM.Audit",))),
    # pve-manager Nodes.pm get_etc_hosts: ['perm', '/', ['Sys.Audit']]
    ("GET", "/nodes/{node}/hosts", Perm("/", ("Sys.Audit",))),
    # pve-manager Hardware/PCI.pm pci_scan: ['perm', '/', ['Sys.Audit', 'Sys.Modify'], any => 1]
    ("GET", "/nodes/{node}/hardware/pci", Perm("/", ("Sys.Audit", "Sys.Modify"), any=True)),
    # pve-manager NodeConfig.pm get_config/set_options: ['perm', '/', ['Sys.Audit']] and
    # ['perm', '/', ['Sys.Modify']]; Nodes.pm wakeonlan: ['perm', '/nodes/{node}',
    # ['Sys.PowerMgmt']]; pve-storage Disks.pm list: ['or', ['perm', '/', ['Sys.Audit']],
    # ['perm', '/nodes/{node}', ['Sys.Audit']]]
    ("GET", "/nodes/{node}/config", Perm("/", ("Sys.Audit",))),
    ("PUT", "/nodes/{node}/config", Perm("/", ("Sys.Modify",))),
    ("POST", "/nodes/{node}/wakeonlan", Perm("/nodes/{node}", ("Sys.PowerMgmt",))),
    ("GET", "/nodes/{node}/disks/list",
     Or(Perm("/", ("Sys.Audit",)), Perm("/nodes/{node}", ("Sys.Audit",)))),
    # pve-access-control User.pm unlock_tfa: ['userid-group', ['User.Modify']]
    ("PUT", "/access/users/{userid}/unlock-tfa", UseridGroup(("User.Modify",))),
]


@pytest.mark.parametrize("method,path,decl", PVE, ids=[f"{m} {p}" for m, p, _ in PVE])
def test_pve_declarations(method: str, path: str, decl: Decl) -> None:
    assert _by_route(method, path).permission == decl


# PVE's `user => 'all'` methods whose handler filters (or that hide nothing)
ALL_USERS = [("GET", "/cluster/resources"), ("GET", "/nodes"), ("GET", "/nodes/{node}/qemu"),
             ("GET", "/storage"), ("GET", "/nodes/{node}/storage"), ("GET", "/pools"),
             ("GET", "/nodes/{node}/tasks"), ("GET", "/cluster/log"), ("GET", "/version"),
             ("GET", "/cluster/nextid"), ("GET", "/cluster/tasks"), ("GET", "/cluster/metrics"),
             ("GET", "/nodes/{node}/qemu/{vmid}/agent"),
             # pve-manager Certificates.pm info, Subscription.pm get; pve-storage
             # Content.pm info (then check_volume_access in the handler)
             ("GET", "/nodes/{node}/certificates/info"), ("GET", "/nodes/{node}/subscription"),
             ("GET", "/nodes/{node}/storage/{storage}/content/{volume}")]


@pytest.mark.parametrize("method,path", ALL_USERS, ids=[f"{m} {p}" for m, p in ALL_USERS])
def test_pve_user_all(method: str, path: str) -> None:
    assert isinstance(_by_route(method, path).permission, AnyUser)


def test_pool_allocate_on_pool_creates_in_pool_only() -> None:
    """PVEPoolAdmin-style VM.Allocate on /pool/web lets one create VMs there, not elsewhere."""
    cfg = AccessConfig(users={"alice@pve": User("alice@pve")},
                       acl=(AclEntry("/pool/web", "user", "alice@pve", "PVEVMAdmin"),))
    ev = Evaluator(cfg)
    decl = _by_route("POST", "/nodes/{node}/qemu").permission
    assert check(decl, ev, "alice@pve", {"node": "a", "vmid": 150, "pool": "web"})
    assert not check(decl, ev, "alice@pve", {"node": "a", "vmid": 150})
    assert not check(decl, ev, "alice@pve", {"node": "a", "vmid": 150, "pool": "other"})


async def test_volume_info_checks_pves_check_volume_access() -> None:
    """`GET .../content/{volume}`: PVE's check_volume_access, by the volume's kind."""
    from types import SimpleNamespace

    from binome.api.errors import PermissionDenied
    from binome.api.methods.vzdump import _check_read_access

    cfg = AccessConfig(users={u: User(u) for u in ("aud@pve", "ds@pve", "vm@pve")},
                       acl=(AclEntry("/", "user", "aud@pve", "PVEAuditor"),
                            AclEntry("/storage/local", "user", "ds@pve", "PVEDatastoreUser"),
                            AclEntry("/storage/local", "user", "vm@pve", "PVEAuditor"),
                            AclEntry("/vms/100", "user", "vm@pve", "PVEVMAdmin")))
    ev = Evaluator(cfg)

    async def evaluator() -> Evaluator:
        return ev

    def ctx(user: str) -> Any:
        return SimpleNamespace(userid=user, services=SimpleNamespace(
            access=SimpleNamespace(evaluator=evaluator)))

    async def allowed(user: str, volname: str) -> bool:
        try:
            await _check_read_access(ctx(user), "local", volname)
        except PermissionDenied:
            return False
        return True

    # ISO images: whoever sees the storage
    assert await allowed("ds@pve", "iso/d.iso") and await allowed("aud@pve", "iso/d.iso")
    # a guest's disk: Datastore.Audit and VM.Config.Disk on the guest (the auditor lacks it)
    assert await allowed("vm@pve", "100/vm-100-disk-0.raw")
    assert not await allowed("vm@pve", "101/vm-101-disk-0.raw")
    assert not await allowed("aud@pve", "100/vm-100-disk-0.raw")
    # a backup: Datastore.AllocateSpace and VM.Backup
    backup = "backup/vzdump-qemu-100-2026_01_01-00_00_00.vma.zst"
    assert not await allowed("vm@pve", backup) and not await allowed("ds@pve", backup)
    # anything else (snippets): the storage's administrator
    assert not await allowed("ds@pve", "snippets/user.yaml")
