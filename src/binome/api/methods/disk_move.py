"""Disk moves: POST /nodes/{node}/qemu/{vmid}/move_disk (PVE's move_vm_disk) and its
alias `move-disk`, to another storage or to another VM (`target-vmid`).

As PVE: the parameters and permissions are checked, then the move's own checks run
once before the task starts (a refusal is the answer; nothing changes), and again
in the task (task `qmmove`) under the VM's lock. The work is `guest.disk_move`'s.
"""

from __future__ import annotations

from typing import Any

from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError, PermissionDenied, fail
from binome.api.methods.common import NODE
from binome.api.methods.qemu import VM_PATH, VMID, guests
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.guest import config as vmconf
from binome.guest.disk_move import FORMATS, MoveRefused
from binome.tasks.manager import Task

# PVE's valid_drive_names_with_unused
DRIVE_NAMES = (*(f"{bus}{i}" for bus, count in vmconf.DISK_BUSES.items()
                 for i in range(count)),
               *vmconf.SPECIAL_DRIVES, *(f"unused{i}" for i in range(vmconf.MAX_UNUSED)))

PARAMETERS = {
    "node": NODE, "vmid": VMID,
    "target-vmid": Param(type="integer", optional=True, minimum=100, maximum=999_999_999,
                         description="The (unique) ID of the VM the disk moves to."),
    "disk": Param(enum=DRIVE_NAMES, description="The disk you want to move."),
    "storage": Param(optional=True, pattern=r"[a-z][a-z0-9\-_.]*[a-z0-9]",
                     description="Target storage."),
    "format": Param(optional=True, enum=FORMATS, description=(
        "Target disk format. Only used when moving to a different storage. If the target "
        "storage does not support the format, the storage's default format is used "
        "instead.")),
    "delete": Param(type="boolean", optional=True, default=False, description=(
        "Delete the original disk after successful copy. By default the original disk is "
        "kept as unused disk.")),
    "digest": Param(optional=True, max_length=40, description=(
        "Prevent changes if current configuration file has different SHA1 digest. This "
        "can be used to prevent concurrent modifications.")),
    "bwlimit": Param(type="integer", optional=True, minimum=0, description=(
        "Override I/O bandwidth limit (in KiB/s); 0: none.")),
    "target-disk": Param(optional=True, enum=DRIVE_NAMES, description=(
        "The config key the disk will be moved to on the target VM (for example, ide0 or "
        "scsi1). Default is the source disk key.")),
    "target-digest": Param(optional=True, max_length=40, description=(
        "Prevent changes if the current config file of the target VM has a different "
        "SHA1 digest. This can be used to detect concurrent modifications.")),
}
DESCRIPTION = ("Move volume to different storage or to a different VM. A running VM's "
               "disk is copied online by QEMU's mirror job; the old volume is kept as "
               "unusedN unless delete=1.")
PERMISSION = privs("VM.Config.Disk", path=VM_PATH)


def _refused(exc: MoveRefused) -> ApiError:
    """PVE's answer: raise_param_exc where it names a parameter (400), else die (500)."""
    if exc.param:
        return ParamError({exc.param: str(exc)})
    return fail(str(exc))


async def _need(ctx: RequestContext, path: str, priv: str) -> None:
    ev = await ctx.services.access.evaluator()
    if not ev.check(ctx.userid, path, [priv]):
        raise PermissionDenied(f"{path}, {priv}")


async def move_vm_disk(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    moves = service.disk_moves
    vmid, disk = params["vmid"], params["disk"]
    target_vmid, storage = params.get("target-vmid"), params.get("storage")
    if target_vmid is not None and storage:
        msg = "either set 'storage' or 'target-vmid', but not both"
        raise ParamError({"target-vmid": msg, "storage": msg})
    if target_vmid is not None:
        target_disk = params.get("target-disk") or disk
        if ctx.userid != "root@pam":
            await _need(ctx, f"/vms/{target_vmid}", "VM.Config.Disk")
        if target_vmid == vmid:
            raise ParamError({"target-vmid": "must be different than source VMID to "
                                             "reassign disk"})
        try:
            plan, _ = await moves.check_reassign(
                vmid, target_vmid, key=disk, target_key=target_disk,
                digest=params.get("digest"), target_digest=params.get("target-digest"))
        except MoveRefused as exc:
            raise _refused(exc) from None
        await _need(ctx, f"/storage/{plan.volid.partition(':')[0]}",
                    "Datastore.AllocateSpace")

        async def reassign(task: Task) -> None:
            await moves.reassign(task, vmid, target_vmid, key=disk, target_key=target_disk,
                                 digest=params.get("digest"),
                                 target_digest=params.get("target-digest"))

        return ctx.services.tasks.start("qmmove", f"{vmid}-{disk}>{target_vmid}-{target_disk}",
                                        ctx.userid, reassign)
    if not storage:
        msg = "both 'storage' and 'target-vmid' missing, either needs to be set"
        raise ParamError({"target-vmid": msg, "storage": msg})
    await _need(ctx, f"/storage/{storage}", "Datastore.AllocateSpace")
    vm = await service.read(vmid)
    try:
        await moves.check_move(vm, key=disk, storage=storage, fmt=params.get("format"),
                               delete=bool(params.get("delete")), digest=params.get("digest"))
    except MoveRefused as exc:
        raise _refused(exc) from None

    async def move(task: Task) -> None:
        await moves.move(task, vmid, key=disk, storage=storage, fmt=params.get("format"),
                         delete=bool(params.get("delete")), digest=params.get("digest"),
                         bwlimit_kib=params.get("bwlimit") or None, user=ctx.userid)

    return ctx.services.tasks.start("qmmove", str(vmid), ctx.userid, move)


registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/move_disk", name="vm_move_disk",
    permission=PERMISSION, proxyto="node", description=DESCRIPTION, parameters=PARAMETERS,
    returns={"type": "string", "description": "the task ID."},
    cli=CliSpec(("vm", "move-disk"), positional=("vmid", "disk", "storage")),
)(move_vm_disk)

registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/move-disk", name="vm_move_disk_alias",
    permission=PERMISSION, proxyto="node",
    description=DESCRIPTION + " (alias of move_disk)", parameters=PARAMETERS,
    returns={"type": "string", "description": "the task ID."},
)(move_vm_disk)
