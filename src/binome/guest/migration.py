"""Migration of a VM between nodes: the source's side (`MigrationSource`, task
`qmigrate`/`hamigrate`) and the target's (`MigrationTarget`, POST
``.../migrate/incoming``, called by the source node).

An offline migration deactivates the source's volumes and moves the config
and the vmid owner in one transaction (`configs.move`, which also removes the
`migrate` lock), then asks the target to activate its copies. A live one
starts a paused incoming QEMU on the target (its volumes activated there too:
dual-primary), streams the state, and at completion moves the config, resumes
the target, stops the (paused) source and deactivates the source's volumes. Until
the config has moved, the source is the guest and the target only a paused
copy that any failure removes. What a binomed restart leaves of a migration
is settled by `settling`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.guest.configs import VmConfig
from binome.guest.context import volume_name
from binome.guest.errors import GuestError, GuestFailure

if TYPE_CHECKING:
    from binome.guest.context import GuestContext
    from binome.guest.lifecycle import Lifecycle
    from binome.guest.remote import NodeSession
    from binome.tasks.manager import Task

log = logging.getLogger("binome.guest")
# seconds between two reads that keep the switch-over's connection to the target open
# (the API server closes an idle one after 75 s)
SESSION_REWARM = 20.0


class MigrationSource:
    def __init__(self, ctx: GuestContext) -> None:
        self.ctx = ctx

    async def migrate_preconditions(self, vmid: int, target: str | None = None
                                    ) -> dict[str, Any]:
        """PVE's `GET .../migrate`: running, allowed_nodes, not_allowed_nodes, local_disks."""
        vm = await self.ctx.read(vmid)
        running = self.ctx.runtime.is_running(vmid)
        local, replicated = await self.ctx.disk_kinds(vm)
        allowed: list[str] = []
        not_allowed: dict[str, Any] = {}
        for node in self.ctx.migration_nodes():
            if target is not None and node != target:
                continue
            problems = []
            if not self.ctx.cluster.node_online(node):
                problems.append(f"node '{node}' is not online")
            bad: list[str] = []
            for volid in replicated:
                why = await self.ctx.storages.migration_blocker(volid, node, live=running)
                if why:
                    problems.append(why)
                    bad.append(volid)
            if problems:
                not_allowed[node] = {"unavailable_storages": sorted(
                    {v.split(":", 1)[0] for v in bad}), "reasons": problems}
            else:
                allowed.append(node)
        return {"running": int(running), "allowed_nodes": allowed,
                "not_allowed_nodes": not_allowed, "local_disks": local,
                "local_resources": [], "mapped-resources": [],
                "replicated_volumes": [volume_name(v) for v in replicated]}

    async def check_migratable(self, vmid: int, target: str, *, online: bool,
                               with_local_disks: bool = False) -> VmConfig:
        """The refusals of a migration request, before any task starts (PVE's texts)."""
        vm = await self.ctx.read(vmid)
        if vm.config.get("lock"):
            raise GuestFailure(f"VM is locked ({vm.config['lock']})")
        if vm.config.get("template") and self.ctx.runtime.is_running(vmid):
            raise GuestFailure("you can't migrate a running template")
        if self.ctx.runtime.is_running(vmid) and not online:
            raise GuestFailure("can't migrate running VM without --online")
        if not self.ctx.cluster.node_online(target):
            raise GuestFailure(f"target node '{target}' is not online")
        local, replicated = await self.ctx.disk_kinds(vm)
        if local:
            disks = ", ".join(f"{d['drivename']} ({d['volid']})" for d in local)
            if with_local_disks:
                raise GuestFailure(f"migration of local disks is not implemented: {disks}; "
                                   f"move them to replicated storage first")
            raise GuestFailure(f"can't migrate VM {vmid} with local disks: {disks} (binome "
                               f"migrates VMs whose disks are on replicated storage)")
        running = self.ctx.runtime.is_running(vmid)
        for volid in replicated:
            why = await self.ctx.storages.migration_blocker(volid, target, live=running)
            if why:
                raise GuestFailure(f"can't migrate VM {vmid} to {target}: {why}")
        return vm

    async def migrate_vm(self, task: Task, vmid: int, target: str, *, online: bool,
                         with_local_disks: bool = False, bwlimit_kib: int | None = None
                         ) -> None:
        """Move VM `vmid` to `target`: a config move if stopped, a live migration if
        running (needs `online`). Runs on the source node, as task `qmigrate`.
        `bwlimit_kib`: migration bandwidth limit in KiB/s (None: the runtime's)."""
        started = time.monotonic()
        address = (self.ctx.cluster.node_address(target) or ("?", 0))[0]
        async with self.ctx.lock(vmid):
            vm = await self.check_migratable(vmid, target, online=online,
                                             with_local_disks=with_local_disks)
            _local, replicated = await self.ctx.disk_kinds(vm)
            running = self.ctx.runtime.is_running(vmid)
            task.log(f"starting migration of VM {vmid} to node '{target}' ({address})")
            if online and not running:
                task.log("VM isn't running. Doing offline migration instead.")
            vm = await self.ctx.configs.set_lock(vm, "migrate")
            try:
                if running:
                    await self._live_migrate(task, vm, target, replicated, bwlimit_kib)
                else:
                    await self._offline_migrate(task, vm, target, replicated)
            except BaseException as exc:
                task.log(f"migration aborted: {exc}")
                with contextlib.suppress(Exception):
                    current = await self.ctx.read(vmid)     # still ours: unlock it
                    if current.config.get("lock") == "migrate":
                        await self.ctx.configs.set_lock(current, None)
                raise
        elapsed = time.monotonic() - started
        task.log(f"migration finished successfully (duration {_hms(elapsed)})")

    async def _offline_migrate(self, task: Task, vm: VmConfig, target: str,
                               replicated: list[str]) -> None:
        from binome.guest.remote import node_call

        # a stopped guest's volumes are Primary here; the target's copy is UpToDate
        await self.ctx.deactivate_after(task, replicated, timeout=5.0)
        await self.ctx.configs.move(vm, target, release_lock="migrate")
        task.log(f"VM {vm.vmid}: config moved to node '{target}'")
        if replicated:
            # make the guest startable there at once (a start does not promote by itself)
            try:
                await node_call(self.ctx.cluster, target, "POST",
                                f"/nodes/{target}/qemu/{vm.vmid}/migrate/incoming",
                                {"phase": "promote", "source": self.ctx.node})
                task.log(f"volumes {', '.join(map(volume_name, replicated))}: Primary on {target}")
            except BinomeError as exc:
                task.warn(f"could not make the volumes Primary on {target}: {exc} "
                          f"(promote them there before starting the VM)")

    async def _live_migrate(self, task: Task, vm: VmConfig, target: str,
                            replicated: list[str], bwlimit_kib: int | None) -> None:
        from binome.guest.remote import NodeSession

        # the resume at the switch-over goes over a connection opened beforehand: a TCP
        # and TLS handshake there would be on the guest's downtime (issue 16)
        async with NodeSession(self.ctx.cluster, target) as session:
            await self._live_migrate_with(task, vm, target, replicated, bwlimit_kib, session)

    async def _live_migrate_with(self, task: Task, vm: VmConfig, target: str,
                                 replicated: list[str], bwlimit_kib: int | None,
                                 session: NodeSession) -> None:
        from binome.guest.remote import node_call

        vmid = vm.vmid
        path = f"/nodes/{target}/qemu/{vmid}/migrate/incoming"

        async def target_abort() -> None:
            try:
                await node_call(self.ctx.cluster, target, "POST", path,
                                {"phase": "abort", "source": self.ctx.node})
            except BinomeError as exc:
                task.warn(f"cleanup on {target} failed: {exc}")

        task.log(f"starting VM {vmid} on remote node '{target}'")
        try:
            prep = await node_call(self.ctx.cluster, target, "POST", path,
                                   {"phase": "prepare", "source": self.ctx.node}, timeout=90)
        except BaseException:
            await asyncio.shield(target_abort())
            raise
        uri = str(prep["uri"])
        for name in prep.get("promoted") or []:
            task.log(f"volume {name}: Primary on {target} too (dual-primary)")
        task.log(f"migration listens on {uri}")
        task.log(f"starting online/live migration on {uri}")
        defaults = runtime_defaults()
        # PVE's VM options: migrate_speed (MB/s, 0 = no limit) when no bwlimit is asked,
        # migrate_downtime (seconds, default 0.1) the stop-and-copy QEMU may take
        speed_mb = int(vm.config.get("migrate_speed") or 0)
        bandwidth = (bwlimit_kib * 1024 if bwlimit_kib else
                     speed_mb << 20 if speed_mb else defaults["max_bandwidth"])
        downtime_ms = defaults["downtime_ms"]
        if vm.config.get("migrate_downtime") is not None:
            downtime_ms = max(1, round(float(vm.config["migrate_downtime"]) * 1000))
        task.log(f"set migration capabilities: auto-converge, events; downtime limit "
                 f"{downtime_ms} ms, bandwidth limit {bandwidth // 1024} KiB/s")
        last = [0.0]
        await session.warm()
        warmed = [time.monotonic()]
        keep_warm: set[asyncio.Task[None]] = set()

        def progress(info: dict[str, Any]) -> None:
            now = time.monotonic()
            if now - warmed[0] > SESSION_REWARM:    # keep the switch-over's connection open
                warmed[0] = now
                t = asyncio.get_running_loop().create_task(session.warm())
                keep_warm.add(t)
                t.add_done_callback(keep_warm.discard)
            if now - last[0] < 1.0:
                return
            last[0] = now
            ram = info.get("ram") or {}
            task.log(f"migration status: {info.get('status')} (transferred "
                     f"{ram.get('transferred', 0)}, remaining {ram.get('remaining', 0)}), "
                     f"total {ram.get('total', 0)})")

        try:
            info = await self.ctx.runtime.migrate_out(vmid, uri, on_progress=progress,
                                                  downtime_ms=downtime_ms,
                                                  max_bandwidth=bandwidth)
        except BaseException:
            # migrate_out has cancelled the migration: the source runs on
            await asyncio.shield(target_abort())
            raise
        completed_at = time.monotonic()
        ram = info.get("ram") or {}
        mbps = float(ram.get("mbps") or 0.0)
        qemu_downtime = int(info.get("downtime") or 0)
        task.log(f"migration status: completed (transferred {ram.get('transferred', 0)}, "
                 f"total {ram.get('total', 0)}, {mbps / 8:.1f} MB/s)")
        # switch-over: the source is paused (postmigrate), the target paused (-S)
        try:
            await self.ctx.configs.move(vm, target, release_lock="migrate")
        except BaseException as exc:
            try:
                now_owner: str | None = await self.ctx.configs.owner(vmid)
            except Exception:
                now_owner = None
            if now_owner == self.ctx.node:
                task.log(f"switch-over failed ({exc}); resuming VM {vmid} here")
                await asyncio.shield(self.ctx.runtime.resume(vmid))
                with contextlib.suppress(Exception):   # traffic back from the target
                    await asyncio.shield(self.ctx.runtime.announce_self(vmid))
                await asyncio.shield(target_abort())
                raise
            if now_owner is None:
                # resuming either side could make two running copies: leave both paused
                task.log(f"switch-over failed ({exc}) and the owner of VM {vmid} cannot be "
                         f"read: VM left paused on {self.ctx.node} and {target}")
                raise
            if now_owner != target or isinstance(exc, asyncio.CancelledError):
                raise
            task.log(f"switch-over reported an error ({exc}) but VM {vmid} belongs to "
                     f"{target} now: going on")
        moved_ms = int((time.monotonic() - completed_at) * 1000)
        task.log(f"VM {vmid}: config moved to node '{target}'")
        self.ctx.believed_running.discard(vmid)
        # the target resumes before the source quits: the source stays paused
        # (postmigrate) and never runs again (a restarted daemon stops a paused copy of
        # a VM owned elsewhere), so quitting it is no longer on the guest's downtime
        resumed_err: BaseException | None = None
        target_steps = ""
        for attempt in range(3):
            try:
                answer = await session.call("POST", path,
                                            {"phase": "resume", "source": self.ctx.node})
                resumed_err = None
                timings = answer.get("timings") if isinstance(answer, dict) else None
                if isinstance(timings, dict):
                    target_steps = " (on the target: " + ", ".join(
                        f"{k} {v} ms" for k, v in timings.items()) + ")"
                break
            except BinomeError as exc:
                resumed_err = exc
                task.warn(f"resume on {target} failed (attempt {attempt + 1}): {exc}")
                await asyncio.sleep(1.0)
        switch_ms = int((time.monotonic() - completed_at) * 1000)
        await self.ctx.runtime.stop(vmid, requested="migrated")
        if resumed_err is not None:
            raise GuestFailure(f"VM {vmid} was handed over to {target} but could not be "
                               f"resumed there: {resumed_err}")
        task.log(f"VM {vmid} resumed on node '{target}'")
        task.log(f"migration downtime: {qemu_downtime} ms (QEMU stop-and-copy) + "
                 f"{switch_ms} ms (switch-over: config move {moved_ms} ms, target resume "
                 f"{switch_ms - moved_ms} ms{target_steps})")
        await self.ctx.deactivate_after(task, replicated)


class MigrationTarget:
    def __init__(self, ctx: GuestContext, lifecycle: Lifecycle) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle

    async def incoming_prepare(self, vmid: int, source: str) -> dict[str, Any]:
        """Start a paused QEMU waiting for the state of VM `vmid` from `source`."""
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid, node=source)
            if vm.config.get("lock") != "migrate":
                raise GuestFailure(f"VM {vmid} is not being migrated from {source}")
            if self.ctx.runtime.is_running(vmid):
                raise GuestFailure(f"VM {vmid} already running on {self.ctx.node}")
            _local, replicated = await self.ctx.disk_kinds(vm)
            promoted = await self.ctx.activate_here(replicated)
            try:
                spec = await self.lifecycle.launch_spec(vm)
                await self.ctx.runtime.start(spec, incoming=True)
                uri = await self.ctx.runtime.listen_incoming(
                    vmid, self.ctx.cluster.config.cluster_address)
            except BaseException:
                await asyncio.shield(self._drop_incoming(vmid, promoted))
                raise
            self.ctx.incoming[vmid] = {"source": source, "promoted": promoted,
                                       "since": time.time()}
            log.info("VM %s: incoming migration from %s on %s", vmid, source, uri)
            return {"uri": uri, "promoted": [volume_name(v) for v in promoted]}

    async def _drop_incoming(self, vmid: int, promoted: list[str]) -> None:
        if self.ctx.runtime.is_running(vmid):
            with contextlib.suppress(Exception):
                await self.ctx.runtime.stop(vmid, timeout=5.0)
        await self.ctx.deactivate_after(None, promoted, timeout=10.0)

    async def incoming_resume(self, vmid: int, source: str) -> dict[str, Any]:
        """After the switch-over: the config is here now; run the received guest."""
        async with self.ctx.lock(vmid):
            if vmid not in self.ctx.incoming and self.ctx.runtime.is_running(vmid):
                # adopted after a restart of this daemon: maybe already resumed by it
                runstate, _migration, _incoming = await self.ctx.runtime.migration_state(vmid)
                if runstate == "running":
                    await self.ctx.read(vmid)
                    return {"status": "running"}
            # each step's time goes back to the source's task log: where a switch-over's
            # milliseconds go (issue 16's migration gap)
            marks = [time.monotonic()]
            await self.ctx.runtime.wait_incoming(vmid)
            marks.append(time.monotonic())
            await self.ctx.read(vmid)          # quorum read: the config must be ours now
            marks.append(time.monotonic())
            await self.ctx.runtime.resume(vmid)
            marks.append(time.monotonic())
            self.ctx.believed_running.add(vmid)
            self.ctx.incoming.pop(vmid, None)
            try:
                await self.ctx.runtime.announce(vmid)
            except GuestError as exc:
                log.warning("VM %s: announce after migration failed: %s", vmid, exc)
            log.info("VM %s: migrated here from %s and resumed", vmid, source)
            steps = ("incoming complete", "config read", "cont")
            return {"status": "running",
                    "timings": {name: round((b - a) * 1000) for name, (a, b)
                                in zip(steps, itertools.pairwise(marks), strict=True)}}

    async def incoming_abort(self, vmid: int, source: str) -> dict[str, Any]:
        """Remove what `incoming_prepare` made, unless the guest is ours by now."""
        async with self.ctx.lock(vmid):
            if await self.ctx.configs.owner(vmid) == self.ctx.node:
                raise GuestFailure(f"VM {vmid} belongs to {self.ctx.node} now; not aborting")
            info = self.ctx.incoming.pop(vmid, None) or {}
            promoted = list(info.get("promoted") or [])
            if not info:
                # daemon restarted meanwhile: every volume of the VM Primary here goes back
                with contextlib.suppress(Exception):
                    promoted = await self.ctx.active_here(
                        await self.ctx.read(vmid, node=source))
            await self._drop_incoming(vmid, promoted)
            return {"status": "stopped"}

    async def incoming_promote(self, vmid: int) -> dict[str, Any]:
        """After an offline migration: the VM's replicated volumes Primary here."""
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            _local, replicated = await self.ctx.disk_kinds(vm)
            return {"promoted": [volume_name(v) for v in
                                 await self.ctx.activate_here(replicated)]}


def runtime_defaults() -> dict[str, Any]:
    from binome.guest import runtime

    return {"downtime_ms": runtime.MIGRATE_DOWNTIME_MS,
            "max_bandwidth": runtime.MIGRATE_MAX_BANDWIDTH}


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
