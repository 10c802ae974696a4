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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from binome.api.errors import ApiError, param_error
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.ha.model import GroupConfig, HaSettings, ResourceConfig, parse_group_nodes
from binome.store import keys
from binome.store.client import StoreUnavailable

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


async def _edit_entry(store, key: str, name: str,
                      change: Callable[[dict[str, Any] | None], dict[str, Any] | None], *,
                      missing: str | None = None, exists: str | None = None,
                      check: Callable[[dict[str, Any]], None] | None = None) -> None:
    """One compare-and-swap edit of an entry of the resources or groups document.

    `change(old)` gives the new entry (None deletes it); `missing` / `exists` are
    the errors for an entry that must / must not be there already; `check(doc)`
    runs first on the whole document read.
    """
    def mutate(doc):
        doc = dict(doc or {})
        if check is not None:
            check(doc)
        if exists is not None and name in doc:
            raise ApiError(500, exists)
        if missing is not None and name not in doc:
            raise ApiError(500, missing)
        new = change(doc.get(name))
        if new is None:
            doc.pop(name, None)
        else:
            doc[name] = new
        return doc

    await store.update(key, mutate)


def _apply(cfg: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    out = dict(cfg)
    out.pop("stop_timeout", None)   # a hint of the last qm stop/shutdown only
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
    await _edit_entry(store, keys.HA_RESOURCES, sid, lambda _old: cfg,
                      exists=f"resource ID '{sid}' already defined")


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

    def same_digest(doc: dict[str, Any]) -> None:
        if params.get("digest") and params["digest"] != _digest(doc):
            raise ApiError(500, "detected modified configuration - file changed by other "
                                "user? Try again.")

    await _edit_entry(
        store, keys.HA_RESOURCES, sid,
        lambda old: _apply({k: v for k, v in old.items() if k not in delete}, params),
        missing=f"no such resource '{sid}'", check=same_digest)


@registry.register(
    "DELETE", "/cluster/ha/resources/{sid}", name="ha_resource_remove", permission=CONSOLE,
    description="Delete an HA resource (the guest is left as it is).",
    parameters={"sid": Param(type="string", description="HA resource ID.")},
    cli=CliSpec(("ha", "remove"), positional=("sid",)),
)
async def ha_resource_remove(ctx: RequestContext, params: dict[str, Any]) -> None:
    store = _require_quorum(ctx)
    sid = parse_sid(params["sid"])
    await _edit_entry(store, keys.HA_RESOURCES, sid, lambda _old: None,
                      missing=f"no such resource '{sid}'")


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
    await _edit_entry(store, keys.HA_GROUPS, name, lambda _old: cfg,
                      exists=f"ha group '{name}' already defined")


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
    await _edit_entry(store, keys.HA_GROUPS, name, lambda old: _group_apply(old, params),
                      missing=f"no such ha group '{name}'")


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
    await _edit_entry(store, keys.HA_GROUPS, name, lambda _old: None,
                      missing=f"no such ha group '{name}'")


# ---------------------------------------------------------------- status


async def _raw_status(ctx: RequestContext, serializable: bool = False) -> dict[str, Any]:
    store = _store(ctx)
    entries = {e.key: e.value for e in await store.get_prefix(keys.HA,
                                                              serializable=serializable)}
    lrms = {k[len(keys.HA_LRM):]: v for k, v in entries.items() if k.startswith(keys.HA_LRM)}
    confirms = {k[len(keys.HA_FENCE_CONFIRM):]: v for k, v in entries.items()
                if k.startswith(keys.HA_FENCE_CONFIRM) and isinstance(v, dict)}
    return {"ms": entries.get(keys.HA_MANAGER_STATUS) or {},
            "lock": entries.get(keys.HA_MANAGER_LOCK),
            "resources": entries.get(keys.HA_RESOURCES) or {}, "lrms": lrms,
            "confirms": confirms}


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
    # Without quorum a linearizable read cannot succeed: show this node's last copy
    # (the quorum line says it may be stale), so the admin sees why nothing moves.
    raw = await _raw_status(ctx, serializable=not quorate)
    ms, lock = raw["ms"], raw["lock"]
    master = ms.get("master_node")
    if master:
        state = "active" if lock == master else "idle (lock not held)"
        if ms.get("disarm"):
            state += f", HA disarmed ({ms['disarm']})"
        entry = {"id": "master", "type": "master", "node": master,
                 "status": f"{master} ({state})"}
        if ms.get("disarm"):
            entry["disarm"] = ms["disarm"]
        out.append(entry)
    for node, lrm in sorted(raw["lrms"].items()):
        rec = (ms.get("node_status") or {}).get(node, {})
        state = lrm.get("state", "?")
        label = {"active": "active", "wait_for_agent_lock": "idle",
                 "lost_agent_lock": "lost agent lock", "maintenance": "maintenance mode"}
        text = label.get(state, state)
        mode = lrm.get("mode") or "active"
        if mode not in ("active", "maintenance") and state != "maintenance":
            # as ha-manager does: a node about to restart or shut down says so, else an
            # admin reads "idle" while binomed is down and its guests run unwatched
            text = f"{text}, {mode} mode"
            if lrm.get("daemon_restart"):
                text += " (binomed restarting, guests left running)"
        if rec.get("state") and rec["state"] != "online":
            text = f"{text}, node {rec['state']}"
        entry = {"id": f"lrm:{node}", "type": "lrm", "node": node, "state": state,
                 "mode": lrm.get("mode"), "watchdog": int(bool(lrm.get("watchdog_armed"))),
                 "status": f"{node} ({text})"}
        conf = raw["confirms"].get(node)
        if conf and rec.get("loss") and conf.get("loss") == rec["loss"]:
            # only for the node's current loss: an older one no longer applies
            entry["fence_confirmed"] = {"user": conf.get("user"), "time": conf.get("at")}
            entry["status"] = (f"{node} ({text}, power-off confirmed by "
                               f"{conf.get('user')}: manual fence)")
        out.append(entry)
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


# ---------------------------------------------------------------- qm actions routed through HA
#
# As in PVE, `qm start|stop|shutdown` of an HA-managed guest does not touch
# QEMU: it changes the HA requested state (`hastart` / `hastop` tasks) and the
# manager carries it out. Going behind the manager's back would be undone by
# it (a stopped `started` service is restarted) or fight it (a started
# `stopped` service is stopped again).

HA_WAIT_DEFAULT = 120.0     # how long an hastart/hastop task follows the manager
HA_SHUTDOWN_DEFAULT = 60.0  # qm shutdown's default timeout
_DONE = {"started": "started", "stopped": "stopped"}


async def ha_resource(ctx: RequestContext, vmid: int) -> dict[str, Any] | None:
    """The HA resource config of `vm:<vmid>` if the manager handles it (not `ignored`)."""
    store = ctx.services.cluster.store
    if store is None:
        return None
    # serializable: stopping a non-HA guest needs no quorum, and must not start to
    # (an HA guest's request then needs quorum anyway, checked by the caller)
    try:
        doc = await store.get_value(keys.HA_RESOURCES, {}, serializable=True) or {}
    except StoreUnavailable:
        return None
    cfg = doc.get(f"vm:{vmid}")
    if cfg is None or cfg.get("state") == "ignored":
        return None
    return cfg


async def ha_service_status(ctx: RequestContext, sid: str,
                            serializable: bool = False) -> dict[str, Any]:
    store = ctx.services.cluster.store
    if store is None:
        return {}
    ms = await store.get_value(keys.HA_MANAGER_STATUS, {}, serializable=serializable) or {}
    return (ms.get("service_status") or {}).get(sid) or {}


async def vm_ha_info(ctx: RequestContext, vmid: int) -> dict[str, Any]:
    """`status/current`'s `ha` object (PVE shape): `{managed: 1, state, group?}` or
    `{managed: 0}`."""
    store = ctx.services.cluster.store
    if store is None:
        return {"managed": 0}
    # serializable: the status of a VM answers without quorum, like its config
    doc = await store.get_value(keys.HA_RESOURCES, {}, serializable=True) or {}
    sid = f"vm:{vmid}"
    cfg = doc.get(sid)
    if cfg is None:
        return {"managed": 0}
    sd = await ha_service_status(ctx, sid, serializable=True)
    out: dict[str, Any] = {"managed": 1, "state": sd.get("state") or cfg.get("state", "started"),
                           "request_state": cfg.get("state", "started")}
    if cfg.get("group"):
        out["group"] = cfg["group"]
    return out


async def set_requested_state(ctx: RequestContext, sid: str, state: str,
                              stop_timeout: float | None = None) -> None:
    """Set the requested state; `stop_timeout` tells the LRM how long the guest may take
    to shut down before it is stopped hard (0: at once, `qm stop`)."""
    store = _require_quorum(ctx)

    def change(old: dict[str, Any]) -> dict[str, Any]:
        cfg = {k: v for k, v in old.items() if k != "stop_timeout"}
        if stop_timeout is not None:
            cfg["stop_timeout"] = stop_timeout
        return {**cfg, "state": state}

    await _edit_entry(store, keys.HA_RESOURCES, sid, change,
                      missing=f"no such resource '{sid}'")


async def wait_service_state(ctx: RequestContext, task, sid: str, want: str,
                             before: dict[str, Any], timeout: float) -> None:
    """Wait until the manager reports `want` for `sid` (a new command, not a stale status)."""
    import asyncio

    from binome.tasks.manager import TaskFailed

    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            sd = await ha_service_status(ctx, sid)
            doc = await _store(ctx).get_value(keys.HA_RESOURCES, {}) or {}
        except StoreUnavailable:   # no quorum for a moment: the deadline still applies
            sd, doc = {}, None
        state = sd.get("state")
        if state != last:
            task.log(f"service {sid}: {state or 'queued'}"
                     + (f" on {sd['node']}" if sd.get("node") else "")
                     + (f" ({sd['reason']})" if sd.get("reason") else ""))
            last = state
        fresh = before.get("state") != want or sd.get("uid") != before.get("uid")
        if state == want and fresh:
            return
        if state == "error":
            raise TaskFailed(f"HA service {sid} is in error state: "
                             f"{sd.get('reason') or 'see the HA log'}")
        requested = None if doc is None else (doc.get(sid) or {}).get("state")
        if doc is not None and requested is None:
            raise TaskFailed(f"HA resource {sid} was removed")
        if requested is not None and _DONE.get(requested) != want:
            raise TaskFailed(f"HA request of {sid} changed to '{requested}' meanwhile")
        if time.monotonic() > deadline:
            raise TaskFailed(f"HA {'start' if want == 'started' else 'stop'} of {sid} not "
                             f"done after {timeout:.0f}s (state {state or 'queued'}"
                             + (f": {sd['reason']}" if sd.get("reason") else "")
                             + "); the request stays in place")
        await asyncio.sleep(0.5)


async def route_power_action(ctx: RequestContext, vmid: int, action: str,
                             timeout: float | None) -> str | None:
    # `timeout` is qm's: for shutdown, the time the guest gets before a hard stop
    """Start an `hastart`/`hastop` task for an HA guest; None if the guest is not HA-managed."""
    cfg = await ha_resource(ctx, vmid)
    if cfg is None:
        return None
    sid = f"vm:{vmid}"
    want = "started" if action == "start" else "stopped"
    before = await ha_service_status(ctx, sid)
    guests = ctx.services.guests
    running = guests is not None and guests.runtime.is_running(vmid)
    if want == "started" and cfg.get("state") == "started" and before.get("state") == "started" \
            and running:
        raise ApiError(500, f"VM {vmid} already running")
    if want == "stopped" and cfg.get("state") in ("stopped", "disabled") and not running:
        raise ApiError(500, f"VM {vmid} not running")
    _require_quorum(ctx)
    # qm stop is a hard stop, qm shutdown waits `timeout` (PVE: crm-command stop SID T)
    stop_timeout = None
    if action == "stop":
        stop_timeout = 0.0
    elif action == "shutdown":
        stop_timeout = float(timeout) if timeout is not None else HA_SHUTDOWN_DEFAULT
    wait = HA_WAIT_DEFAULT + (stop_timeout or 0.0)
    verb = "start" if want == "started" else "stop"

    async def body(task) -> None:
        task.log(f"Requesting HA {verb} for VM {vmid}")
        await set_requested_state(ctx, sid, want, stop_timeout)
        await wait_service_state(ctx, task, sid, want, before, wait)
        task.log(f"HA {verb} of VM {vmid} done")

    return ctx.services.tasks.start("hastart" if want == "started" else "hastop", str(vmid),
                                    ctx.userid, body)


# ---------------------------------------------------------------- crm-command (extension)
#
# PVE 8.4 has no API for `ha-manager crm-command`: the command writes the CRM
# command queue directly. binome exposes the same queue under
# /cluster/ha/crm-command/... (documented as an extension).


def _guest_node(ctx: RequestContext, node: str) -> None:
    rec = ctx.services.cluster.node_records.get(node)
    if rec is None or rec.get("state") == "evicted":
        raise param_error("node", f"no such cluster node '{node}'")
    if rec.get("role") == "witness":
        raise param_error("node", f"'{node}' is a witness: it runs no HA services")


for _action in ("enable", "disable"):
    def _make_maint(action: str):
        async def handler(ctx: RequestContext, params: dict[str, Any]) -> None:
            _guest_node(ctx, params["node"])
            await _append_command(ctx, f"{action}-node-maintenance {params['node']}")
        return handler

    registry.register(
        "POST", f"/cluster/ha/crm-command/node-maintenance/{_action}",
        name=f"ha_node_maintenance_{_action}", permission=CONSOLE,
        description=(f"{_action.capitalize()} maintenance mode of a node: "
                     + ("its HA services are migrated away and its watchdog released."
                        if _action == "enable" else
                        "the services moved away for the maintenance come back.")),
        parameters={"node": Param(type="string", format="pve-node", description="The node.")},
        cli=CliSpec(("ha", "crm-command", "node-maintenance", _action), positional=("node",)),
    )(_make_maint(_action))


@registry.register(
    "POST", "/cluster/ha/crm-command/disarm-ha", name="ha_disarm", permission=CONSOLE,
    description="Disarm HA for cluster maintenance: no fencing, no recovery, watchdogs "
                "released. freeze: services keep their state; ignore: left to the admin.",
    parameters={"mode": Param(type="string", enum=("freeze", "ignore"),
                              description="What the services do meanwhile.")},
    cli=CliSpec(("ha", "crm-command", "disarm-ha"), positional=("mode",)),
)
async def ha_disarm(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _append_command(ctx, f"disarm-ha {params['mode']}")


@registry.register(
    "POST", "/cluster/ha/crm-command/arm-ha", name="ha_arm", permission=CONSOLE,
    description="Re-arm HA after disarm-ha: watchdogs armed, fencing and recovery resume.",
    cli=CliSpec(("ha", "crm-command", "arm-ha")),
)
async def ha_arm(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _append_command(ctx, "arm-ha")


# ---------------------------------------------------------------- datacenter options: ha


POLICIES = ("conditional", "freeze", "failover", "migrate")


def _parse_ha_option(text: str) -> dict[str, Any]:
    """PVE's datacenter.cfg `ha` property: `shutdown_policy=<policy>`."""
    out: dict[str, Any] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        key, sep, value = item.partition("=")
        if not sep and key in POLICIES:   # PVE's default key
            key, value = "shutdown_policy", key
        if key != "shutdown_policy":
            raise param_error("ha", f"invalid format - unknown key '{key}'")
        if value not in POLICIES:
            raise param_error("ha", f"invalid format - shutdown_policy: value '{value}' "
                                    f"does not have a value in the enumeration "
                                    f"'{', '.join(POLICIES)}'")
        out["shutdown_policy"] = value
    return out


@registry.register(
    "GET", "/cluster/options", name="cluster_options", permission=AUDIT,
    description="Datacenter options (binome: only the HA settings).",
    returns={"type": "object"},
    cli=CliSpec(("cluster", "options")),
)
async def cluster_options(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    doc = await _store(ctx).get_value(keys.HA_SETTINGS, {}) or {}
    out: dict[str, Any] = {}
    if doc.get("shutdown_policy"):
        out["ha"] = f"shutdown_policy={doc['shutdown_policy']}"
    return out


@registry.register(
    "PUT", "/cluster/options", name="cluster_set_options", permission=privs("Sys.Modify"),
    description="Set datacenter options (binome: only `ha`, the HA shutdown policy).",
    parameters={"ha": Param(type="string", optional=True, max_length=256,
                            description="shutdown_policy=<conditional|freeze|failover|"
                                        "migrate>"),
                "delete": Param(type="string", optional=True,
                                description="Settings to delete (only 'ha').")},
    cli=CliSpec(("cluster", "set-options")),
)
async def cluster_set_options(ctx: RequestContext, params: dict[str, Any]) -> None:
    delete = [d.strip() for d in (params.get("delete") or "").split(",") if d.strip()]
    bad = [d for d in delete if d != "ha"]
    if bad:
        raise param_error("delete", f"unknown or unsupported option '{bad[0]}'")
    if params.get("ha") is not None and "ha" in delete:
        raise param_error("delete", "cannot set and delete 'ha' at once")
    new = _parse_ha_option(params["ha"]) if params.get("ha") is not None else None
    store = _require_quorum(ctx)
    if "ha" in delete:
        await store.delete(keys.HA_SETTINGS)
    elif new is not None:
        await store.put(keys.HA_SETTINGS, HaSettings.from_dict(new).to_dict())
