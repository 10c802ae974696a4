"""Replicated volume methods: /nodes/{node}/volumes/... and `binome volume ...`.

    GET    /nodes/{node}/volumes                     every volume of the node, with its state
    POST   /nodes/{node}/volumes                     create (this node Primary + its peer)
    GET    /nodes/{node}/volumes/{volume}            one volume: state, cluster record, marks
    PUT    /nodes/{node}/volumes/{volume}            change settings (drbdadm adjust), both nodes
    GET    /nodes/{node}/volumes/{volume}/config     effective settings (drbdsetup show)
    DELETE /nodes/{node}/volumes/{volume}            remove it on both nodes, with its data
    POST   /nodes/{node}/volumes/{volume}/ACTION     up, down, primary [force], secondary,
           connect [discard-my-data], disconnect, invalidate, invalidate-remote, outdate,
           pause-sync, resume-sync, standalone [enable]

Every state change runs as a task (a UPID); the CLI waits for it and prints
its log. `binome volume status` prints DRBD's two views (`replica.core.format`):
the CLI owns that formatter (`cli/format.py`). The replication
secret is never returned: it lives in a key of its own that no method reads
back (`replica.node.records`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError, fail, param_error
from binome.api.methods.common import NODE
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.storage.replica.core.csum import ALGORITHMS
from binome.storage.replica.core.events import EventTranslator, end_of_snapshot
from binome.storage.replica.core.views import record_settings
from binome.storage.replica.node.errors import SettingRefused, VolumeFailure
from binome.storage.replica.node.volumes import VolumeService
from binome.store.client import StoreUnavailable
from binome.tasks.manager import Task

VOLUME = Param(pattern=r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", description="Volume name.")
# binome-only: replicated volumes have their own privileges (docs/access-control.md);
# creating, resizing or removing one allocates storage, as PVE's Datastore.Allocate
AUDIT = privs("Volume.Audit")
MODIFY = privs("Volume.Modify")
ALLOCATE = privs("Datastore.Allocate", path="/storage")
UPID_RETURN = {"type": "string", "description": "UPID"}
POLICY = Param(optional=True, max_length=64, description="After-split-brain policy keyword.")


# The adjustable settings (drbdadm adjust; config.ADJUSTABLE) as API parameters: DRBD's
# names, binome's units (KiB and KiB/s; DRBD's 1/10 s for the controller's times).
# parameter -> (engine setting, factor from the API unit to the engine's)
SETTINGS: dict[str, tuple[str, float]] = {
    "resync-rate": ("resync_rate", 1024), "c-plan-ahead": ("c_plan_ahead", 0.1),
    "c-fill-target": ("c_fill_target", 1024), "c-delay-target": ("c_delay_target", 0.1),
    "c-max-rate": ("c_max_rate", 1024), "c-min-rate": ("c_min_rate", 1024),
    "allow-two-primaries": ("allow_two_primaries", 1), "protocol": ("protocol", 1),
    "verify-alg": ("verify_alg", 1), "csums-alg": ("csums_alg", 1),
}
PARAM_OF = {key: name for name, (key, _) in SETTINGS.items()}
ENGINE_DEFAULTS = {"resync_rate": 0, "c_plan_ahead": 0.0, "c_fill_target": 0,
                   "c_delay_target": 1.0, "c_max_rate": 100 << 20, "c_min_rate": 0,
                   "allow_two_primaries": False, "protocol": "C", "verify_alg": "sha256",
                   "csums_alg": ""}
CONTROLLER_PARAMS = {
    "c-plan-ahead": Param(type="integer", optional=True, minimum=0, maximum=300,
                          description="Dynamic resync controller: plan-ahead in 1/10 s "
                                      "(0: the fixed resync-rate; DRBD's default is 20)."),
    "c-fill-target": Param(type="integer", optional=True, minimum=0,
                           description="KiB the dynamic controller keeps in flight (0: aim "
                                       "at c-delay-target instead)."),
    "c-delay-target": Param(type="integer", optional=True, minimum=0, maximum=100,
                            description="Dynamic controller: seconds of requests in flight "
                                        "at the incoming rate, in 1/10 s."),
    "c-max-rate": Param(type="integer", optional=True, minimum=1,
                        description="Dynamic controller's cap, KiB/s."),
    "c-min-rate": Param(type="integer", optional=True, minimum=0,
                        description="Resync rate while the application does I/O, KiB/s "
                                    "(0: no throttle)."),
    "verify-alg": Param(enum=ALGORITHMS, optional=True,
                        description="Online verify digest (both nodes use the same)."),
    "csums-alg": Param(enum=("none", *ALGORITHMS), optional=True,
                       description="Checksum-based resync digest; none: send every block."),
}


def _engine_settings(params: dict[str, Any], names: Any = SETTINGS) -> dict[str, Any]:
    """{engine setting: value} for the setting parameters given, in the engine's units."""
    out: dict[str, Any] = {}
    for name in names:
        if params.get(name) is None:
            continue
        key, factor = SETTINGS[name]
        value = params[name]
        if key == "allow_two_primaries":
            value = bool(value)
        elif key == "csums_alg":
            value = "" if value == "none" else value
        elif key in ("c_plan_ahead", "c_delay_target"):
            value = round(int(value) * factor, 1)
        elif factor != 1:
            value = int(value) * int(factor)
        out[key] = value
    return out


def _setting_errors(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, str]:
    """Per-parameter errors of the settings `current` + `changes` taken together."""
    eff = {**ENGINE_DEFAULTS, **current, **changes}
    errors: dict[str, str] = {}

    def blame(text: str, *keys: str) -> None:
        given = [k for k in keys if k in changes] or list(keys[:1])
        errors[PARAM_OF[given[0]]] = text

    if eff["allow_two_primaries"] and eff["protocol"] != "C":
        blame(f"allow-two-primaries requires protocol C (the protocol would be "
              f"{eff['protocol']})", "protocol", "allow_two_primaries")
    if eff["c_min_rate"] > eff["c_max_rate"]:
        blame(f"c-min-rate ({eff['c_min_rate'] // 1024} KiB/s) must not exceed c-max-rate "
              f"({eff['c_max_rate'] // 1024} KiB/s)", "c_min_rate", "c_max_rate")
    if eff["c_plan_ahead"] and not eff["c_fill_target"] and not eff["c_delay_target"]:
        blame("the dynamic resync controller needs c-fill-target or c-delay-target",
              "c_plan_ahead", "c_fill_target", "c_delay_target")
    return errors


def volumes(ctx: RequestContext) -> VolumeService:
    service = ctx.services.volumes
    if service is None:
        raise fail("this node holds no replicated volumes (witness)")
    return service


def _task(ctx: RequestContext, type_: str, name: str, body) -> str:
    return ctx.services.tasks.start(type_, name, ctx.userid, body)


def _line(st: dict[str, Any]) -> str:
    return (f"{st['name']}: cs:{st['cstate']} ro:{st['role']}/{st['peer_role']} "
            f"ds:{st['disk']}/{st['peer_disk']}" + (" (I/O suspended: fencing)"
                                                    if st.get("suspended") else ""))


async def _with_cluster(service: VolumeService, statuses: list[dict[str, Any]]
                        ) -> list[dict[str, Any]]:
    """Add what the cluster knows (records, Outdated marks); fine without quorum."""
    if not service.in_cluster():
        return statuses
    try:
        records = await service.all_records()
    except (VolumeFailure, StoreUnavailable):
        return statuses
    out = []
    seen = set()
    for st in statuses:
        rec = records.get(st["name"])
        seen.add(st["name"])
        if rec is not None:
            st = {**st, "storage": rec.get("storage"), "vmid": rec.get("vmid"),
                  "port": rec.get("port"), "desired_primary": rec.get("primary")}
        out.append(st)
    for name, rec in sorted(records.items()):
        if name in seen or service.node not in rec.get("nodes", {}):
            continue
        peer = next((n for n in rec["nodes"] if n != service.node), None)
        out.append({"name": name, "size": rec["size"], "cstate": "Unconfigured",
                    "role": "Unknown", "peer_role": "Unknown", "disk": "Diskless",
                    "peer_disk": "DUnknown", "peer_node": peer, "storage": rec.get("storage"),
                    "vmid": rec.get("vmid"), "port": rec.get("port"),
                    "deleting": bool(rec.get("deleting"))})
    return out


@registry.register(
    "GET", "/nodes/{node}/volumes", name="volume_list", permission=AUDIT, proxyto="node",
    description="Replicated volumes of a node, with their replication state.",
    parameters={"node": NODE, "volume": Param(optional=True, description="Only this volume.")},
    returns={"type": "array", "items": {"type": "object"}},
    cli=(CliSpec(("volume", "list"),
                 formatter="table:name,role,peer_role,cstate,disk,peer_disk,peer_node,size,"
                           "out_of_sync_kib"),
         CliSpec(("volume", "status"), positional=("volume",), formatter="volume_status",
                 help="DRBD-style status: a /proc/drbd view and a drbdadm status view")),
)
async def volume_list(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    service = volumes(ctx)
    try:
        statuses = await service.local_statuses()
    except VolumeFailure as exc:
        raise fail(str(exc)) from None
    out = await _with_cluster(service, statuses)
    if params.get("volume"):
        out = [st for st in out if st["name"] == params["volume"]]
        if not out:
            raise fail(f"no volume named '{params['volume']}' on node {ctx.node}")
    return out


@registry.register(
    "POST", "/nodes/{node}/volumes", name="volume_create", permission=ALLOCATE,
    proxyto="node",
    description="Create a replicated volume on this node and its peer; this node becomes "
                "its Primary and the initial full sync starts.",
    parameters={
        "node": NODE, "volume": VOLUME,
        "size": Param(pattern=r"\d+[KMGT]?", description="Size, e.g. 1G (multiple of 4K)."),
        "peer": Param(format="pve-node", optional=True,
                      description="The peer node (default: the other node of the cluster)."),
        "protocol": Param(enum=("A", "B", "C"), optional=True, default="C",
                          description="Replication protocol (C: synchronous)."),
        "fencing": Param(enum=("quorum", "dont-care"), optional=True, default="quorum",
                         description="quorum: a Primary that loses its peer suspends writes "
                                     "until the peer is back or recorded Outdated by a "
                                     "quorate node."),
        "resync-rate": Param(type="integer", optional=True, default=0, minimum=0,
                             description="Resync rate limit in KiB/s (0: unlimited)."),
        "after-sb-0pri": POLICY, "after-sb-1pri": POLICY, "after-sb-2pri": POLICY,
        "allow-two-primaries": Param(type="boolean", optional=True, default=0,
                                     description="Allow both nodes to be Primary at once "
                                                 "(live migration); protocol C only."),
        **CONTROLLER_PARAMS,
    },
    returns=UPID_RETURN,
    cli=CliSpec(("volume", "create"), positional=("volume",)),
)
async def volume_create(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = volumes(ctx)
    name = params["volume"]
    after_sb = {n: params[f"after-sb-{n}pri"] for n in (0, 1, 2)
                if params.get(f"after-sb-{n}pri")}
    if params.get("allow-two-primaries") and params["protocol"] != "C":
        raise param_error("allow-two-primaries",
                          f"allow-two-primaries requires protocol C (not {params['protocol']})")
    options = _engine_settings(params, CONTROLLER_PARAMS)
    errors = _setting_errors({"resync_rate": int(params["resync-rate"]) * 1024}, options)
    if errors:
        raise ParamError(errors)

    async def body(task: Task) -> None:
        await service.create_volume(name, params["size"], peer=params.get("peer"),
                                    protocol=params["protocol"], fencing=params["fencing"],
                                    resync_rate=int(params["resync-rate"]) * 1024,
                                    after_sb=after_sb, task=task,
                                    allow_two_primaries=bool(params["allow-two-primaries"]),
                                    options=options)

    return _task(ctx, "volcreate", name, body)


@registry.register(
    "GET", "/nodes/{node}/volumes/{volume}", name="volume_status", permission=AUDIT,
    proxyto="node",
    description="One replicated volume: this node's state, the cluster record, the copies "
                "recorded Outdated and every node's published state.",
    parameters={"node": NODE, "volume": VOLUME}, returns={"type": "object"},
    cli=CliSpec(("volume", "show"), positional=("volume",)),
)
async def volume_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    service = volumes(ctx)
    name = params["volume"]
    out: dict[str, Any] = {"name": name}
    if service.exists_locally(name):
        try:
            out.update(await service.call("status", name=name))
        except VolumeFailure as exc:
            raise fail(str(exc)) from None
    try:
        view = await service.cluster_view(name)
        out["cluster"] = view["config"]
        out["outdated"] = view["outdated"]
        out["states"] = view["states"]
    except (VolumeFailure, StoreUnavailable) as exc:
        if len(out) == 1:
            raise fail(str(exc)) from None
    return out


@registry.register(
    "PUT", "/nodes/{node}/volumes/{volume}", name="volume_set", permission=MODIFY,
    proxyto="node",
    description="Change settings of a replicated volume (drbdadm adjust): the resync rate "
                "and dynamic resync controller, protocol, allow-two-primaries, verify and "
                "checksum algorithms. Recorded in the cluster and applied live on both "
                "nodes (the peer over the replication link while connected, else by its "
                "daemon). Synchronous; answers what changed and the effective settings.",
    parameters={
        "node": NODE, "volume": VOLUME,
        "resync-rate": Param(type="integer", optional=True, minimum=0,
                             description="Resync rate limit in KiB/s (0: unlimited); the "
                                         "dynamic controller's first guess."),
        "protocol": Param(enum=("A", "B", "C"), optional=True,
                          description="Replication protocol (refused while both are "
                                      "Primary; allow-two-primaries needs C)."),
        "allow-two-primaries": Param(type="boolean", optional=True,
                                     description="Allow both nodes to be Primary at once "
                                                 "(live migration); 0 is refused while both "
                                                 "are Primary."),
        **CONTROLLER_PARAMS,
    },
    returns={"type": "object"},
    cli=CliSpec(("volume", "set"), positional=("volume",)),
)
async def volume_set(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    service = volumes(ctx)
    name = params["volume"]
    changes = _engine_settings(params)
    if not changes:
        raise ApiError(400, "no setting to change given", {
            "resync-rate": "one of " + ", ".join(SETTINGS) + " is needed"})
    if not service.exists_locally(name):
        raise fail(f"no volume named '{name}' on node {ctx.node}")
    try:
        rec = await service.record(name, serializable=False)
    except (VolumeFailure, StoreUnavailable) as exc:
        raise fail(str(exc)) from None
    errors = _setting_errors(record_settings(rec), changes)
    if errors:
        raise ParamError(errors)
    try:
        res = await service.adjust_volume(name, changes)
    except SettingRefused as exc:
        if exc.setting in PARAM_OF:
            raise ApiError(400, f"volume {name}: {exc}", {PARAM_OF[exc.setting]: str(exc)}
                           ) from None
        raise ApiError(400, f"volume {name}: {exc}") from None
    except (VolumeFailure, StoreUnavailable) as exc:
        raise fail(str(exc)) from None
    return {"name": name, "changed": res.get("changed", {}),
            "settings": res.get("settings", {}), "cstate": res.get("cstate"),
            "role": res.get("role"), "peer_role": res.get("peer_role")}


@registry.register(
    "GET", "/nodes/{node}/volumes/{volume}/config", name="volume_config", permission=AUDIT,
    proxyto="node",
    description="The volume's effective settings on this node (a drbdsetup show view in "
                "the CLI).",
    parameters={"node": NODE, "volume": VOLUME}, returns={"type": "object"},
    cli=CliSpec(("volume", "config"), positional=("volume",), formatter="volume_config",
                help="effective settings, drbdsetup show style"),
)
async def volume_config(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    service = volumes(ctx)
    name = params["volume"]
    if not service.exists_locally(name):
        raise fail(f"no volume named '{name}' on node {ctx.node}")
    try:
        st = await service.call("status", name=name)
        if "settings" not in st:          # not up: the configuration file's
            st = {**st, **await service.call("adjust", name=name, dry_run=True)}
    except VolumeFailure as exc:
        raise fail(str(exc)) from None
    return {k: st.get(k) for k in ("name", "node", "peer_node", "protocol", "settings",
                                   "peer", "cstate")}


@registry.register(
    "DELETE", "/nodes/{node}/volumes/{volume}", name="volume_destroy", permission=ALLOCATE,
    proxyto="node", description="Remove a replicated volume and its data on both nodes.",
    parameters={"node": NODE, "volume": VOLUME}, returns=UPID_RETURN,
    cli=CliSpec(("volume", "destroy"), positional=("volume",),
                confirm="this removes the volume and its data on both nodes"),
)
async def volume_destroy(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = volumes(ctx)
    name = params["volume"]

    async def body(task: Task) -> None:
        await service.delete_volume(name, task=task)

    return _task(ctx, "voldestroy", name, body)


def _action(action: str, description: str, extra: dict[str, Param] | None = None,
            confirm: str | None = None):
    @registry.register(
        "POST", f"/nodes/{{node}}/volumes/{{volume}}/{action}", name=f"volume_{action}",
        permission=MODIFY, proxyto="node", description=description,
        parameters={"node": NODE, "volume": VOLUME, **(extra or {})}, returns=UPID_RETURN,
        cli=CliSpec(("volume", action), positional=("volume",), confirm=confirm),
    )
    async def handler(ctx: RequestContext, params: dict[str, Any]) -> str:
        service = volumes(ctx)
        name = params["volume"]
        if not service.exists_locally(name) and action != "up":
            raise fail(f"no volume named '{name}' on node {ctx.node}")

        async def body(task: Task) -> None:
            if action == "primary":
                st = await service.promote(name, force=bool(params.get("force")), task=task)
            elif action == "secondary":
                st = await service.demote(name)
            elif action == "up":
                st = await service.up(name)
            elif action == "down":
                await service.down(name)
                task.log(f"{name}: down on {ctx.node}")
                return
            elif action == "connect":
                st = await service.call("connect", name=name,
                                        discard_my_data=bool(params.get("discard-my-data")))
            elif action == "standalone":
                st = await service.standalone(name, bool(params.get("enable", True)), task)
            else:
                async with service.lock(name):
                    st = await service.call(action, name=name)
            task.log(_line(st))

        return _task(ctx, f"vol{action.replace('-', '')}", name, body)

    return handler


_FORCE = {"force": Param(type="boolean", optional=True, default=False,
                         description="Promote even stale or inconsistent data (DRBD's "
                                     "--force): may overwrite the peer's newer data.")}
_action("up", "Attach the volume and connect to its peer (drbdadm up).")
_action("down", "Disconnect and detach the volume on this node (drbdadm down).")
_action("primary", "Promote: this node serves the volume's I/O (quorum fencing first "
                   "records a disconnected peer's copy as Outdated).", _FORCE)
_action("secondary", "Demote: this node stops serving I/O.")
_action("connect", "Connect to the peer (after a disconnect or an unresolved split brain).",
        {"discard-my-data": Param(type="boolean", optional=True, default=False,
                                  description="This node is the split-brain victim: its "
                                              "changes are overwritten by the peer's.")})
_action("disconnect", "Drop the connection to the peer (StandAlone).")
_action("attach", "Attach the backing store again after a local I/O error detached it "
                  "(drbdadm attach): the replaced disk is resynced fully from the peer.")
_action("invalidate", "Full resync of this node's copy from the peer.")
_action("invalidate-remote", "Full resync of the peer's copy from this node.")
_action("outdate", "Mark this node's copy Outdated (refused while connected).")
_action("pause-sync", "Pause the resync.")
_action("resume-sync", "Resume a paused resync.")
_action("verify", "Online verify (drbdadm verify): compare every block with the peer's copy "
                  "(verify-alg); blocks that differ are reported and marked out of sync, and "
                  "a disconnect/connect resyncs them. Runs on; progress in the status.")
_action("verify-stop", "Stop a running online verify.")


@registry.register(
    "POST", "/nodes/{node}/volumes/{volume}/resize", name="volume_resize",
    permission=ALLOCATE, proxyto="node",
    description="Grow the volume on both nodes (drbdadm resize; the peer must be connected). "
                "NBD clients see the new size when they reconnect.",
    parameters={"node": NODE, "volume": VOLUME,
                "size": Param(pattern=r"\d+[KMGT]?",
                              description="The new size, e.g. 2G (a multiple of 4K).")},
    returns=UPID_RETURN,
    cli=CliSpec(("volume", "resize"), positional=("volume",)),
)
async def volume_resize(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = volumes(ctx)
    name = params["volume"]
    if not service.exists_locally(name):
        raise fail(f"no volume named '{name}' on node {ctx.node}")

    async def body(task: Task) -> None:
        st = await service.resize_volume(name, params["size"])
        task.log(f"{name}: size {st['size']} bytes")
        task.log(_line(st))

    return _task(ctx, "volresize", name, body)
_action("standalone", "Standalone mode: turn quorum fencing off on this node (writes go on "
                      "without the peer or quorum; split-brain policies apply later).",
        {"enable": Param(type="boolean", optional=True, default=True,
                         description="1: fencing off; 0: back to the volume's fencing.")},
        confirm="without quorum fencing both nodes may write: a split brain is possible")


# --- events (drbdsetup events2) -------------------------------------------------------------

EVENTS_PARAMS = {
    "node": NODE,
    "now": Param(type="boolean", optional=True, default=False,
                 description="Only the current state (exists events), then end."),
}
EVENTS_HELP = ("State changes of the node's volumes as drbdsetup events2 lines (exists, "
               "create, change, destroy, call/response helper). Streams application/x-ndjson "
               "(one JSON object per line) until the client hangs up; with now=1 a plain "
               "JSON list. A binome extension.")
IDLE_CHECK = 5.0          # seconds between checks that a quiet stream's client is still there


@registry.register(
    "GET", "/nodes/{node}/volume-events", name="volume_events", permission=AUDIT,
    proxyto="node", description=EVENTS_HELP,
    parameters={**EVENTS_PARAMS, "volume": Param(
        optional=True, pattern=r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}",
        description="Only this volume.")},
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("volume", "events"), positional=("volume",),
                help="follow volume state changes (like drbdsetup events2)"),
)
async def volume_events(ctx: RequestContext, params: dict[str, Any]) -> Any:
    return await _events(ctx, params.get("volume"), bool(params.get("now")))


@registry.register(
    "GET", "/nodes/{node}/volumes/{volume}/events", name="volume_events_one",
    permission=AUDIT, proxyto="node", description=EVENTS_HELP + " One volume.",
    parameters={**EVENTS_PARAMS, "volume": VOLUME},
    returns={"type": "array", "items": {"type": "object"}},
)
async def volume_events_one(ctx: RequestContext, params: dict[str, Any]) -> Any:
    return await _events(ctx, params["volume"], bool(params.get("now")))


async def _events(ctx: RequestContext, volume: str | None, now: bool) -> Any:
    service = volumes(ctx)
    if volume is not None and not service.exists_locally(volume):
        raise fail(f"no volume named '{volume}' on node {ctx.node}")
    tr = EventTranslator(volume)
    if now:
        try:
            return tr.snapshot(await service.local_statuses())
        except VolumeFailure as exc:
            raise fail(str(exc)) from None
    stream = service.engine_events()
    try:
        first = await anext(stream)          # fail with a plain error before streaming starts
    except VolumeFailure as exc:
        raise fail(str(exc)) from None
    except StopAsyncIteration:
        raise fail("the volume engine ended the event stream") from None
    request = ctx.request
    assert request is not None
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                       "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)

    async def send(ev: dict[str, Any]) -> None:
        out = end_of_snapshot() if ev.get("event") == "exists-end" else None
        for item in ([out] if out else tr.feed(ev)):
            await resp.write(json.dumps(item).encode() + b"\n")

    nxt: asyncio.Task | None = None
    try:
        await send(first)
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(anext(stream))
            done, _ = await asyncio.wait({nxt}, timeout=IDLE_CHECK)
            if not done:
                # A quiet stream: stop when the client has gone (nothing else would tell).
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            ev, nxt = nxt.result(), None
            await send(ev)
    except (StopAsyncIteration, ConnectionError):
        pass
    finally:
        if nxt is not None:
            nxt.cancel()
        # the stream is an async generator: close it now, not when it is collected
        if isinstance(stream, AsyncGenerator):
            with contextlib.suppress(Exception):
                await stream.aclose()
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp
