"""A node's bulk guest actions: PVE's `POST /nodes/{node}/startall`, `stopall` and
`migrateall` (`PVE/API2/Nodes.pm`), and the guest part of a node reboot or shutdown.

Each is one task (`startall`, `stopall`, `migrateall`) whose log reads like PVE's; it
runs one per-guest task per guest through the same method a `qm start`, `qm shutdown`
or `qm migrate` call reaches (so an HA guest goes through the HA manager, with PVE's
`hastart`/`hastop`/`hamigrate` tasks), at most `max-workers` at a time. Which guests,
in which order: `binome.guest.bulk` (PVE's rules, kept there with the reasons).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError, PermissionDenied, param_error
from binome.api.methods.common import NODE, ha_config_if_clustered, require_quorum
from binome.api.registry import CliSpec, registry
from binome.api.schema import Param
from binome.backup.jobs import parse_vmid_list
from binome.guest import bulk
from binome.tasks.manager import Task

START_DELAY = 3         # PVE: seconds between two VM starts unless `startup: up=` says
STOP_TIMEOUT = 180      # PVE's stopall default per guest
QUORUM_WAIT = 3600.0   # PVE waits for ever; an hour, then the task fails

VMS = Param(optional=True, max_length=4096, pattern=r"[0-9,;\s]*",
            description="Only consider guests from this comma separated list of VMIDs.")
MAX_WORKERS = Param(type="integer", optional=True, minimum=1, maximum=64,
                    description="The maximum number of tasks running concurrently (default: "
                                "the CPU threads less one, at most 8).")


def _vms(params: dict[str, Any]) -> list[int] | None:
    text = params.get("vms")
    if text is None or not text.strip():
        return None
    try:
        return parse_vmid_list(text)
    except ValueError as exc:
        raise param_error("vms", str(exc)) from None


async def _check_privs(ctx: RequestContext, vms: list[int] | None, priv: str) -> None:
    """PVE: `priv` on / suffices, else on /vms/<id> of each guest the `vms` list names."""
    ev = await ctx.services.access.evaluator()
    if ev.check(ctx.userid, "/", [priv]):
        return
    if not vms:
        raise PermissionDenied(f"/, {priv}")
    for vmid in vms:
        if not ev.check(ctx.userid, f"/vms/{vmid}", [priv]):
            raise PermissionDenied(f"/vms/{vmid}, {priv}")


async def _guests_here(ctx: RequestContext) -> tuple[list[tuple[int, dict[str, Any]]], set[int]]:
    """This node's guests (vmid, config) and the VMIDs the HA manager manages."""
    guests = ctx.services.guests
    if guests is None:
        return [], set()
    configs = [(vm.vmid, dict(vm.config)) for vm in await guests.list_configs(ctx.node)]
    ha = ha_config_if_clustered(ctx)
    managed: set[int] = set()
    if ha is not None:
        for sid in await ha.resources():
            kind, _, num = sid.partition(":")
            if kind == "vm" and num.isdigit():
                managed.add(int(num))
    return configs, managed


def _max_workers(params: dict[str, Any]) -> int:
    return int(params.get("max-workers") or params.get("maxworkers")
               or bulk.default_max_workers(os.cpu_count() or 1))


async def _vm_call(ctx: RequestContext, action: str, vmid: int,
                   params: dict[str, Any]) -> str:
    """Start a per-guest task through the method a client's own call reaches."""
    method, _ = registry.match("POST", f"/nodes/{ctx.node}/qemu/{vmid}/{action}")
    return str(await method.handler(ctx, {"node": ctx.node, "vmid": vmid, **params}))


class _Workers:
    """At most `limit` per-guest tasks at once; a failed one is a warning of the bulk
    task (PVE prints it and goes on)."""

    def __init__(self, ctx: RequestContext, task: Task, limit: int, verb: str) -> None:
        self.ctx, self.task, self.limit, self.verb = ctx, task, limit, verb
        self.running: dict[asyncio.Future[Any], int] = {}

    def add(self, vmid: int, upid: str) -> None:
        waiter = asyncio.ensure_future(self.ctx.services.tasks.wait(upid))
        self.running[waiter] = vmid

    async def _reap(self, done: set[asyncio.Future[Any]]) -> None:
        for waiter in done:
            vmid = self.running.pop(waiter)
            record = waiter.result()
            if record.exitstatus not in ("OK",) and not str(
                    record.exitstatus or "").startswith("WARNINGS"):
                self.task.warn(f"{self.verb} VM {vmid} failed: {record.exitstatus}")

    async def throttle(self) -> None:
        while len(self.running) >= self.limit:
            done, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
            await self._reap(done)

    async def drain(self) -> None:
        while self.running:
            done, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
            await self._reap(done)


async def run_startall(ctx: RequestContext, task: Task, *, force: bool,
                       vms: list[int] | None, max_workers: int) -> None:
    """PVE's startall worker: wait for quorum, then start group after group."""
    cluster = ctx.services.cluster
    if not cluster.view.quorate:
        task.log("waiting for quorum ...")
        await cluster.wait_quorate(timeout=QUORUM_WAIT)
        task.log("got quorum")
    configs, managed = await _guests_here(ctx)
    plan = bulk.start_stop_plan(configs, managed, vms, autostart=not force)
    guests = ctx.services.guests
    workers = _Workers(ctx, task, max_workers, "Starting")
    for group in plan:
        for g in group:
            if guests is not None and guests.runtime.is_running(g.vmid):
                continue
            require_quorum(ctx)   # PVE aborts when quorum is lost meanwhile
            task.log(f"Starting VM {g.vmid}")
            try:
                upid = await _vm_call(ctx, "status/start", g.vmid, {})
            except ApiError as exc:
                task.warn(f"Starting VM {g.vmid} failed: {exc.message}")
                continue
            workers.add(g.vmid, upid)
            delay = g.up if g.up is not None else START_DELAY
            if delay > 0:
                if g.up:
                    task.log(f"Waiting for {delay} seconds (startup delay)")
                await asyncio.sleep(delay)
            await workers.throttle()
        await workers.drain()


async def run_stopall(ctx: RequestContext, task: Task, *, vms: list[int] | None,
                      timeout: int, force_stop: bool, max_workers: int) -> None:
    """PVE's stopall worker: shut the guests down group after group (reverse order)."""
    configs, managed = await _guests_here(ctx)
    plan = bulk.start_stop_plan(configs, managed, vms, autostart=False, reverse=True)
    guests = ctx.services.guests
    for group in plan:
        workers = _Workers(ctx, task, max_workers, "Stopping")
        for g in group:
            if guests is None or not guests.runtime.is_running(g.vmid):
                continue
            t = int(g.down if g.down is not None else timeout)
            task.log(f"Stopping VM {g.vmid} (timeout = {t} seconds)")
            try:
                upid = await _vm_call(ctx, "status/shutdown", g.vmid,
                                      {"timeout": t, "forceStop": force_stop})
            except ApiError as exc:
                # an HA guest already stopped, a guest gone meanwhile: said, not fatal
                task.log(f"VM {g.vmid}: {exc.message}")
                continue
            workers.add(g.vmid, upid)
            await workers.throttle()
        await workers.drain()
    task.log("all VMs stopped")


async def run_migrateall(ctx: RequestContext, task: Task, *, target: str,
                         vms: list[int] | None, max_workers: int,
                         with_local_disks: bool | None) -> None:
    configs, managed = await _guests_here(ctx)
    plan = bulk.migrate_plan(configs, managed, vms)
    if not plan:
        task.warn("no virtual guests matched, nothing to do..")
        return
    guests = ctx.services.guests
    workers = _Workers(ctx, task, max_workers, "Migrating")
    for g in plan:
        online = guests is not None and guests.runtime.is_running(g.vmid)
        params: dict[str, Any] = {"target": target, "online": online}
        if with_local_disks is not None:
            params["with-local-disks"] = with_local_disks
        task.log(f"Migrating VM {g.vmid}" + (" (HA)" if g.ha else ""))
        try:
            upid = await _vm_call(ctx, "migrate", g.vmid, params)
        except ApiError as exc:
            detail = "; ".join(f"{k}: {v}" for k, v in (exc.errors or {}).items())
            task.warn(f"skip VM {g.vmid} - precondition check failed: {exc.message}"
                      + (f" ({detail})" if detail else ""))
            continue
        workers.add(g.vmid, upid)
        await workers.throttle()
    await workers.drain()


@registry.register(
    "POST", "/nodes/{node}/startall", name="startall", proxyto="node",
    permission=AnyUser("VM.PowerMgmt on / or on /vms/<ID> for each ID of 'vms'"),
    description="Start all VMs located on this node (by default only those with onboot=1), "
                "in their startup order.",
    parameters={"node": NODE,
                "force": Param(type="boolean", optional=True, default=False,
                               description="Issue start command even if virtual guest have "
                                           "'onboot' not set or set to off."),
                "vms": VMS, "max-workers": MAX_WORKERS},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("node", "startall"), positional=("node",)),
)
async def startall(ctx: RequestContext, params: dict[str, Any]) -> str:
    vms = _vms(params)
    await _check_privs(ctx, vms, "VM.PowerMgmt")
    force, workers = bool(params.get("force")), _max_workers(params)

    async def body(task: Task) -> None:
        await run_startall(ctx, task, force=force, vms=vms, max_workers=workers)

    return ctx.services.tasks.start("startall", "", ctx.userid, body)


@registry.register(
    "POST", "/nodes/{node}/stopall", name="stopall", proxyto="node",
    permission=AnyUser("VM.PowerMgmt on / or on /vms/<ID> for each ID of 'vms'"),
    description="Stop all VMs (a clean shutdown each, in reverse startup order).",
    parameters={"node": NODE, "vms": VMS,
                "force-stop": Param(type="boolean", optional=True, default=True,
                                    description="Force a hard-stop after the timeout."),
                "timeout": Param(type="integer", optional=True, default=STOP_TIMEOUT,
                                 minimum=0, maximum=7200,
                                 description="Timeout for each guest shutdown task."),
                "max-workers": MAX_WORKERS},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("node", "stopall"), positional=("node",),
                confirm="this shuts down every guest of the node"),
)
async def stopall(ctx: RequestContext, params: dict[str, Any]) -> str:
    vms = _vms(params)
    await _check_privs(ctx, vms, "VM.PowerMgmt")
    force_stop = bool(params.get("force-stop", True))
    timeout = int(params.get("timeout", STOP_TIMEOUT))
    workers = _max_workers(params)

    async def body(task: Task) -> None:
        await run_stopall(ctx, task, vms=vms, timeout=timeout, force_stop=force_stop,
                          max_workers=workers)

    return ctx.services.tasks.start("stopall", "", ctx.userid, body)


@registry.register(
    "POST", "/nodes/{node}/migrateall", name="migrateall", proxyto="node",
    permission=AnyUser("VM.Migrate on / or on /vms/<ID> for each ID of 'vms'"),
    description="Migrate all VMs of this node to another node (HA guests through the HA "
                "manager).",
    parameters={"node": NODE,
                "target": Param(format="pve-node", description="Target node."),
                "maxworkers": Param(type="integer", optional=True, minimum=1, maximum=64,
                                    description="Deprecated, use 'max-workers' instead."),
                "max-workers": MAX_WORKERS, "vms": VMS,
                "with-local-disks": Param(type="boolean", optional=True,
                                          description="Enable live storage migration for "
                                                      "local disk.")},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("node", "migrateall"), positional=("node", "target")),
)
async def migrateall(ctx: RequestContext, params: dict[str, Any]) -> str:
    vms = _vms(params)
    await _check_privs(ctx, vms, "VM.Migrate")
    target = params["target"]
    if target in (ctx.node, "localhost"):
        raise ParamError({"target": "target is local node."})
    require_quorum(ctx)
    rec = ctx.services.cluster.node_records.get(target)
    if rec is None or rec.get("state") == "evicted" or rec.get("role") == "witness":
        raise ParamError({"target": f"no such cluster node '{target}'"})
    workers = _max_workers(params)
    wld = params.get("with-local-disks")

    async def body(task: Task) -> None:
        await run_migrateall(ctx, task, target=target, vms=vms, max_workers=workers,
                             with_local_disks=None if wld is None else bool(wld))

    return ctx.services.tasks.start("migrateall", "", ctx.userid, body)
