"""HA API (`/cluster/ha/...`, PVE shapes) and the `binome ha ...` commands.

The resource and group configs are single JSON documents in etcd
(`/binome/ha/resources`, `/binome/ha/groups`), edited with compare-and-swap;
admin moves (`migrate`, `relocate`) are appended to `/binome/ha/commands/`
for the CRM master; status is read from the manager status and the LRM
reports the daemons write (`binome.ha.daemon`).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from binome.api.errors import ApiError, param_error
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.cli import format as cli_format
from binome.ha.model import GroupConfig, ResourceConfig, parse_group_nodes
from binome.store import keys

if TYPE_CHECKING:
    from binome.api.context import RequestContext

AUDIT = privs("Sys.Audit")
CONSOLE = privs("Sys.Console")   # PVE's privilege for HA changes
STATES = ("started", "stopped", "enabled", "disabled", "ignored")


def _store(ctx: RequestContext):
    cluster = ctx.services.cluster
    if cluster.store is None:
        raise ApiError(500, "this node is not part of a cluster")
    return cluster.store


def _require_quorum(ctx: RequestContext):
    store = _store(ctx)
    if not ctx.services.cluster.view.quorate:
        raise ApiError(500, "cluster not ready - no quorum?")
    return store


def parse_sid(raw: str) -> str:
    """`vm:100` or a bare `100` (PVE's parse_sid); containers do not exist here."""
    text = str(raw).strip()
    if text.isdigit():
        return f"vm:{int(text)}"
    kind, _, vmid = text.partition(":")
    if kind == "vm" and vmid.isdigit():
        return f"vm:{int(vmid)}"
    if kind == "ct":
        raise param_error("sid", "containers are not supported")
    raise param_error("sid", f"unable to parse service id '{text}'")


def _digest(doc: Any) -> str:
    return hashlib.sha1(json.dumps(doc or {}, sort_keys=True).encode()).hexdigest()


def _resource_entry(sid: str, cfg: dict[str, Any], digest: str) -> dict[str, Any]:
    out = {"sid": sid, "type": sid.split(":", 1)[0], "state": cfg.get("state", "started"),
           "max_restart": cfg.get("max_restart", 1), "max_relocate": cfg.get("max_relocate", 1),
           "digest": digest}
    if cfg.get("group"):
        out["group"] = cfg["group"]
    if cfg.get("comment"):
        out["comment"] = cfg["comment"]
    return out


RESOURCE_PARAMS = {
    "state": Param(type="string", optional=True, enum=STATES,
                   description="Requested state (enabled = started)."),
    "group": Param(type="string", optional=True, description="HA group identifier."),
    "max_restart": Param(type="integer", optional=True, minimum=0, maximum=10,
                         description="Restarts on the same node after a failed start."),
    "max_relocate": Param(type="integer", optional=True, minimum=0, maximum=10,
                          description="Relocations to another node after failed restarts."),
    "comment": Param(type="string", optional=True, max_length=4096, description="Comment."),
}


def _apply(cfg: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    out = dict(cfg)
    for key in RESOURCE_PARAMS:
        if params.get(key) is not None:
            out[key] = params[key]
    if out.get("state") == "enabled":
        out["state"] = "started"
    ResourceConfig.from_dict("vm:0", out)   # validates
    return out


@registry.register(
    "GET", "/cluster/ha/resources", name="ha_resources", permission=AUDIT,
    description="List HA resources.",
    parameters={"type": Param(type="string", optional=True, enum=("vm", "ct"),
                              description="Only list resources of this type.")},
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("ha", "config"), formatter="table:sid,state,group,max_restart,max_relocate"),
)
async def ha_resources(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    doc = await _store(ctx).get_value(keys.HA_RESOURCES, {}) or {}
    digest = _digest(doc)
    return [_resource_entry(sid, cfg, digest) for sid, cfg in sorted(doc.items())
            if params.get("type") in (None, sid.split(":", 1)[0])]


@registry.register(
    "POST", "/cluster/ha/resources", name="ha_resource_add", permission=CONSOLE,
    description="Create a new HA resource.",
    parameters={"sid": Param(type="string", description="HA resource ID (vm:100 or 100)."),
                **RESOURCE_PARAMS},
    cli=CliSpec(("ha", "add"), positional=("sid",)),
)
async def ha_resource_add(ctx: RequestContext, params: dict[str, Any]) -> None:
    store = _require_quorum(ctx)
    sid = parse_sid(params["sid"])
    vmid = int(sid.split(":", 1)[1])
    if await store.get(keys.vmid(vmid)) is None:
        raise ApiError(500, f"no such VM '{vmid}'")
    groups = await store.get_value(keys.HA_GROUPS, {}) or {}
    if params.get("group") and params["group"] not in groups:
        raise ApiError(500, f"no such ha group '{params['group']}'")
    cfg = _apply({"state": "started"}, params)

    def mutate(doc):
        doc = dict(doc or {})
        if sid in doc:
            raise ApiError(500, f"resource ID '{sid}' already defined")
        doc[sid] = cfg
        return doc

    await store.update(keys.HA_RESOURCES, mutate)


@registry.register(
    "GET", "/cluster/ha/resources/{sid}", name="ha_resource_get", permission=AUDIT,
    description="Read an HA resource's configuration.",
    parameters={"sid": Param(type="string", description="HA resource ID.")},
    returns={"type": "object"},
)
async def ha_resource_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    sid = parse_sid(params["sid"])
    doc = await _store(ctx).get_value(keys.HA_RESOURCES, {}) or {}
    if sid not in doc:
        raise ApiError(500, f"no such resource '{sid}'")
    return _resource_entry(sid, doc[sid], _digest(doc))


@registry.register(
    "PUT", "/cluster/ha/resources/{sid}", name="ha_resource_set", permission=CONSOLE,
    description="Update an HA resource.",
    parameters={"sid": Param(type="string", description="HA resource ID."),
                **RESOURCE_PARAMS,
                "delete": Param(type="string", optional=True,
                                description="Settings to delete (comma-separated)."),
                "digest": Param(type="string", optional=True, max_length=64,
                                description="Refuse the change if the config changed.")},
    cli=CliSpec(("ha", "set"), positional=("sid",)),
)
async def ha_resource_set(ctx: RequestContext, params: dict[str, Any]) -> None:
    store = _require_quorum(ctx)
    sid = parse_sid(params["sid"])
    delete = [d.strip() for d in (params.get("delete") or "").split(",") if d.strip()]

    def mutate(doc):
        doc = dict(doc or {})
        if params.get("digest") and params["digest"] != _digest(doc):
            raise ApiError(500, "detected modified configuration - file changed by other "
                                "user? Try again.")
        if sid not in doc:
            raise ApiError(500, f"no such resource '{sid}'")
        cfg = {k: v for k, v in doc[sid].items() if k not in delete}
        doc[sid] = _apply(cfg, params)
        return doc

    await store.update(keys.HA_RESOURCES, mutate)


@registry.register(
    "DELETE", "/cluster/ha/resources/{sid}", name="ha_resource_remove", permission=CONSOLE,
    description="Delete an HA resource (the guest is left as it is).",
    parameters={"sid": Param(type="string", description="HA resource ID.")},
    cli=CliSpec(("ha", "remove"), positional=("sid",)),
)
async def ha_resource_remove(ctx: RequestContext, params: dict[str, Any]) -> None:
    store = _require_quorum(ctx)
    sid = parse_sid(params["sid"])

    def mutate(doc):
        doc = dict(doc or {})
        if sid not in doc:
            raise ApiError(500, f"no such resource '{sid}'")
        del doc[sid]
        return doc

    await store.update(keys.HA_RESOURCES, mutate)


async def _append_command(ctx: RequestContext, line: str) -> None:
    store = _require_quorum(ctx)
    seq = f"{time.time_ns():020d}-{ctx.services.config.name}"
    await store.put(keys.ha_command(seq), line)


for _verb in ("migrate", "relocate"):
    def _make(verb: str):
        async def handler(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
            sid = parse_sid(params["sid"])
            doc = await _store(ctx).get_value(keys.HA_RESOURCES, {}) or {}
            if sid not in doc:
                raise ApiError(500, f"no such resource '{sid}'")
            await _append_command(ctx, f"{verb} {sid} {params['node']}")
            return {"sid": sid, "requested-node": params["node"]}
        return handler

    registry.register(
        "POST", f"/cluster/ha/resources/{{sid}}/{_verb}", name=f"ha_resource_{_verb}",
        permission=CONSOLE,
        description=f"Request the CRM to {_verb} the resource to another node.",
        parameters={"sid": Param(type="string", description="HA resource ID."),
                    "node": Param(type="string", format="pve-node", description="Target node.")},
        returns={"type": "object"},
        cli=CliSpec(("ha", _verb), positional=("sid", "node")),
    )(_make(_verb))


# ---------------------------------------------------------------- groups


def _group_entry(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    nodes = ",".join(f"{n}:{p}" if p else n for n, p in sorted(cfg.get("nodes", {}).items()))
    out = {"group": name, "type": "group", "nodes": nodes,
           "restricted": int(bool(cfg.get("restricted"))),
           "nofailback": int(bool(cfg.get("nofailback")))}
    if cfg.get("comment"):
        out["comment"] = cfg["comment"]
    return out


GROUP_PARAMS = {
    "nodes": Param(type="string", optional=True, description="node[:priority],..."),
    "restricted": Param(type="boolean", optional=True, description="Only run on these nodes."),
    "nofailback": Param(type="boolean", optional=True,
                        description="Do not move back to a preferred node."),
    "comment": Param(type="string", optional=True, max_length=4096, description="Comment."),
}


def _group_apply(cfg: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    out = dict(cfg)
    if params.get("nodes") is not None:
        try:
            out["nodes"] = parse_group_nodes(params["nodes"])
        except ValueError:
            raise param_error("nodes", "invalid format: node[:priority],...") from None
    for key in ("restricted", "nofailback", "comment"):
        if params.get(key) is not None:
            out[key] = params[key]
    GroupConfig.from_dict("g", out)
    return out


@registry.register(
    "GET", "/cluster/ha/groups", name="ha_groups", permission=AUDIT,
    description="List HA groups.", returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("ha", "grouplist"), formatter="table:group,nodes,restricted,nofailback"),
)
async def ha_groups(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    doc = await _store(ctx).get_value(keys.HA_GROUPS, {}) or {}
    return [_group_entry(name, cfg) for name, cfg in sorted(doc.items())]


@registry.register(
    "POST", "/cluster/ha/groups", name="ha_group_add", permission=CONSOLE,
    description="Create an HA group.",
    parameters={"group": Param(type="string", pattern=r"[A-Za-z][A-Za-z0-9\-_.]{0,63}",
                               description="Group name."), **GROUP_PARAMS},
    cli=CliSpec(("ha", "groupadd"), positional=("group",)),
)
async def ha_group_add(ctx: RequestContext, params: dict[str, Any]) -> None:
    store = _require_quorum(ctx)
    name = params["group"]
    if not params.get("nodes"):
        raise param_error("nodes", "property is missing and it is not optional")
    cfg = _group_apply({}, params)

    def mutate(doc):
        doc = dict(doc or {})
        if name in doc:
            raise ApiError(500, f"ha group '{name}' already defined")
        doc[name] = cfg
        return doc

    await store.update(keys.HA_GROUPS, mutate)


@registry.register(
    "GET", "/cluster/ha/groups/{group}", name="ha_group_get", permission=AUDIT,
    description="Read an HA group.",
    parameters={"group": Param(type="string", description="Group name.")},
    returns={"type": "object"},
)
async def ha_group_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    doc = await _store(ctx).get_value(keys.HA_GROUPS, {}) or {}
    if params["group"] not in doc:
        raise ApiError(500, f"no such ha group '{params['group']}'")
    return _group_entry(params["group"], doc[params["group"]])


@registry.register(
    "PUT", "/cluster/ha/groups/{group}", name="ha_group_set", permission=CONSOLE,
    description="Update an HA group.",
    parameters={"group": Param(type="string", description="Group name."), **GROUP_PARAMS},
)
async def ha_group_set(ctx: RequestContext, params: dict[str, Any]) -> None:
    store = _require_quorum(ctx)
    name = params["group"]

    def mutate(doc):
        doc = dict(doc or {})
        if name not in doc:
            raise ApiError(500, f"no such ha group '{name}'")
        doc[name] = _group_apply(doc[name], params)
        return doc

    await store.update(keys.HA_GROUPS, mutate)


@registry.register(
    "DELETE", "/cluster/ha/groups/{group}", name="ha_group_remove", permission=CONSOLE,
    description="Delete an HA group (refused while a resource uses it).",
    parameters={"group": Param(type="string", description="Group name.")},
    cli=CliSpec(("ha", "groupremove"), positional=("group",)),
)
async def ha_group_remove(ctx: RequestContext, params: dict[str, Any]) -> None:
    store = _require_quorum(ctx)
    name = params["group"]
    resources = await store.get_value(keys.HA_RESOURCES, {}) or {}
    users = sorted(sid for sid, cfg in resources.items() if cfg.get("group") == name)
    if users:
        raise ApiError(500, f"ha group '{name}' is used by {', '.join(users)}")

    def mutate(doc):
        doc = dict(doc or {})
        if name not in doc:
            raise ApiError(500, f"no such ha group '{name}'")
        del doc[name]
        return doc

    await store.update(keys.HA_GROUPS, mutate)


# ---------------------------------------------------------------- status


async def _raw_status(ctx: RequestContext) -> dict[str, Any]:
    store = _store(ctx)
    entries = {e.key: e.value for e in await store.get_prefix(keys.HA)}
    lrms = {k[len(keys.HA_LRM):]: v for k, v in entries.items() if k.startswith(keys.HA_LRM)}
    return {"ms": entries.get(keys.HA_MANAGER_STATUS) or {},
            "lock": entries.get(keys.HA_MANAGER_LOCK),
            "resources": entries.get(keys.HA_RESOURCES) or {}, "lrms": lrms}


@registry.register(
    "GET", "/cluster/ha/status/current", name="ha_status_current", permission=AUDIT,
    description="HA status: quorum, master, LRMs and services.",
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("ha", "status"), formatter="ha_status"),
)
async def ha_status_current(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    me = ctx.services.config.name
    quorate = bool(ctx.services.cluster.view.quorate)
    out: list[dict[str, Any]] = [{"id": "quorum", "type": "quorum", "node": me,
                                  "status": "OK" if quorate else "No quorum on node",
                                  "quorate": int(quorate)}]
    raw = await _raw_status(ctx)
    ms, lock = raw["ms"], raw["lock"]
    master = ms.get("master_node")
    if master:
        state = "active" if lock == master else "idle (lock not held)"
        out.append({"id": "master", "type": "master", "node": master,
                    "status": f"{master} ({state})"})
    for node, lrm in sorted(raw["lrms"].items()):
        rec = (ms.get("node_status") or {}).get(node, {})
        state = lrm.get("state", "?")
        label = {"active": "active", "wait_for_agent_lock": "idle",
                 "lost_agent_lock": "lost agent lock", "maintenance": "maintenance mode"}
        text = label.get(state, state)
        if rec.get("state") and rec["state"] != "online":
            text = f"{text}, node {rec['state']}"
        out.append({"id": f"lrm:{node}", "type": "lrm", "node": node, "state": state,
                    "mode": lrm.get("mode"), "watchdog": int(bool(lrm.get("watchdog_armed"))),
                    "status": f"{node} ({text})"})
    services = ms.get("service_status") or {}
    for sid, cfg in sorted(raw["resources"].items()):
        sd = services.get(sid) or {}
        node = sd.get("node", "")
        crm_state = sd.get("state", "ignored" if cfg.get("state") == "ignored" else "queued")
        entry = {"id": f"service:{sid}", "type": "service", "sid": sid, "node": node,
                 "state": crm_state, "crm_state": crm_state,
                 "request_state": cfg.get("state", "started"),
                 "status": f"{sid} ({node}, {crm_state})",
                 "max_restart": cfg.get("max_restart", 1),
                 "max_relocate": cfg.get("max_relocate", 1)}
        if cfg.get("group"):
            entry["group"] = cfg["group"]
        if sd.get("target"):
            entry["target"] = sd["target"]
        if sd.get("reason"):
            entry["reason"] = sd["reason"]
        out.append(entry)
    return out


@registry.register(
    "GET", "/cluster/ha/status/manager_status", name="ha_status_manager", permission=AUDIT,
    description="The full manager status, quorum and LRM reports (for debugging).",
    returns={"type": "object"},
)
async def ha_status_manager(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    raw = await _raw_status(ctx)
    return {"manager_status": raw["ms"],
            "quorum": {"node": ctx.services.config.name,
                       "quorate": int(bool(ctx.services.cluster.view.quorate))},
            "lrm_status": raw["lrms"]}


def format_ha_status(entries: list[dict[str, Any]]) -> str:
    """`ha-manager status`: one line per entry, `type status`."""
    lines = []
    for e in entries:
        text = e.get("status", "")
        if e["type"] == "service" and e.get("reason"):
            text += f" - {e['reason']}"
        lines.append(f"{e['type']} {text}")
    return "\n".join(lines)


cli_format.FORMATTERS.setdefault("ha_status", format_ha_status)
