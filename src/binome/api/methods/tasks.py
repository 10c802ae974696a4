"""Task methods: list, status, log and stop of a node's tasks (proxied to that node), and
the cluster's recent tasks (`/cluster/tasks`, gathered from every node)."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import PermissionDenied, fail, param_error
from binome.api.methods.common import NODE, UPID, from_other_nodes
from binome.api.registry import CliSpec, WithTotal, registry
from binome.api.schema import Param
from binome.tasks.manager import RECENT_TASKS
from binome.tasks.upid import InvalidUpid, Upid

log = logging.getLogger("binome.api.tasks")

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


# -- /cluster/tasks -----------------------------------------------------------------

#: How long /cluster/tasks waits for another node's list (an unreachable node is left out)
REMOTE_TIMEOUT = 5.0


def cluster_task_entry(upid: str, *, running: bool, status: str | None = None,
                       endtime: int | None = None) -> dict[str, Any]:
    """One entry of PVE's /cluster/tasks (a node's `active` list as pvestatd broadcasts
    it): `pid` only while the task runs (PVE's GUI takes `pid` for "running"), `status`
    and `endtime` once it ended, no `pstart`; a token's task has `user` and `tokenid`."""
    u = Upid.parse(upid)
    entry: dict[str, Any] = {"upid": upid, "node": u.node, "starttime": u.starttime,
                             "type": u.type, "id": u.id, "user": u.user}
    if running:
        entry["pid"] = u.pid
    else:
        entry["endtime"] = endtime
        entry["status"] = status
    if "!" in u.user:
        entry["user"], entry["tokenid"] = u.user.split("!", 1)
    return entry


def from_node_list(items: list[dict[str, Any]],
                   max_entries: int = RECENT_TASKS) -> list[dict[str, Any]]:
    """A node's recent list from its /nodes/{node}/tasks entries (running ones carry
    status RUNNING): every running task, then finished ones up to `max_entries`."""
    running, finished = [], []
    for item in items:
        try:
            if item.get("status") == "RUNNING":
                running.append(cluster_task_entry(str(item["upid"]), running=True))
            else:
                finished.append(cluster_task_entry(
                    str(item["upid"]), running=False, status=item.get("status"),
                    endtime=item.get("endtime")))
        except (InvalidUpid, KeyError, TypeError):
            continue
    return running + finished[:max(0, max_entries - len(running))]


def visible_tasks(entries: list[dict[str, Any]], caller: str,
                  see_all: bool) -> list[dict[str, Any]]:
    """PVE's Cluster.pm `tasks`: everything with Sys.Audit on /; else the entries whose
    user (a token's task counts as its user's) is the caller. As in PVE, a token caller
    without Sys.Audit on / sees none: its id never equals a task's user part."""
    return entries if see_all else [e for e in entries if e.get("user") == caller]


async def _remote_recent(ctx: RequestContext, http: aiohttp.ClientSession, node: str,
                         headers: dict[str, str]) -> list[dict[str, Any]]:
    """Another node's recent tasks, read from its /nodes/{node}/tasks as root@pam (the
    tasks live in that node's own files)."""
    base = await ctx.services.node_api_url(node)
    url = f"{base}/api2/json/nodes/{node}/tasks"
    lists = []
    for query in ({"source": "active", "limit": "1000000"},
                  {"source": "archive", "limit": str(RECENT_TASKS)}):
        async with http.get(url, params=query, headers=headers,
                            ssl=ctx.services.cluster_ssl_context()) as resp:
            if resp.status != 200:
                raise aiohttp.ClientError(f"HTTP {resp.status} {resp.reason}")
            lists.append((await resp.json(content_type=None)).get("data") or [])
    return from_node_list([*lists[0], *lists[1]])


@registry.register(
    "GET", "/cluster/tasks", name="cluster_tasks",
    permission=AnyUser("all tasks with Sys.Audit on /, else one's own and one's tokens' "
                       "(PVE)"),
    description="List recent tasks (cluster wide).",
    returns={"type": "array", "items": {"type": "object", "properties": {
        "upid": {"type": "string"}}}},
    cli=CliSpec(("cluster", "tasks"), formatter="table:upid,node,user,status"),
)
async def cluster_tasks(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    ev = await ctx.services.access.evaluator()
    see_all = ev.check(ctx.userid, "/", ["Sys.Audit"])
    local = [cluster_task_entry(str(r.upid), running=r.status == "running",
                                status=r.exitstatus, endtime=r.endtime)
             for r in ctx.services.tasks.recent()]
    by_node: dict[str, list[dict[str, Any]]] = {ctx.node: local}
    by_node.update(await from_other_nodes(
        ctx, "cluster tasks", REMOTE_TIMEOUT,
        lambda http, node, headers: _remote_recent(ctx, http, node, headers)))
    entries = [e for node in sorted(by_node) for e in by_node[node]]
    return visible_tasks(entries, ctx.userid, see_all)
