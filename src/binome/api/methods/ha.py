"""HA API (`/cluster/ha/...`, PVE shapes) and the `binome ha ...` commands.

Validates, calls `binome.ha.config` (which owns the HA keys in etcd: the
resources and groups documents, the settings, the admin command queue the
CRM master reads, the status the daemons publish) and shapes the answers.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from binome.access import tfa
from binome.access.model import WebauthnConfig
from binome.access.permission import Or
from binome.api.errors import ApiError, ParamError, param_error
from binome.api.methods.common import (
    access_change,
    ha_config,
    ha_config_if_clustered,
    require_quorum,
)
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param, PropertyString, check_param
from binome.ha import availability as av
from binome.ha.availability_log import AvailabilityLog
from binome.ha.config import (
    HaConfigError,
    RuleInvalid,
    RuleParamError,
    config_digest,
    sid_of,
)
from binome.ha.model import HaSettings
from binome.ha.rules import AFFINITIES, RULE_TYPES, Rule

if TYPE_CHECKING:
    from binome.api.context import RequestContext

# PVE asks Sys.Audit / Sys.Console on /; binome's HA.Audit / HA.Modify delegate HA alone
AUDIT = Or(privs("Sys.Audit"), privs("HA.Audit"))
CONSOLE = Or(privs("Sys.Console"), privs("HA.Modify"))
STATES = ("started", "stopped", "enabled", "disabled", "ignored")


SID = Param(type="string", format="pve-ha-resource-or-vm-id",
            description="HA resource ID (vm:100 or 100).")


def parse_sid(raw: str) -> str:
    """`vm:100` or a bare `100` (PVE's parse_sid), normalised; ParamError on `sid`."""
    return str(check_param("sid", SID, raw))


def _resource_entry(sid: str, cfg: dict[str, Any], digest: str) -> dict[str, Any]:
    out = {"sid": sid, "type": sid.split(":", 1)[0], "state": cfg.get("state", "started"),
           "max_restart": cfg.get("max_restart", 1), "max_relocate": cfg.get("max_relocate", 1),
           "digest": digest}
    if cfg.get("group"):
        out["group"] = cfg["group"]
    if cfg.get("comment"):
        out["comment"] = cfg["comment"]
    if cfg.get("availability_target") is not None:
        out["availability_target"] = cfg["availability_target"]
    out["failback"] = int(cfg.get("failback", True))   # PVE 9 (default 1)
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
    "failback": Param(type="boolean", optional=True,
                      description="Automatically migrate HA resource to the node with the "
                                  "highest priority according to their node affinity rules, "
                                  "if a node with a higher priority than the current node "
                                  "comes online (default 1; a group's nofailback decides for "
                                  "its members)."),
    "availability_target": Param(
        type="number", optional=True, minimum=90, maximum=99.99999,
        description="binome: this service's availability target in percent (e.g. 99.99); "
                    "its report and budget notifications use it instead of the "
                    "cluster-wide target of the datacenter option 'ha'."),
}


@registry.register(
    "GET", "/cluster/ha/resources", name="ha_resources", permission=AUDIT,
    description="List HA resources.",
    parameters={"type": Param(type="string", optional=True, enum=("vm", "ct"),
                              description="Only list resources of this type.")},
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("ha", "config"),
                formatter="table:sid,state,group,max_restart,max_relocate,availability_target"),
)
async def ha_resources(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    doc = await ha_config(ctx).resources()
    digest = config_digest(doc)
    return [_resource_entry(sid, cfg, digest) for sid, cfg in sorted(doc.items())
            if params.get("type") in (None, sid.split(":", 1)[0])]


@registry.register(
    "POST", "/cluster/ha/resources", name="ha_resource_add", permission=CONSOLE,
    description="Create a new HA resource.",
    parameters={"sid": SID, **RESOURCE_PARAMS},
    cli=CliSpec(("ha", "add"), positional=("sid",)),
)
async def ha_resource_add(ctx: RequestContext, params: dict[str, Any]) -> None:
    await ha_config(ctx, quorum=True).add_resource(params["sid"], params)


@registry.register(
    "GET", "/cluster/ha/resources/{sid}", name="ha_resource_get", permission=AUDIT,
    description="Read an HA resource's configuration.",
    parameters={"sid": SID},
    returns={"type": "object"},
)
async def ha_resource_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    sid = params["sid"]
    doc = await ha_config(ctx).resources()
    if sid not in doc:
        raise ApiError(500, f"no such resource '{sid}'")
    return _resource_entry(sid, doc[sid], config_digest(doc))


@registry.register(
    "PUT", "/cluster/ha/resources/{sid}", name="ha_resource_set", permission=CONSOLE,
    description="Update an HA resource.",
    parameters={"sid": SID, **RESOURCE_PARAMS,
                "delete": Param(type="string", optional=True,
                                description="Settings to delete (comma-separated)."),
                "digest": Param(type="string", optional=True, max_length=64,
                                description="Refuse the change if the config changed.")},
    cli=CliSpec(("ha", "set"), positional=("sid",)),
)
async def ha_resource_set(ctx: RequestContext, params: dict[str, Any]) -> None:
    delete = resource_deletions(params)
    config = ha_config(ctx, quorum=True)
    await config.update_resource(params["sid"], params, delete, params.get("digest"))


def resource_deletions(params: dict[str, Any]) -> list[str]:
    """The options `delete` names, checked as PVE's resource update does: each one an
    option of a resource, and not also given a value in the same request."""
    delete = [d.strip() for d in (params.get("delete") or "").split(",") if d.strip()]
    for name in delete:
        if name not in RESOURCE_PARAMS:
            raise param_error("delete", f"no such option '{name}'")
        if params.get(name) is not None:
            raise param_error("delete", f"cannot set and delete property '{name}' at the "
                                        "same time")
    return delete


@registry.register(
    "DELETE", "/cluster/ha/resources/{sid}", name="ha_resource_remove", permission=CONSOLE,
    description="Delete an HA resource (the guest is left as it is).",
    parameters={"sid": SID,
                "purge": Param(type="boolean", optional=True, default=True,
                               description="Remove this resource from rules that reference "
                                           "it, deleting the rule if this resource is the "
                                           "only resource in the rule")},
    cli=CliSpec(("ha", "remove"), positional=("sid",)),
)
async def ha_resource_remove(ctx: RequestContext, params: dict[str, Any]) -> None:
    config = ha_config(ctx, quorum=True)
    await config.remove_resource(params["sid"])
    if params.get("purge") is None or params["purge"]:
        await config.purge_rules_of(params["sid"])


async def queue_command(ctx: RequestContext, line: str) -> None:
    """Append an admin command for the CRM master (needs quorum)."""
    await ha_config(ctx, quorum=True).queue_command(line, ctx.services.config.name)


for _verb in ("migrate", "relocate"):
    def _make(verb: str):
        async def handler(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
            sid = params["sid"]
            await ha_config(ctx).resource(sid)   # no such resource: refused
            await queue_command(ctx, f"{verb} {sid} {params['node']}")
            return {"sid": sid, "requested-node": params["node"]}
        return handler

    registry.register(
        "POST", f"/cluster/ha/resources/{{sid}}/{_verb}", name=f"ha_resource_{_verb}",
        permission=CONSOLE,
        description=f"Request the CRM to {_verb} the resource to another node.",
        parameters={"sid": SID,
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


GROUP_NODES = Param(type="string", format="pve-ha-group-node-list",
                    description="node[:priority],... (higher priority preferred)")
GROUP_PARAMS = {
    "nodes": Param(type="string", format="pve-ha-group-node-list", optional=True,
                   description="node[:priority],... (higher priority preferred)"),
    "restricted": Param(type="boolean", optional=True, description="Only run on these nodes."),
    "nofailback": Param(type="boolean", optional=True,
                        description="Do not move back to a preferred node."),
    "comment": Param(type="string", optional=True, max_length=4096, description="Comment."),
}


@registry.register(
    "GET", "/cluster/ha/groups", name="ha_groups", permission=AUDIT,
    description="List HA groups.", returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("ha", "grouplist"), formatter="table:group,nodes,restricted,nofailback"),
)
async def ha_groups(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    doc = await ha_config(ctx).groups()
    return [_group_entry(name, cfg) for name, cfg in sorted(doc.items())]


@registry.register(
    "POST", "/cluster/ha/groups", name="ha_group_add", permission=CONSOLE,
    description="Create an HA group.",
    parameters={"group": Param(type="string", pattern=r"[A-Za-z][A-Za-z0-9\-_.]{0,63}",
                               description="Group name."),
                **GROUP_PARAMS, "nodes": GROUP_NODES},   # required on create
    cli=CliSpec(("ha", "groupadd"), positional=("group",)),
)
async def ha_group_add(ctx: RequestContext, params: dict[str, Any]) -> None:
    config = ha_config(ctx, quorum=True)
    if not params["nodes"]:
        raise param_error("nodes", "property is missing and it is not optional")
    await config.add_group(params["group"], params)


@registry.register(
    "GET", "/cluster/ha/groups/{group}", name="ha_group_get", permission=AUDIT,
    description="Read an HA group.",
    parameters={"group": Param(type="string", description="Group name.")},
    returns={"type": "object"},
)
async def ha_group_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _group_entry(params["group"], await ha_config(ctx).group(params["group"]))


@registry.register(
    "PUT", "/cluster/ha/groups/{group}", name="ha_group_set", permission=CONSOLE,
    description="Update an HA group.",
    parameters={"group": Param(type="string", description="Group name."), **GROUP_PARAMS},
)
async def ha_group_set(ctx: RequestContext, params: dict[str, Any]) -> None:
    await ha_config(ctx, quorum=True).update_group(params["group"], params)


@registry.register(
    "DELETE", "/cluster/ha/groups/{group}", name="ha_group_remove", permission=CONSOLE,
    description="Delete an HA group (refused while a resource uses it).",
    parameters={"group": Param(type="string", description="Group name.")},
    cli=CliSpec(("ha", "groupremove"), positional=("group",)),
)
async def ha_group_remove(ctx: RequestContext, params: dict[str, Any]) -> None:
    await ha_config(ctx, quorum=True).remove_group(params["group"])


# ---------------------------------------------------------------- rules (PVE 9)

RULE_ID = Param(type="string", format="pve-configid", description="HA rule identifier.")
RULE_TYPE = Param(type="string", enum=RULE_TYPES, description="HA rule type.")
RULE_PARAMS = {
    "resources": Param(type="string", optional=True,
                       description="List of HA resource IDs (vm:100,vm:101)."),
    "nodes": Param(type="string", optional=True,
                   description="node-affinity: list of cluster node names with optional "
                               "priority (<node>[:<pri>]{,<node>[:<pri>]}*)."),
    "strict": Param(type="boolean", optional=True,
                    description="node-affinity: whether the rule is strict (the resources "
                                "only run on these nodes) or non-strict (they prefer them)."),
    "affinity": Param(type="string", optional=True, enum=AFFINITIES,
                      description="resource-affinity: keep the resources on the same node "
                                  "('positive') or on separate nodes ('negative')."),
    "disable": Param(type="boolean", optional=True, description="Whether the rule is disabled."),
    "comment": Param(type="string", optional=True, max_length=4096,
                     description="HA rule description."),
}


async def _rule_nodes(ctx: RequestContext) -> list[str]:
    """The cluster's nodes (a rule may name only these; negative rules count them)."""
    cluster = ctx.services.cluster
    if not cluster.is_member:
        return [ctx.services.config.name]
    return sorted(n for n, rec in cluster.node_records.items()
                  if rec.get("role", "node") == "node")


def _rule_error(exc: HaConfigError) -> ApiError:
    if isinstance(exc, RuleInvalid | RuleParamError):
        return ApiError(400, str(exc), exc.errors)
    return ApiError(500, str(exc))


def _rule_answer(rule: Rule, digest: str, errors: dict[str, list[str]] | None
                 ) -> dict[str, Any]:
    out = {**rule.api(), "digest": digest}
    if errors:
        out["errors"] = errors
    return out


@registry.register(
    "GET", "/cluster/ha/rules", name="ha_rules", permission=AUDIT,
    description="Get HA rules (HA groups appear as the node-affinity rules 'ha-group-<group>' "
                "they are applied as).",
    parameters={"type": Param(type="string", optional=True, enum=RULE_TYPES,
                              description="Limit the returned list to the specified rule "
                                          "type."),
                "resource": Param(type="string", optional=True,
                                  description="Limit the returned list to rules affecting the "
                                              "specified resource.")},
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("ha", "rules", "config"), formatter="ha_rules"),
)
async def ha_rules(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    rules, errors, digest = await ha_config(ctx).rules_view(await _rule_nodes(ctx))
    out = []
    for rule in sorted(rules.values(), key=lambda r: (r.order, r.id)):
        if params.get("type") and rule.type != params["type"]:
            continue
        if params.get("resource") and params["resource"] not in rule.resources:
            continue
        out.append(_rule_answer(rule, digest, errors.get(rule.id)))
    return out


@registry.register(
    "GET", "/cluster/ha/rules/{rule}", name="ha_rule_get", permission=AUDIT,
    description="Read HA rule.",
    parameters={"rule": RULE_ID},
    returns={"type": "object"},
)
async def ha_rule_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    rules, errors, digest = await ha_config(ctx).rules_view(await _rule_nodes(ctx))
    rule = rules.get(params["rule"])
    if rule is None:
        raise ApiError(500, f"no such ha rule '{params['rule']}'")
    return _rule_answer(rule, digest, errors.get(rule.id))


@registry.register(
    "POST", "/cluster/ha/rules", name="ha_rule_add", permission=CONSOLE,
    description="Create HA rule.",
    parameters={"rule": RULE_ID, "type": RULE_TYPE, **RULE_PARAMS},
    cli=CliSpec(("ha", "rules", "add"), positional=("type", "rule")),
)
async def ha_rule_add(ctx: RequestContext, params: dict[str, Any]) -> None:
    config = ha_config(ctx, quorum=True)
    try:
        await config.add_rule(params["rule"], params, await _rule_nodes(ctx))
    except HaConfigError as exc:
        raise _rule_error(exc) from None


@registry.register(
    "PUT", "/cluster/ha/rules/{rule}", name="ha_rule_set", permission=CONSOLE,
    description="Update HA rule.",
    parameters={"rule": RULE_ID, "type": RULE_TYPE, **RULE_PARAMS,
                "delete": Param(type="string", optional=True, max_length=4096,
                                description="A list of settings you want to delete."),
                "digest": Param(type="string", optional=True, max_length=40,
                                description="Prevent changes if current configuration file "
                                            "has a different digest.")},
    cli=CliSpec(("ha", "rules", "set"), positional=("type", "rule")),
)
async def ha_rule_set(ctx: RequestContext, params: dict[str, Any]) -> None:
    delete = [d for d in re.split(r"[,;\s]+", params.get("delete") or "") if d]
    config = ha_config(ctx, quorum=True)
    try:
        await config.update_rule(params["rule"], params, delete, params.get("digest"),
                                 await _rule_nodes(ctx))
    except HaConfigError as exc:
        raise _rule_error(exc) from None


@registry.register(
    "DELETE", "/cluster/ha/rules/{rule}", name="ha_rule_remove", permission=CONSOLE,
    description="Delete HA rule.",
    parameters={"rule": RULE_ID},
    cli=CliSpec(("ha", "rules", "remove"), positional=("rule",)),
)
async def ha_rule_remove(ctx: RequestContext, params: dict[str, Any]) -> None:
    await ha_config(ctx, quorum=True).remove_rule(params["rule"])


# ---------------------------------------------------------------- status


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
    raw = await ha_config(ctx).status_snapshot(serializable=not quorate)
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
                 "node_state": rec.get("state"), "status": f"{node} ({text})"}
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
        target, scope = effective_target(cfg, raw["settings"])
        if target is not None:
            entry["availability_target"] = target
            entry["availability_target_scope"] = scope
        out.append(entry)
    return out


def effective_target(resource: dict[str, Any], settings: dict[str, Any]
                     ) -> tuple[float | None, str]:
    """The availability target a service is held to, and whose it is: its own
    (`service`), else the datacenter-wide one (`cluster`), else none."""
    own = resource.get("availability_target")
    if own is not None:
        return float(own), "service"
    default = settings.get("availability_target")
    if default is not None:
        return float(default), "cluster"
    return None, ""


@registry.register(
    "GET", "/cluster/ha/status/manager_status", name="ha_status_manager", permission=AUDIT,
    description="The full manager status, quorum and LRM reports (for debugging).",
    returns={"type": "object"},
)
async def ha_status_manager(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    raw = await ha_config(ctx).status_snapshot()
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
    config = ha_config_if_clustered(ctx)
    return None if config is None else await config.managed_resource(vmid)


async def ha_service_status(ctx: RequestContext, sid: str,
                            serializable: bool = False) -> dict[str, Any]:
    """The manager's status of `sid` ({} if none, or outside a cluster)."""
    config = ha_config_if_clustered(ctx)
    return {} if config is None else await config.service_status(sid,
                                                                 serializable=serializable)


async def vm_ha_info(ctx: RequestContext, vmid: int) -> dict[str, Any]:
    """`status/current`'s `ha` object (PVE shape): `{managed: 1, state, group?}` or
    `{managed: 0}`."""
    config = ha_config_if_clustered(ctx)
    if config is None:
        return {"managed": 0}
    # serializable: the status of a VM answers without quorum, like its config
    sid = sid_of(vmid)
    cfg = (await config.resources(serializable=True)).get(sid)
    if cfg is None:
        return {"managed": 0}
    sd = await config.service_status(sid, serializable=True)
    out: dict[str, Any] = {"managed": 1, "state": sd.get("state") or cfg.get("state", "started"),
                           "request_state": cfg.get("state", "started")}
    if cfg.get("group"):
        out["group"] = cfg["group"]
    return out


async def wait_service_state(ctx: RequestContext, task, sid: str, want: str,
                             before: dict[str, Any], timeout: float) -> None:
    """Wait until the manager reports `want` for `sid` (a new command, not a stale status)."""
    import asyncio

    from binome.tasks.manager import TaskFailed

    config = ha_config(ctx)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        polled = await config.poll_service(sid)
        # None: no quorum for a moment, the deadline still applies
        sd, cfg = ({}, None) if polled is None else polled
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
        requested = None if cfg is None else cfg.get("state")
        if polled is not None and requested is None:
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
    sid = sid_of(vmid)
    want = "started" if action == "start" else "stopped"
    before = await ha_service_status(ctx, sid)
    guests = ctx.services.guests
    running = guests is not None and guests.runtime.is_running(vmid)
    if want == "started" and cfg.get("state") == "started" and before.get("state") == "started" \
            and running:
        raise ApiError(500, f"VM {vmid} already running")
    if want == "stopped" and cfg.get("state") in ("stopped", "disabled") and not running:
        raise ApiError(500, f"VM {vmid} not running")
    require_quorum(ctx)
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
        await ha_config(ctx, quorum=True).set_requested_state(sid, want, stop_timeout)
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
            await queue_command(ctx, f"{action}-node-maintenance {params['node']}")
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


async def ha_disarm(ctx: RequestContext, params: dict[str, Any]) -> None:
    await queue_command(ctx, f"disarm-ha {params['mode']}")


async def _disarm_upstream(ctx: RequestContext, params: dict[str, Any]) -> None:
    # upstream names the mode `resource-mode`; the queued command is the same
    await queue_command(ctx, f"disarm-ha {params['resource-mode']}")


async def ha_arm(ctx: RequestContext, params: dict[str, Any]) -> None:
    await queue_command(ctx, "arm-ha")


# Declared once, served at two paths: ours under crm-command/ and upstream's
# /cluster/ha/status/{arm,disarm}-ha (pve-ha-manager's API2/HA/Status.pm, PVE 9).
DISARM_DESCRIPTION = ("Disarm HA for cluster maintenance: no fencing, no recovery, watchdogs "
                      "released. freeze: services keep their state; ignore: left to the admin.")
ARM_DESCRIPTION = "Re-arm HA after disarm-ha: watchdogs armed, fencing and recovery resume."
DISARM_PARAMS = {"resource-mode": Param(type="string", enum=("freeze", "ignore"),
                                        description="What the services do meanwhile.")}
for _base, _suffix in (("/cluster/ha/crm-command", ""), ("/cluster/ha/status", "_upstream")):
    registry.register(
        "POST", f"{_base}/disarm-ha", name=f"ha_disarm{_suffix}", permission=CONSOLE,
        description=DISARM_DESCRIPTION + (" (upstream's path)" if _suffix else ""),
        parameters={"mode": Param(type="string", enum=("freeze", "ignore"),
                                  description="What the services do meanwhile.")}
        if not _suffix else DISARM_PARAMS,
        cli=CliSpec(("ha", "crm-command", "disarm-ha"), positional=("mode",))
        if not _suffix else (),
    )(ha_disarm if not _suffix else _disarm_upstream)
    registry.register(
        "POST", f"{_base}/arm-ha", name=f"ha_arm{_suffix}", permission=CONSOLE,
        description=ARM_DESCRIPTION + (" (upstream's path)" if _suffix else ""),
        cli=CliSpec(("ha", "crm-command", "arm-ha")) if not _suffix else (),
    )(ha_arm)


# ---------------------------------------------------------------- datacenter options: ha


POLICIES = ("conditional", "freeze", "failover", "migrate")


# PVE's datacenter.cfg `ha` property: `shutdown_policy=<policy>` (the default key)
HA_OPTION = PropertyString(keys={"shutdown_policy": Param(
    enum=POLICIES, optional=True, description="How HA services behave when their node "
                                              "shuts down or reboots."),
    # binome: the availability every HA service should reach, in percent; the master
    # notifies when a service's monthly downtime budget is 80 % used and when exceeded
    "availability_target": Param(
        type="number", optional=True, minimum=90, maximum=99.99999,
        description="binome: availability target of the HA services in percent "
                    "(e.g. 99.9); a notification goes out when a service used 80 % "
                    "of its monthly downtime budget, and when it exceeded it.")},
    default_key="shutdown_policy")


# PVE's datacenter.cfg `webauthn`: the relying party second-factor WebAuthn uses (kept
# by the access module, with the factors it checks)
WEBAUTHN_OPTION = PropertyString(keys={
    "rp": Param(optional=True, max_length=256,
                description="Relying party name. Any text identifier. Changing this *may* "
                            "break existing credentials."),
    "origin": Param(optional=True, max_length=256,
                    description="Site origin. Must be a `https://` URL (or "
                                "`http://localhost`). Should contain the address users type "
                                "in their browsers to access the web interface. Changing "
                                "this *may* break existing credentials."),
    "id": Param(optional=True, max_length=253,
                description="Relying party ID. Must be the domain name without protocol, "
                            "port or location. Changing this *will* break existing "
                            "credentials."),
    "allow-subdomains": Param(type="boolean", optional=True, default=1,
                              description="Whether to allow the origin to be a subdomain, "
                                          "rather than the exact URL."),
})
OPTIONS = ("ha", "webauthn")


@registry.register(
    "GET", "/cluster/options", name="cluster_options", permission=privs("Sys.Audit"),
    description="Datacenter options (binome: the HA settings and `webauthn`).",
    returns={"type": "object"},
    cli=CliSpec(("cluster", "options")),
)
async def cluster_options(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    doc = await ha_config(ctx).settings()
    out: dict[str, Any] = {}
    if doc.get("shutdown_policy"):
        out["ha"] = f"shutdown_policy={doc['shutdown_policy']}"
        if doc.get("availability_target") is not None:
            out["ha"] += f",availability_target={doc['availability_target']:.10g}"
    webauthn = (await ctx.services.access.config()).webauthn
    if webauthn is not None:
        out["webauthn"] = tfa.format_webauthn_option(webauthn)
    return out


@registry.register(
    "PUT", "/cluster/options", name="cluster_set_options", permission=privs("Sys.Modify"),
    description="Set datacenter options (binome: `ha`, the HA shutdown policy, and "
                "`webauthn`).",
    parameters={"ha": Param(type="string", optional=True, max_length=256,
                            props=HA_OPTION, description="Cluster-wide HA settings."),
                "webauthn": Param(type="string", optional=True, max_length=1024,
                                  props=WEBAUTHN_OPTION, description="webauthn configuration"),
                "delete": Param(type="string", optional=True,
                                description="Settings to delete ('ha', 'webauthn').")},
    cli=CliSpec(("cluster", "set-options")),
)
async def cluster_set_options(ctx: RequestContext, params: dict[str, Any]) -> None:
    delete = [d.strip() for d in (params.get("delete") or "").split(",") if d.strip()]
    bad = [d for d in delete if d not in OPTIONS]
    if bad:
        raise param_error("delete", f"unknown or unsupported option '{bad[0]}'")
    for name in OPTIONS:
        if params.get(name) is not None and name in delete:
            raise param_error("delete", f"cannot set and delete '{name}' at once")
    webauthn: WebauthnConfig | None = None
    if params.get("webauthn") is not None:
        try:
            webauthn = tfa.parse_webauthn_option(WEBAUTHN_OPTION.parse(params["webauthn"]))
        except tfa.TfaError as exc:
            raise ParamError(exc.errors) from None
    if webauthn is not None or "webauthn" in delete:
        await access_change(ctx, "set datacenter option webauthn",
                            lambda cfg: replace(cfg, webauthn=webauthn))
    if params.get("ha") is None and "ha" not in delete:
        return
    new = HA_OPTION.parse(params["ha"]) if params.get("ha") is not None else None
    config = ha_config(ctx, quorum=True)
    if "ha" in delete:
        await config.set_settings(None)
    elif new is not None:
        await config.set_settings(HaSettings.from_dict(new))


# ---------------------------------------------------------------- availability (binome)

AVAILABILITY_PARAMS = {
    "sid": Param(type="string", format="pve-ha-resource-or-vm-id", optional=True,
                 description="Only this HA resource (vm:100 or 100)."),
    "period": Param(type="string", optional=True, enum=av.PERIODS,
                    description="The calendar period (UTC) containing now; default month. "
                                "Not with since/until."),
    "since": Param(type="integer", optional=True, minimum=0,
                   description="Start of the report (epoch seconds)."),
    "until": Param(type="integer", optional=True, minimum=0,
                   description="End of the report (epoch seconds; default now)."),
}


def availability_window(params: dict[str, Any], now: float) -> tuple[float, float, str]:
    """The report's [since, until) and its period name ("" for an explicit window)."""
    explicit = params.get("since") is not None or params.get("until") is not None
    if explicit and params.get("period"):
        raise param_error("period", "give either a period or since/until, not both")
    if not explicit:
        period = params.get("period") or "month"
        since, until = av.period_bounds(period, now)
        return since, until, period
    until = float(params["until"]) if params.get("until") is not None else now
    since = float(params["since"]) if params.get("since") is not None else until - 30 * 86400
    if since >= until:
        raise param_error("since", "must be before 'until'")
    return since, until, ""


@registry.register(
    "GET", "/cluster/ha/availability", name="ha_availability", permission=AUDIT,
    description="binome: availability report of the HA services over a period: "
                "availability %, downtime, outages with their causes, MTTR, the "
                "availability class reached and the downtime budget.",
    parameters=AVAILABILITY_PARAMS,
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("ha", "availability"), positional=("sid",), formatter="ha_availability"),
)
async def ha_availability(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    now = time.time()
    since, until, period = availability_window(params, now)
    config = ha_config(ctx)
    store = ctx.services.cluster.store
    assert store is not None   # ha_config refused a node outside a cluster
    sid = parse_sid(params["sid"]) if params.get("sid") else None
    records = await AvailabilityLog(store).load(sid)
    if sid is not None and not records:
        if sid not in await config.resources():
            raise ApiError(500, f"no such resource '{sid}'")
    settings = await config.settings()
    resources = await config.resources()
    out = []
    for name, rec in sorted(records.items()):
        target, scope = effective_target(resources.get(name) or {}, settings)
        rep = av.report(name, rec.log, since, until, now, target)
        if target is not None:
            rep["budget"]["scope"] = scope
        rep["period"] = period
        rep["state"] = rec.last[0] if rec.last else ""
        out.append(rep)
    return out
