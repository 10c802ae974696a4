"""VM snapshots, PVE's /nodes/{node}/qemu/{vmid}/snapshot API (qemu-server API2/Qemu.pm)
and `binome vm snapshot|rollback|delsnapshot|listsnapshot` (`qm`'s verbs).

The snapshot tree and the flows belong to the guest service (`guest.snapshots`);
these handlers validate, refuse early what PVE would refuse (so a refused
request changes nothing and the client reads PVE's text: a GuestFailure is
answered as PVE's 500 with it), start the task
(qmsnapshot, qmrollback, qmdelsnapshot) and shape the answers. Also PVE's feature
check (`GET .../feature`: snapshot, clone, copy), answered by `guest.features`.
"""

from __future__ import annotations

from typing import Any

from binome.api.context import RequestContext
from binome.api.errors import PermissionDenied, fail
from binome.api.methods.common import NODE
from binome.api.methods.qemu import VM_PATH, VMID, guests, typed_config
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.guest import features
from binome.guest.features import FEATURES
from binome.guest.snapshots import reserved_name_error
from binome.tasks.manager import Task

SNAPNAME = Param(format="pve-configid", max_length=40,
                 description="The name of the snapshot.")
SNAPSHOT = privs("VM.Snapshot", path=VM_PATH)
SNAPSHOT_PATH = "/nodes/{node}/qemu/{vmid}/snapshot"


@registry.register(
    "GET", SNAPSHOT_PATH, name="vm_snapshot_list",
    permission=privs("VM.Audit", path=VM_PATH), proxyto="node",
    description="List all snapshots.",
    parameters={"node": NODE, "vmid": VMID},
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("vm", "listsnapshot"), positional=("vmid",),
                formatter="table:name,parent,snaptime,vmstate,description"),
)
async def vm_snapshot_list(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    return await guests(ctx).snapshots.listing(params["vmid"])


@registry.register(
    "POST", SNAPSHOT_PATH, name="vm_snapshot",
    permission=SNAPSHOT, proxyto="node", description="Snapshot a VM.",
    parameters={"node": NODE, "vmid": VMID, "snapname": SNAPNAME,
                "vmstate": Param(type="boolean", optional=True,
                                 description="Save the vmstate"),
                "description": Param(optional=True, extra={"multiline": True},
                                     description="A textual description or comment.")},
    returns={"type": "string", "description": "the task ID."},
    cli=CliSpec(("vm", "snapshot"), positional=("vmid", "snapname")),
)
async def vm_snapshot(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmid, snapname = params["vmid"], params["snapname"]
    reserved = reserved_name_error(snapname)
    if reserved:
        raise fail(reserved)
    await service.snapshots.check_create(await service.read(vmid), snapname)

    async def body(task: Task) -> None:
        await service.snapshots.create(task, vmid, snapname,
                                       vmstate=bool(params.get("vmstate")),
                                       description=params.get("description"))

    return ctx.services.tasks.start("qmsnapshot", str(vmid), ctx.userid, body)


@registry.register(
    "GET", SNAPSHOT_PATH + "/{snapname}", name="vm_snapshot_index",
    permission=privs("VM.Audit", path=VM_PATH), proxyto="node",
    description="Directory index of a snapshot.",
    parameters={"node": NODE, "vmid": VMID, "snapname": SNAPNAME},
    returns={"type": "array"},
)
async def vm_snapshot_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, str]]:
    # PVE answers the index for any name (user => 'all'); binome needs VM.Audit and the
    # VM to exist, which tells nothing more than the snapshot list does
    await guests(ctx).read(params["vmid"], fresh=False)
    return [{"cmd": "rollback"}, {"cmd": "config"}]


@registry.register(
    "GET", SNAPSHOT_PATH + "/{snapname}/config", name="vm_snapshot_config",
    permission=privs("VM.Snapshot", "VM.Snapshot.Rollback", "VM.Audit", path=VM_PATH,
                     any=True),
    proxyto="node", description="Get snapshot configuration",
    parameters={"node": NODE, "vmid": VMID, "snapname": SNAPNAME},
    returns={"type": "object"},
    cli=CliSpec(("vm", "snapshot-config"), positional=("vmid", "snapname")),
)
async def vm_snapshot_config(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return typed_config(await guests(ctx).snapshots.config(params["vmid"], params["snapname"]))


@registry.register(
    "PUT", SNAPSHOT_PATH + "/{snapname}/config", name="vm_snapshot_update",
    permission=SNAPSHOT, proxyto="node", description="Update snapshot metadata.",
    parameters={"node": NODE, "vmid": VMID, "snapname": SNAPNAME,
                "description": Param(optional=True, extra={"multiline": True},
                                     description="A textual description or comment.")},
    returns={"type": "null"},
    cli=CliSpec(("vm", "snapshot-set"), positional=("vmid", "snapname")),
)
async def vm_snapshot_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    if params.get("description") is None:
        return None   # PVE: nothing to change
    await guests(ctx).snapshots.set_description(params["vmid"], params["snapname"],
                                                params["description"])
    return None


@registry.register(
    "POST", SNAPSHOT_PATH + "/{snapname}/rollback", name="vm_rollback",
    permission=privs("VM.Snapshot", "VM.Snapshot.Rollback", path=VM_PATH, any=True),
    proxyto="node", description="Rollback VM state to specified snapshot.",
    parameters={"node": NODE, "vmid": VMID, "snapname": SNAPNAME,
                "start": Param(type="boolean", optional=True, default=False, description=(
                    "Whether the VM should get started after rolling back successfully. "
                    "(Note: VMs will be automatically started if the snapshot includes "
                    "RAM.)"))},
    returns={"type": "string", "description": "the task ID."},
    cli=CliSpec(("vm", "rollback"), positional=("vmid", "snapname")),
)
async def vm_rollback(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmid, snapname = params["vmid"], params["snapname"]
    if params["start"]:
        # PVE: starting after the rollback needs VM.PowerMgmt too
        ev = await ctx.services.access.evaluator()
        if not ev.check(ctx.userid, f"/vms/{vmid}", ["VM.PowerMgmt"]):
            raise PermissionDenied(f"/vms/{vmid}, VM.PowerMgmt")
    service.snapshots.check_rollback(await service.read(vmid), snapname)

    async def body(task: Task) -> None:
        await service.snapshots.rollback(task, vmid, snapname, start=params["start"])

    return ctx.services.tasks.start("qmrollback", str(vmid), ctx.userid, body)


@registry.register(
    "DELETE", SNAPSHOT_PATH + "/{snapname}", name="vm_delsnapshot",
    permission=SNAPSHOT, proxyto="node", description="Delete a VM snapshot.",
    parameters={"node": NODE, "vmid": VMID, "snapname": SNAPNAME,
                "force": Param(type="boolean", optional=True, default=False, description=(
                    "For removal from config file, even if removing disk snapshots "
                    "fails."))},
    returns={"type": "string", "description": "the task ID."},
    cli=CliSpec(("vm", "delsnapshot"), positional=("vmid", "snapname")),
)
async def vm_delsnapshot(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmid, snapname = params["vmid"], params["snapname"]
    service.snapshots.check_delete(await service.read(vmid), snapname)

    async def body(task: Task) -> None:
        await service.snapshots.delete(task, vmid, snapname, force=params["force"])

    return ctx.services.tasks.start("qmdelsnapshot", str(vmid), ctx.userid, body)


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/feature", name="vm_feature",
    permission=privs("VM.Audit", path=VM_PATH), proxyto="node",
    description="Check if feature for virtual machine is available.",
    parameters={"node": NODE, "vmid": VMID,
                "feature": Param(enum=FEATURES, description="Feature to check."),
                "snapname": Param(format="pve-configid", max_length=40, optional=True,
                                  description="The name of the snapshot.")},
    returns={"type": "object", "properties": {
        "hasFeature": {"type": "boolean"},
        "nodes": {"type": "array", "items": {"type": "string"}}}},
    cli=CliSpec(("vm", "feature"), positional=("vmid", "feature")),
)
async def vm_feature(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return await features.vm_feature(guests(ctx).ctx, params["vmid"], params["feature"],
                                     params.get("snapname"))
