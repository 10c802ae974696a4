"""Cloud-init methods: /nodes/{node}/qemu/{vmid}/cloudinit[/dump], in PVE's shapes.

The data itself is `binome.guest.cloudinit`'s; these handlers read the VM's config,
check who may see the password hash, and call the guest service to rewrite the drive.
"""

from __future__ import annotations

from typing import Any

from binome.api.context import RequestContext
from binome.api.errors import fail
from binome.api.methods.common import NODE
from binome.api.methods.qemu import AUDIT, VM_PATH, VMID, guests
from binome.api.registry import privs, registry
from binome.api.schema import Param
from binome.guest import cloudinit
from binome.guest.guests import GuestFailure


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/cloudinit", name="vm_cloudinit_pending",
    permission=AUDIT, proxyto="node",
    description="Get the cloudinit configuration with both current and pending values.",
    parameters={"node": NODE, "vmid": VMID},
    returns={"type": "array"},
)
async def vm_cloudinit_pending(ctx: RequestContext, params: dict[str, Any]
                               ) -> list[dict[str, Any]]:
    vm = await guests(ctx).read(params["vmid"])
    config = cloudinit.masked(vm.config)
    # PVE lists the set $cloudinitoptions (not ipconfigN); binome writes the drive at
    # every start and PUT, so no value is pending beyond what the next write takes
    return [{"key": key, "value": str(config[key])} for key in cloudinit.OPTIONS
            if config.get(key)]


@registry.register(
    "PUT", "/nodes/{node}/qemu/{vmid}/cloudinit", name="vm_cloudinit_update",
    permission=privs("VM.Config.Cloudinit", path=VM_PATH), proxyto="node",
    description="Regenerate and change cloudinit config drive.",
    parameters={"node": NODE, "vmid": VMID},
    returns={"type": "null"},
)
async def vm_cloudinit_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    try:
        await guests(ctx).update_cloudinit(params["vmid"])
    except GuestFailure as exc:
        raise fail(str(exc)) from None


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/cloudinit/dump", name="vm_cloudinit_dump",
    permission=AUDIT, proxyto="node", description="Get automatically generated cloudinit config.",
    parameters={"node": NODE, "vmid": VMID,
                "type": Param(enum=("user", "network", "meta"), description="Config type.")},
    returns={"type": "string"},
)
async def vm_cloudinit_dump(ctx: RequestContext, params: dict[str, Any]) -> str:
    vmid = params["vmid"]
    vm = await guests(ctx).read(vmid)
    ev = await ctx.services.access.evaluator()
    # PVE: the password hash only for who may change cloud-init settings
    mask = not ev.check(ctx.userid, f"/vms/{vmid}", ["VM.Config.Cloudinit"])
    try:
        return cloudinit.dump(vm.config, vmid, params["type"], mask, cloudinit.host_dns())
    except (cloudinit.CloudinitError, ValueError) as exc:
        raise fail(str(exc)) from None
