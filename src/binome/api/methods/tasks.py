"""Task methods: list, status, log and stop of a node's tasks (proxied to that node)."""

from __future__ import annotations

from typing import Any

from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import PermissionDenied, fail, param_error
from binome.api.methods.common import NODE, UPID
from binome.api.registry import CliSpec, WithTotal, registry
from binome.api.schema import Param
from binome.tasks.upid import InvalidUpid, Upid

OWN = AnyUser("a user sees their own tasks and their tokens'; others' need Sys.Audit on "
              "/nodes/{node} (Sys.Modify to stop one)")


def _owns(authid: str, task_user: str) -> bool:
    """PVE: the task's user, or the user of the token that started it."""
    return task_user == authid or task_user.startswith(authid + "!")


async def _check_owner(ctx: RequestContext, record: Any, priv: str) -> None:
    """PVE's task methods: the owner may; anyone else needs `priv` on the task's node."""
    if _owns(ctx.userid, record.upid.user):
        return
    ev = await ctx.services.access.evaluator()
    if not ev.check(ctx.userid, f"/nodes/{ctx.node}", [priv]):
        raise PermissionDenied(f"/nodes/{ctx.node}, {priv}")


def _record(ctx: RequestContext, upid: str):
    try:
        Upid.parse(upid)
    except InvalidUpid as exc:
        raise param_error("upid", str(exc)) from None
    record = ctx.services.tasks.get(upid)
    if record is None:
        raise fail(f"no such task '{upid}'")
    return record


@registry.register(
    "GET", "/nodes/{node}/tasks", name="node_tasks", permission=OWN, proxyto="node",
    description="Read the task list of one node (newest first).",
    parameters={
        "node": NODE,
        "start": Param(type="integer", optional=True, default=0, minimum=0),
        "limit": Param(type="integer", optional=True, default=50, minimum=0),
        "source": Param(optional=True, default="archive", enum=("archive", "active", "all")),
        "vmid": Param(type="integer", optional=True, minimum=1),
        "typefilter": Param(optional=True),
        "userfilter": Param(optional=True),
        "errors": Param(type="boolean", optional=True, default=False),
        "since": Param(type="integer", optional=True),
        "until": Param(type="integer", optional=True),
        "statusfilter": Param(optional=True),
    },
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("task", "list"), fixed=(("source", "all"),),
                formatter="table:upid,type,id,user,status"),
)
async def node_tasks(ctx: RequestContext, params: dict[str, Any]) -> WithTotal:
    ev = await ctx.services.access.evaluator()
    if not ev.check(ctx.userid, f"/nodes/{ctx.node}", ["Sys.Audit"]):
        # filter before paging, so `total` counts what this user may see
        items, _ = ctx.services.tasks.list(
            start=0, limit=1 << 62, source=params["source"],
            typefilter=params.get("typefilter"), userfilter=params.get("userfilter"),
            vmid=params.get("vmid"), errors=params["errors"], since=params.get("since"),
            until=params.get("until"), statusfilter=params.get("statusfilter"))
        mine = [t for t in items if _owns(ctx.userid, str(t.get("user", "")))]
        start, limit = params["start"], params["limit"]
        return WithTotal(mine[start:start + limit] if limit else mine[start:], len(mine))
    items, total = ctx.services.tasks.list(
        start=params["start"], limit=params["limit"], source=params["source"],
        typefilter=params.get("typefilter"), userfilter=params.get("userfilter"),
        vmid=params.get("vmid"), errors=params["errors"], since=params.get("since"),
        until=params.get("until"), statusfilter=params.get("statusfilter"))
    return WithTotal(items, total)


@registry.register(
    "GET", "/nodes/{node}/tasks/{upid}/status", name="task_status", permission=OWN,
    proxyto="node", description="Read task status.",
    parameters={"node": NODE, "upid": UPID},
    returns={"type": "object"},
    cli=CliSpec(("task", "status"), positional=("upid",)),
)
async def task_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    record = _record(ctx, params["upid"])
    await _check_owner(ctx, record, "Sys.Audit")
    return record.to_status()


@registry.register(
    "GET", "/nodes/{node}/tasks/{upid}/log", name="task_log", permission=OWN,
    proxyto="node", description="Read the task log.",
    parameters={"node": NODE, "upid": UPID,
                "start": Param(type="integer", optional=True, default=0, minimum=0),
                "limit": Param(type="integer", optional=True, default=50, minimum=0)},
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("task", "log"), positional=("upid",), fixed=(("limit", "0"),),
                formatter="task_log"),
)
async def task_log(ctx: RequestContext, params: dict[str, Any]) -> WithTotal:
    await _check_owner(ctx, _record(ctx, params["upid"]), "Sys.Audit")
    lines, total = ctx.services.tasks.read_log(params["upid"], params["start"], params["limit"])
    return WithTotal(lines, total)


@registry.register(
    "DELETE", "/nodes/{node}/tasks/{upid}", name="task_stop", permission=OWN,
    proxyto="node", description="Stop a running task.",
    parameters={"node": NODE, "upid": UPID},
    cli=CliSpec(("task", "stop"), positional=("upid",)),
)
async def task_stop(ctx: RequestContext, params: dict[str, Any]) -> None:
    record = _record(ctx, params["upid"])
    await _check_owner(ctx, record, "Sys.Modify")
    if record.status == "running":
        ctx.services.tasks.stop(params["upid"])
