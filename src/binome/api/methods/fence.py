"""Fence device configuration (`/cluster/ha/fence/...`, a binome extension) and
`binome fence`: fence a node by hand (like `fence_node`) or test its device.

Validates, calls and shapes: the records live in `binome.fence.devices` (which
builds and checks a record, and owns `/binome/ha/fence/<node>`), the manual
power-off confirmation in `binome.ha.config`. The password is **write-only**:
never returned (`has_password: 1` instead), never put in an error, a task log
or the cluster log.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from binome.access.permission import Or
from binome.api.errors import ApiError, ParamError
from binome.api.methods.common import fence_devices, ha_config
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.fence.devices import (
    ACTIONS,
    AGENT_OPTIONS,
    TYPES,
    FenceRecordError,
    build_record,
    public_record,
)
from binome.ha.model import FenceConfirmation

if TYPE_CHECKING:
    from binome.api.context import RequestContext

# reads as HA's; anything that drives a fence device (or edits one) is Sys.Fence, a
# root-tier privilege only Administrator has: it powers nodes off
AUDIT = Or(privs("Sys.Audit"), privs("HA.Audit"))
CONSOLE = privs("Sys.Fence")
TYPE = Param(type="string", enum=TYPES,
             description="Device type: ipmi (IPMI over LAN) or agent (a fence_* agent).")
FENCE_PARAMS = {
    "type": Param(type="string", optional=True, enum=TYPES,
                  description="Device type: ipmi (IPMI over LAN) or agent (a fence_* agent)."),
    "ip": Param(type="string", optional=True, max_length=253, format="host-address",
                description="ipmi: the BMC's address (IP or host name)."),
    "port": Param(type="integer", optional=True, minimum=1, maximum=65535,
                  description="ipmi: the BMC's UDP port [623]."),
    "username": Param(type="string", optional=True, max_length=64,
                      description="ipmi: the BMC user."),
    "password": Param(type="string", optional=True, secret=True, max_length=256,
                      description="The device password (write-only: never shown again)."),
    "timeout": Param(type="number", optional=True, minimum=0.1, maximum=600,
                     description="Seconds for one operation, confirmation included "
                                 "[ipmi 5, agent 30]."),
    "agent": Param(type="string", optional=True, max_length=255,
                   description="agent: the fence agent (fence_ipmilan...) or its path."),
    "options": Param(type="string", optional=True, max_length=4096, props=AGENT_OPTIONS,
                     description="agent: the agent's options as key=value[,key=value...] "
                                 "(booleans: key=1)."),
    "confirm": Param(type="boolean", optional=True,
                     description="agent: after off, poll status until it reports off [1]."),
    "action": Param(type="string", optional=True, enum=ACTIONS,
                    description="What fencing does: reboot (off, confirmed, then on; a "
                                "surviving node retries the on) or off (left off) [reboot]."),
}
NODE = Param(type="string", format="pve-node", description="The node the device powers.")


def _build(node: str, old: dict[str, Any] | None, params: dict[str, Any],
           delete: Sequence[str]) -> dict[str, Any]:
    """The record to store for `node`, validated; ParamError naming every bad parameter."""
    try:
        return build_record(old, params, delete)
    except FenceRecordError as exc:
        raise ParamError(exc.errors) from None


async def _known_node(ctx: RequestContext, node: str) -> None:
    records = ctx.services.cluster.node_records
    rec = records.get(node)
    if rec is None:
        raise ApiError(500, f"no such cluster node '{node}'")
    if rec.get("role") == "witness":
        raise ApiError(500, f"node '{node}' is a witness: it runs no guests, nothing to fence")


@registry.register(
    "GET", "/cluster/ha/fence", name="fence_list", permission=AUDIT,
    description="List the nodes' fence devices (passwords are never shown).",
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("fence", "list"), formatter="table:node,type,ip,port,username,agent,"
                                             "has_password"),
)
async def fence_list(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    records = await fence_devices(ctx).records()
    return [public_record(node, cfg) for node, cfg in records.items()]


@registry.register(
    "GET", "/cluster/ha/fence/{node}", name="fence_get", permission=AUDIT,
    description="Read a node's fence device (the password is never shown).",
    parameters={"node": NODE}, returns={"type": "object"},
    cli=CliSpec(("fence", "config"), positional=("node",)),
)
async def fence_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return public_record(params["node"], await fence_devices(ctx).record(params["node"]))


@registry.register(
    "POST", "/cluster/ha/fence/{node}", name="fence_create", permission=CONSOLE,
    description="Configure a node's fence device.",
    parameters={"node": NODE, **FENCE_PARAMS, "type": TYPE},   # type: required on create
    cli=CliSpec(("fence", "add"), positional=("node",)),
)
async def fence_create(ctx: RequestContext, params: dict[str, Any]) -> None:
    devices = fence_devices(ctx, quorum=True)
    node = params["node"]
    await _known_node(ctx, node)
    cfg = _build(node, None, params, [])
    await devices.create(node, cfg)
    await _clusterlog(ctx, f"fence device of {node} configured ({cfg['type']}) by {ctx.userid}")


@registry.register(
    "PUT", "/cluster/ha/fence/{node}", name="fence_set", permission=CONSOLE,
    description="Change a node's fence device (the password is kept unless given).",
    parameters={"node": NODE, **FENCE_PARAMS,
                "delete": Param(type="string", optional=True,
                                description="Settings to reset (comma-separated).")},
    cli=CliSpec(("fence", "set"), positional=("node",)),
)
async def fence_set(ctx: RequestContext, params: dict[str, Any]) -> None:
    devices = fence_devices(ctx, quorum=True)
    node = params["node"]
    delete = [d.strip() for d in (params.get("delete") or "").split(",") if d.strip()]
    old = await devices.record(node)
    await devices.replace(node, old, _build(node, old, params, delete))
    await _clusterlog(ctx, f"fence device of {node} changed by {ctx.userid}")


@registry.register(
    "DELETE", "/cluster/ha/fence/{node}", name="fence_remove", permission=CONSOLE,
    description="Remove a node's fence device (HA then relies on the watchdog alone).",
    parameters={"node": NODE},
    cli=CliSpec(("fence", "remove"), positional=("node",)),
)
async def fence_remove(ctx: RequestContext, params: dict[str, Any]) -> None:
    node = params["node"]
    await fence_devices(ctx, quorum=True).remove(node)
    await _clusterlog(ctx, f"fence device of {node} removed by {ctx.userid}")


async def _clusterlog(ctx: RequestContext, message: str, pri: str | None = None) -> None:
    clog = ctx.services.clusterlog
    kw: dict[str, Any] = {"tag": "fence", "user": ctx.userid}
    if pri:
        kw["pri"] = pri
    try:
        await clog.write(message, **kw)
    except Exception:   # the cluster log is best effort; the action's answer is not
        pass


@registry.register(
    "POST", "/cluster/ha/fence/{node}/status", name="fence_test", permission=CONSOLE,
    description="Test a node's fence device: read the power state, change nothing.",
    parameters={"node": NODE}, returns={"type": "object"},
    cli=CliSpec(("fence", "test"), positional=("node",), formatter="fence_result"),
)
async def fence_test(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    device = await fence_devices(ctx).device(params["node"])
    result = await device.status()
    return {"node": params["node"], "ok": int(result.ok), "state": result.state,
            "detail": result.detail, "duration": round(result.duration, 3)}


@registry.register(
    "POST", "/cluster/ha/fence/{node}/fence", name="fence_node", permission=CONSOLE,
    description="Fence a node now: power it off through its device and confirm "
                "(like fence_node). Its guests stop at once.",
    parameters={"node": NODE}, returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("fence", "node"), positional=("node",),
                confirm="this powers the node off through its fence device: every guest "
                        "on it stops at once"),
)
async def fence_node(ctx: RequestContext, params: dict[str, Any]) -> str:
    node = params["node"]
    if node in (ctx.node, "localhost"):
        raise ApiError(500, f"refusing to fence the local node '{ctx.node}': "
                            "run it from another node")
    await _known_node(ctx, node)
    device = await fence_devices(ctx).device(node)

    async def body(task) -> None:
        from binome.tasks.manager import TaskFailed

        task.log(f"fencing node {node} through its {device.kind} device")
        await _clusterlog(ctx, f"fence of {node} requested by {ctx.userid}", "warning")
        result = await device.fence(node)
        task.log(f"{result.action}: {'ok' if result.ok else 'FAILED'}, power "
                 f"{result.state or 'unknown'} after {result.duration:.1f}s ({result.detail})")
        if not result.ok:
            await _clusterlog(ctx, f"fence of {node} failed: {result.detail}", "err")
            raise TaskFailed(f"fence of {node} failed: {result.detail}")
        await _clusterlog(ctx, f"node {node} fenced: power off confirmed", "warning")

    return ctx.services.tasks.start("hafence", node, ctx.userid, body)


@registry.register(
    "POST", "/cluster/ha/fence/{node}/power-on", name="fence_power_on", permission=CONSOLE,
    description="Power a node on through its fence device and confirm it is on (after a "
                "fence with action=off, or when a reboot's power-on kept failing).",
    parameters={"node": NODE}, returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("fence", "power-on"), positional=("node",)),
)
async def fence_power_on(ctx: RequestContext, params: dict[str, Any]) -> str:
    node = params["node"]
    await _known_node(ctx, node)
    devices = fence_devices(ctx)
    device = await devices.device(node)

    async def body(task) -> None:
        from binome.tasks.manager import TaskFailed

        task.log(f"powering node {node} on through its {device.kind} device")
        result = await device.power_on(confirm=True)
        task.log(f"{result.action}: {'ok' if result.ok else 'FAILED'}, power "
                 f"{result.state or 'unknown'} after {result.duration:.1f}s ({result.detail})")
        if not result.ok:
            await _clusterlog(ctx, f"power-on of {node} failed: {result.detail}", "err")
            raise TaskFailed(f"power-on of {node} failed: {result.detail}")
        # a reboot's power-on that the HA manager still owed is settled
        await ha_config(ctx).settle_power_on(node)
        await _clusterlog(ctx, f"node {node} powered on by {ctx.userid}")

    return ctx.services.tasks.start("hapoweron", node, ctx.userid, body)


CONFIRM_WARNING = """\
you are about to tell the HA manager that node {node} is POWERED OFF.

  This is a fence proof, exactly like a fence device confirming power-off: the
  HA manager will at once recover the HA guests that were on {node} on other
  nodes. If {node} is in fact still running (hung, partitioned, or only its
  network is down), every such guest will run TWICE, writing to the same disks:
  the data splits and is corrupted.

  Only confirm after you verified it yourself: the power is physically off
  (PDU, power cable, remote console of the BMC showing it off), or the machine
  is gone. Do not confirm to "get things moving" while you are unsure."""


@registry.register(
    "POST", "/cluster/ha/fence/{node}/confirm", name="fence_confirm", permission=CONSOLE,
    description="Confirm, as the administrator, that a lost node is powered off (like "
                "stonith_admin --confirm): a fence proof for its current loss only. "
                "Its HA guests are then recovered elsewhere. Dangerous if it is not off.",
    parameters={"node": NODE}, returns={"type": "object"},
    cli=CliSpec(("fence", "confirm-off"), positional=("node",),
                confirm=CONFIRM_WARNING),   # the CLI fills in {node}
)
async def fence_confirm(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Record `/binome/ha/fence_confirm/<node>` for the loss the manager status shows.

    Bound to `NodeRecord.loss`: the CRM accepts it only while that loss lasts
    (and the node's lease stays gone), so it can never apply to a later
    failure of the node. Refused for the local node, a node whose lease is
    alive, and a node the HA manager does not consider lost.
    """
    config = ha_config(ctx, quorum=True)
    node = params["node"]
    if node in (ctx.node, "localhost"):
        raise ApiError(500, f"refusing to confirm the power-off of the local node "
                            f"'{ctx.node}': it is answering this request")
    await _known_node(ctx, node)
    if await config.node_lease_alive(node):
        raise ApiError(500, f"node '{node}' is online (its lease is alive): refusing to "
                            "confirm it is powered off")
    ms = await config.manager_status()
    rec = (ms.get("node_status") or {}).get(node) or {}
    loss = rec.get("loss")
    if rec.get("state") not in ("unknown", "fence") or not loss:
        raise ApiError(500, f"node '{node}' is not lost for the HA manager (state "
                            f"{rec.get('state') or 'unknown to it'}): nothing to confirm")
    await config.record_fence_confirmation(FenceConfirmation(
        node=node, loss=str(loss), user=ctx.userid, at=round(time.time(), 3)))
    waiting = sorted(sid for sid, sd in (ms.get("service_status") or {}).items()
                     if sd.get("node") == node and sd.get("state") in ("fence", "freeze"))
    await _clusterlog(ctx, f"power-off of {node} confirmed by {ctx.userid} (manual fence, "
                           f"loss {loss}): its HA services may now be recovered elsewhere"
                           + (f" ({', '.join(waiting)})" if waiting else ""), "warning")
    return {"node": node, "loss": loss, "user": ctx.userid, "services": waiting}
