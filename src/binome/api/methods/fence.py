"""Fence device configuration (`/cluster/ha/fence/...`, a binome extension) and
`binome fence`: fence a node by hand (like `fence_node`) or test its device.

Owns the boundary between operators and `/binome/ha/fence/<node>`: the
stored document is exactly what `binome.fence.device.make_device` takes (the
CRM's `Fencer` builds the device from it), validated here before anything is
written. The password is **write-only**: stored in etcd (readable only by
the cluster's members), never returned (`password` is replaced by
`has_password: 1`), never put in an error, a task log or the cluster log.
"""

from __future__ import annotations

import ipaddress
import re
import time
from typing import TYPE_CHECKING, Any

from binome.api.errors import ApiError, ParamError, param_error
from binome.api.methods.ha import AUDIT, CONSOLE, _require_quorum, _store
from binome.api.registry import CliSpec, registry
from binome.api.schema import Param
from binome.fence.device import FenceConfigError, make_device
from binome.store import keys

if TYPE_CHECKING:
    from binome.api.context import RequestContext

_HOST_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*")
_OPT_RE = re.compile(r"[A-Za-z0-9_-]+")

FENCE_PARAMS = {
    "type": Param(type="string", optional=True, enum=("ipmi", "agent"),
                  description="Device type: ipmi (IPMI over LAN) or agent (a fence_* agent)."),
    "ip": Param(type="string", optional=True, max_length=253,
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
    "options": Param(type="string", optional=True, max_length=4096,
                     description="agent: options as key=value[,key=value...] "
                                 "(booleans: key=1)."),
    "confirm": Param(type="boolean", optional=True,
                     description="agent: after off, poll status until it reports off [1]."),
}
NODE = Param(type="string", format="pve-node", description="The node the device powers.")
# the stored keys per type (make_device's), besides type and password
_TYPE_KEYS = {"ipmi": ("ip", "port", "username", "timeout"),
              "agent": ("agent", "options", "timeout", "confirm")}


def _parse_options(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _OPT_RE.fullmatch(key):
            raise param_error("options", f"invalid option '{key or item}': want key=value")
        if key in out:
            raise param_error("options", f"option '{key}' given twice")
        out[key] = value.strip()
    return out


def _build(node: str, old: dict[str, Any] | None, params: dict[str, Any],
           delete: list[str]) -> dict[str, Any]:
    """The document to store, validated; ParamError naming every bad parameter."""
    kind = params.get("type") or (old or {}).get("type")
    if kind is None:
        raise param_error("type", "property is missing and it is not optional")
    errors: dict[str, str] = {}
    for name in _TYPE_KEYS["ipmi" if kind == "agent" else "agent"]:
        if params.get(name) is not None and name not in _TYPE_KEYS[kind]:
            errors[name] = f"not a parameter of a {kind} fence device"
    for name in delete:
        if name not in _TYPE_KEYS[kind] or name in ("ip", "username", "agent"):
            errors["delete"] = f"cannot delete '{name}'"
    if errors:
        raise ParamError(errors)
    cfg: dict[str, Any] = {}
    if old and old.get("type") == kind:
        cfg = {k: v for k, v in old.items() if k not in delete}
    cfg["type"] = kind
    for name in _TYPE_KEYS[kind]:
        if params.get(name) is not None:
            cfg[name] = params[name]
    if isinstance(cfg.get("options"), str):
        cfg["options"] = _parse_options(cfg["options"])
    if "timeout" in cfg:
        cfg["timeout"] = float(cfg["timeout"])
    if params.get("password") is not None:
        cfg["password"] = params["password"]
    if kind == "ipmi":
        ip = cfg.get("ip")
        if ip is not None:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                if not _HOST_RE.fullmatch(ip) or ip.replace(".", "").isdigit():
                    errors["ip"] = f"invalid address '{ip}'"
        for name in ("ip", "username", "password"):
            if not cfg.get(name) and name not in errors:
                errors[name] = "property is missing and it is not optional"
    else:
        agent = cfg.get("agent")
        if not agent:
            errors["agent"] = "property is missing and it is not optional"
    if errors:
        raise ParamError(errors)
    try:
        device = make_device(cfg)
    except FenceConfigError as exc:
        # its messages start with the key at fault and never hold the secret
        msg = str(exc)
        key = msg.split(":", 1)[0].strip()
        if key not in FENCE_PARAMS:
            key = next((k for k in ("options", "password", "timeout", "agent")
                        if k.rstrip("s") in msg), "type")
        raise param_error(key, msg) from None
    if kind == "agent" and device.resolve() is None:   # type: ignore[attr-defined]
        raise param_error("agent", f"unknown fence agent '{cfg['agent']}' (not found in "
                                   "PATH, /usr/sbin or /sbin on this node)")
    return cfg


def public_config(node: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """A stored config as the API shows it: no secret, ever."""
    out: dict[str, Any] = {"node": node, "type": cfg.get("type")}
    for name in _TYPE_KEYS.get(str(cfg.get("type")), ()):
        if name in cfg:
            value = cfg[name]
            if name == "options":
                value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
            elif name == "confirm":
                value = int(bool(value))
            out[name] = value
    out["has_password"] = int(bool(cfg.get("password") or cfg.get("password_file")))
    return out


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
    entries = await _store(ctx).get_prefix(keys.HA_FENCE)
    return [public_config(e.key[len(keys.HA_FENCE):], e.value) for e in entries
            if isinstance(e.value, dict)]


@registry.register(
    "GET", "/cluster/ha/fence/{node}", name="fence_get", permission=AUDIT,
    description="Read a node's fence device (the password is never shown).",
    parameters={"node": NODE}, returns={"type": "object"},
    cli=CliSpec(("fence", "config"), positional=("node",)),
)
async def fence_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    cfg = await _store(ctx).get_value(keys.ha_fence(params["node"]))
    if not isinstance(cfg, dict):
        raise ApiError(500, f"no fence device configured for node '{params['node']}'")
    return public_config(params["node"], cfg)


@registry.register(
    "POST", "/cluster/ha/fence/{node}", name="fence_create", permission=CONSOLE,
    description="Configure a node's fence device.",
    parameters={"node": NODE, **FENCE_PARAMS},
    cli=CliSpec(("fence", "add"), positional=("node",)),
)
async def fence_create(ctx: RequestContext, params: dict[str, Any]) -> None:
    store = _require_quorum(ctx)
    node = params["node"]
    await _known_node(ctx, node)
    cfg = _build(node, None, params, [])

    def mutate(doc):
        if doc:
            raise ApiError(500, f"node '{node}' already has a fence device (use set)")
        return cfg

    await store.update(keys.ha_fence(node), mutate)
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
    store = _require_quorum(ctx)
    node = params["node"]
    delete = [d.strip() for d in (params.get("delete") or "").split(",") if d.strip()]
    old = await store.get_value(keys.ha_fence(node))
    if not isinstance(old, dict):
        raise ApiError(500, f"no fence device configured for node '{node}'")
    if params.get("type") not in (None, old.get("type")) and params.get("password") is None \
            and old.get("password"):
        # a type change keeps the password: the secret stays where it was given
        params = {**params, "password": old["password"]}
    cfg = _build(node, old, params, delete)

    def mutate(doc):
        if doc != old:
            raise ApiError(500, "fence device changed meanwhile - try again")
        return cfg

    await store.update(keys.ha_fence(node), mutate)
    await _clusterlog(ctx, f"fence device of {node} changed by {ctx.userid}")


@registry.register(
    "DELETE", "/cluster/ha/fence/{node}", name="fence_remove", permission=CONSOLE,
    description="Remove a node's fence device (HA then relies on the watchdog alone).",
    parameters={"node": NODE},
    cli=CliSpec(("fence", "remove"), positional=("node",)),
)
async def fence_remove(ctx: RequestContext, params: dict[str, Any]) -> None:
    store = _require_quorum(ctx)
    node = params["node"]
    if await store.get(keys.ha_fence(node)) is None:
        raise ApiError(500, f"no fence device configured for node '{node}'")
    await store.delete(keys.ha_fence(node))
    await _clusterlog(ctx, f"fence device of {node} removed by {ctx.userid}")


async def _device(ctx: RequestContext, node: str):
    cfg = await _store(ctx).get_value(keys.ha_fence(node))
    if not isinstance(cfg, dict):
        raise ApiError(500, f"no fence device configured for node '{node}'")
    try:
        return make_device(cfg)
    except FenceConfigError as exc:
        raise ApiError(500, f"fence device of '{node}' is invalid: {exc}") from None


async def _clusterlog(ctx: RequestContext, message: str, pri: str | None = None) -> None:
    clog = getattr(ctx.services, "clusterlog", None)
    if clog is None:
        return
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
    device = await _device(ctx, params["node"])
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
    device = await _device(ctx, node)

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
    store = _require_quorum(ctx)
    node = params["node"]
    if node in (ctx.node, "localhost"):
        raise ApiError(500, f"refusing to confirm the power-off of the local node "
                            f"'{ctx.node}': it is answering this request")
    await _known_node(ctx, node)
    if await store.get(keys.ha_heartbeat(node)) is not None \
            or await store.get(keys.alive(node)) is not None:
        raise ApiError(500, f"node '{node}' is online (its lease is alive): refusing to "
                            "confirm it is powered off")
    ms = await store.get_value(keys.HA_MANAGER_STATUS, {}) or {}
    rec = (ms.get("node_status") or {}).get(node) or {}
    loss = rec.get("loss")
    if rec.get("state") not in ("unknown", "fence") or not loss:
        raise ApiError(500, f"node '{node}' is not lost for the HA manager (state "
                            f"{rec.get('state') or 'unknown to it'}): nothing to confirm")
    doc = {"node": node, "loss": loss, "user": ctx.userid, "at": round(time.time(), 3)}
    await store.put(keys.ha_fence_confirm(node), doc)
    waiting = sorted(sid for sid, sd in (ms.get("service_status") or {}).items()
                     if sd.get("node") == node and sd.get("state") in ("fence", "freeze"))
    await _clusterlog(ctx, f"power-off of {node} confirmed by {ctx.userid} (manual fence, "
                           f"loss {loss}): its HA services may now be recovered elsewhere"
                           + (f" ({', '.join(waiting)})" if waiting else ""), "warning")
    return {"node": node, "loss": loss, "user": ctx.userid, "services": waiting}
