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
import dataclasses
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.guest import cloudinit
from binome.guest import config as vmconf
from binome.guest.configs import VmConfig, rename_volumes
from binome.guest.context import volume_name
from binome.guest.errors import GuestError, GuestFailure
from binome.guest.volume_copy import (
    StorageMap,
    VolumeImports,
    abort_copies,
    map_storage,
    send_volumes,
)
from binome.storage.base import StorageError

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
                               with_local_disks: bool = False,
                               storage_map: StorageMap | None = None) -> VmConfig:
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
        running = self.ctx.runtime.is_running(vmid)
        local, replicated = await self.ctx.disk_kinds(vm)
        if local and running:
            disks = ", ".join(f"{d['drivename']} ({d['volid']})" for d in local)
            if not with_local_disks:
                raise GuestFailure(f"can't live migrate attached local disks without "
                                   f"with-local-disks option: {disks}")
            special = [d for d in local if d["drivename"] in ("efidisk0", "tpmstate0")]
            if special:
                raise GuestFailure(f"live migration of local {special[0]['drivename']} "
                                   f"({special[0]['volid']}) is not supported: shut the VM "
                                   f"down and migrate it offline")
        for volid in [str(d["volid"]) for d in local]:
            # PVE's: a template's base image that linked clones read stays (a linked
            # clone itself is copied whole: the copy reads through its base)
            with contextlib.suppress(StorageError):
                if await (await self.ctx.storages.for_volid(volid)).base_users(volid):
                    raise GuestFailure(f"can't migrate local disk '{volid}': referenced by "
                                       f"linked clone(s)")
        await self.local_copy_plan(vm, target, storage_map)
        for volid in replicated:
            why = await self.ctx.storages.migration_blocker(volid, target, live=running)
            if why:
                raise GuestFailure(f"can't migrate VM {vmid} to {target}: {why}")
        return vm

    async def local_copy_plan(self, vm: VmConfig, target: str,
                              storage_map: StorageMap | None) -> list[tuple[str, str]]:
        """(volid, target storage) of each local volume an offline migration copies to
        `target` (disks, EFI and TPM state, cloud-init drive, `unusedN`), with PVE's
        refusals: a storage the target lacks, snapshots of a copied disk."""
        local, _replicated = await self.ctx.disk_kinds(vm)
        volids = [str(d["volid"]) for d in local]
        for key, value in sorted(vm.config.items()):
            volid = str(value).split(",")[0]
            if not (vmconf.is_unused_key(key) or (
                    vmconf.is_drive_key(key) and cloudinit.is_cloudinit_volid(volid))):
                continue
            try:
                storage = await self.ctx.storages.for_volid(volid)
            except StorageError as exc:
                raise GuestFailure(f"{key}: {exc}") from None
            if not storage.per_node_activation and not storage.config.shared \
                    and volid not in volids:
                volids.append(volid)
        plan: list[tuple[str, str]] = []
        for volid in volids:
            sid = volid.partition(":")[0]
            target_sid = map_storage(storage_map, sid)
            try:      # its definition: it may exist on the target only
                scfg = await self.ctx.storages.config(target_sid)
            except StorageError:
                raise GuestFailure(f"storage '{target_sid}' does not exist") from None
            if scfg.disable or not scfg.available_on(target):
                raise GuestFailure(f"storage '{target_sid}' is not available on node "
                                   f"'{target}'")
            if "images" not in scfg.content:
                raise GuestFailure(f"storage '{target_sid}' does not support vm images")
            plan.append((volid, target_sid))
        if plan and vm.snapshots:
            raise GuestFailure(f"can't migrate local disks of VM {vm.vmid} with snapshots "
                               f"({', '.join(sorted(vm.snapshots))}): the copy would lose "
                               f"them; delete the snapshots first")
        return plan

    async def migrate_vm(self, task: Task, vmid: int, target: str, *, online: bool,
                         with_local_disks: bool = False, bwlimit_kib: int | None = None,
                         storage_map: StorageMap | None = None) -> None:
        """Move VM `vmid` to `target`: a config move if stopped, a live migration if
        running (needs `online`). Runs on the source node, as task `qmigrate`.
        `bwlimit_kib`: migration bandwidth limit in KiB/s (None: the runtime's)."""
        started = time.monotonic()
        address = (self.ctx.cluster.node_address(target) or ("?", 0))[0]
        async with self.ctx.lock(vmid):
            vm = await self.check_migratable(vmid, target, online=online,
                                             with_local_disks=with_local_disks,
                                             storage_map=storage_map)
            copies = await self.local_copy_plan(vm, target, storage_map)
            _local, replicated = await self.ctx.disk_kinds(vm)
            running = self.ctx.runtime.is_running(vmid)
            task.log(f"starting migration of VM {vmid} to node '{target}' ({address})")
            if online and not running:
                task.log("VM isn't running. Doing offline migration instead.")
            vm = await self.ctx.configs.set_lock(vm, "migrate")
            try:
                if running:
                    await self._live_migrate(task, vm, target, replicated, bwlimit_kib,
                                             copies)
                else:
                    await self._offline_migrate(task, vm, target, replicated, copies,
                                                bwlimit_kib)
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
                               replicated: list[str], copies: list[tuple[str, str]],
                               bwlimit_kib: int | None) -> None:
        from binome.guest.configs import MoveOutcomeUnknown
        from binome.guest.remote import node_call

        # local disks are copied first (the source stays whole until the config moves)
        volids: dict[str, str] = {}
        if copies:
            task.log(f"copying {len(copies)} local volume(s) to node '{target}'")
            volids = await send_volumes(self.ctx, task, target, vm.vmid, copies,
                                        bwlimit_kib=bwlimit_kib)
        try:
            # a stopped guest's volumes are Primary here; the target's copy is UpToDate
            await self.ctx.deactivate_after(task, replicated, timeout=5.0)
            await self.ctx.configs.move(vm, target, release_lock="migrate", volids=volids)
        except MoveOutcomeUnknown:
            if volids:
                task.warn(f"the copies on {target} are kept ({', '.join(volids.values())}): "
                          f"whether the config moved is unknown")
            raise
        except BaseException:
            await asyncio.shield(abort_copies(self.ctx, task, target, vm.vmid,
                                              list(volids.values())))
            with contextlib.suppress(Exception):     # promote back what was demoted
                await self.ctx.activate_here(replicated)
            raise
        task.log(f"VM {vm.vmid}: config moved to node '{target}'")
        await self._free_moved(task, volids)
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
                            replicated: list[str], bwlimit_kib: int | None,
                            copies: list[tuple[str, str]] | None = None) -> None:
        from binome.guest.remote import NodeSession

        # the resume at the switch-over goes over a connection opened beforehand: a TCP
        # and TLS handshake there would be on the guest's downtime (issue 16)
        async with NodeSession(self.ctx.cluster, target) as session:
            await self._live_migrate_with(task, vm, target, replicated, bwlimit_kib, session,
                                          copies or [])

    async def _live_migrate_with(self, task: Task, vm: VmConfig, target: str,
                                 replicated: list[str], bwlimit_kib: int | None,
                                 session: NodeSession, copies: list[tuple[str, str]]
                                 ) -> None:
        from binome.guest.remote import node_call

        vmid = vm.vmid
        path = f"/nodes/{target}/qemu/{vmid}/migrate/incoming"
        volids: dict[str, str] = {}      # local volumes: here -> their copy on the target
        mirrored: dict[str, str] = {}    # drive key -> its volume here, mirrored live

        async def target_abort() -> None:
            try:
                await node_call(self.ctx.cluster, target, "POST", path,
                                {"phase": "abort", "source": self.ctx.node})
            except BinomeError as exc:
                task.warn(f"cleanup on {target} failed: {exc}")
            if volids:      # the target's copies, if its abort could not free them
                await abort_copies(self.ctx, task, target, vmid, list(volids.values()))

        task.log(f"starting VM {vmid} on remote node '{target}'")
        try:
            if copies:
                volids, mirrored = await self._target_volumes(task, vm, target, copies,
                                                              bwlimit_kib)
            params = {"phase": "prepare", "source": self.ctx.node}
            if volids:
                params["volumes"] = ",".join(f"{a}={b}" for a, b in volids.items())
            prep = await node_call(self.ctx.cluster, target, "POST", path, params,
                                   timeout=90)
        except BaseException:
            await asyncio.shield(target_abort())
            raise
        jobs: list[Any] = []
        if mirrored:
            try:
                jobs = await self._mirror_to(task, vm, dict(prep.get("drives") or {}),
                                             mirrored, bwlimit_kib)
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
            await asyncio.shield(self._cancel_mirrors(task, vmid, jobs))
            await asyncio.shield(target_abort())
            raise
        completed_at = time.monotonic()
        if jobs:
            # the source is paused (postmigrate): each mirror ends after its last
            # synchronization, the target's disks now hold every write
            try:
                for job in jobs:
                    await self.ctx.runtime.mirror_release(vmid, job)
                task.log(f"mirror jobs of {', '.join(j.key for j in jobs)} finished: the "
                         f"disks on {target} are complete")
            except BaseException as exc:
                task.log(f"mirror jobs could not finish ({exc}); resuming VM {vmid} here")
                await asyncio.shield(self._cancel_mirrors(task, vmid, jobs))
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.ctx.runtime.resume(vmid))
                await asyncio.shield(target_abort())
                raise
        ram = info.get("ram") or {}
        mbps = float(ram.get("mbps") or 0.0)
        qemu_downtime = int(info.get("downtime") or 0)
        task.log(f"migration status: completed (transferred {ram.get('transferred', 0)}, "
                 f"total {ram.get('total', 0)}, {mbps / 8:.1f} MB/s)")
        # switch-over: the source is paused (postmigrate), the target paused (-S)
        try:
            await self.ctx.configs.move(vm, target, release_lock="migrate", volids=volids)
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
        await self._free_moved(task, volids)

    async def _free_moved(self, task: Task, volids: dict[str, str]) -> None:
        """The source's copies of the volumes the target now holds go, as PVE's
        migration deletes them (a failure is a warning: the guest is there)."""
        for old in volids:
            try:
                await (await self.ctx.storages.for_volid(old)).free(old)
                task.log(f"{volume_name(old)}: removed on {self.ctx.node}")
            except (StorageError, OSError) as exc:
                task.warn(f"could not remove {old} on {self.ctx.node}: {exc}")

    async def _target_volumes(self, task: Task, vm: VmConfig, target: str,
                              copies: list[tuple[str, str]], bwlimit_kib: int | None
                              ) -> tuple[dict[str, str], dict[str, str]]:
        """A live migration's local volumes on the target: the ones the guest does not
        have open (unused, cloud-init) copied now; a new empty volume for each attached
        disk, which QEMU mirrors once the target runs. ({old: new}, {key: old volid}
        of the mirrored disks); on failure every volume made there is freed."""
        from binome.guest.remote import node_call

        attached = {}
        for key, value in vm.config.items():
            if vmconf.is_disk_key(key):
                drive = vmconf.parse_drive(key, str(value))
                if drive.volid and not drive.is_cdrom:
                    attached[str(drive.volid)] = key
        volids: dict[str, str] = {}
        try:
            offline = [(v, s) for v, s in copies if v not in attached]
            if offline:
                volids.update(await send_volumes(self.ctx, task, target, vm.vmid, offline,
                                                 bwlimit_kib=bwlimit_kib))
            for volid, sid in copies:
                if volid not in attached:
                    continue
                storage = await self.ctx.storages.for_volid(volid)
                answer = await node_call(
                    self.ctx.cluster, target, "POST",
                    f"/nodes/{target}/qemu/{vm.vmid}/migrate/import",
                    {"phase": "allocate", "source": self.ctx.node, "storage": sid,
                     "size": await storage.size(volid),
                     "format": storage.volume_format(volid)})
                volids[volid] = str(answer["volid"])
                task.log(f"{attached[volid]}: {volume_name(volid)} will be mirrored to "
                         f"{answer['volid']} on {target}")
        except BaseException:
            await asyncio.shield(abort_copies(self.ctx, task, target, vm.vmid,
                                              list(volids.values())))
            raise
        return volids, {attached[v]: v for v in volids if v in attached}

    async def _mirror_to(self, task: Task, vm: VmConfig, drives: dict[str, str],
                         mirrored: dict[str, str], bwlimit_kib: int | None) -> list[Any]:
        """Mirror each attached local disk to the target QEMU's NBD export of it, until
        every job is ready (then every guest write reaches both: write-blocking mode)."""
        jobs: list[Any] = []
        try:
            for key in sorted(mirrored):
                uri = drives.get(key)
                if not uri:
                    raise GuestFailure(f"the target exports no drive {key}")
                drive = vmconf.parse_drive(key, str(vm.config[key]))
                task.log(f"drive mirror is starting for drive-{key} to {uri}")
                jobs.append(await self.ctx.runtime.mirror_start(
                    vm.vmid, key, uri, "raw", drive.options.get("cache", "none"),
                    speed=bwlimit_kib * 1024 if bwlimit_kib else None))
            for job in jobs:
                await self.ctx.runtime.mirror_wait_ready(vm.vmid, job, task.log)
            task.log("all 'mirror' jobs are ready")
        except BaseException:
            await asyncio.shield(self._cancel_mirrors(task, vm.vmid, jobs))
            raise
        return jobs

    async def _cancel_mirrors(self, task: Task, vmid: int, jobs: list[Any]) -> None:
        for job in jobs:
            try:
                await self.ctx.runtime.mirror_cancel(vmid, job)
            except Exception as exc:
                task.warn(f"drive-{job.key}: cancelling the mirror job: {exc}")


class MigrationTarget:
    def __init__(self, ctx: GuestContext, lifecycle: Lifecycle,
                 imports: VolumeImports | None = None) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle
        self.imports = imports or VolumeImports(ctx)

    async def import_volume(self, phase: str, vmid: int, source: str, *,
                            storage: str | None, size: int | None, fmt: str | None,
                            volumes: list[str] | None, name: str | None = None
                            ) -> dict[str, Any]:
        """The target's side of a volume copy for a migration or a clone from `source`
        (`volume_copy`). A copy starts only for a guest being moved here: its config on
        `source` locked `migrate`, or its placeholder here locked `clone`."""
        if phase in ("start", "allocate"):
            owner = await self.ctx.configs.owner(vmid)
            vm = await self.ctx.read(vmid, owner) if owner else None
            moving = vm is not None and (
                (owner == source and vm.config.get("lock") == "migrate")
                or (owner == self.ctx.node and vm.config.get("lock") == "clone"))
            if not moving:
                raise GuestFailure(f"VM {vmid} is not being migrated or cloned to "
                                   f"{self.ctx.node} from {source}")
            if not storage or size is None:
                raise GuestFailure("storage and size are needed to start a copy")
            try:
                if phase == "allocate":
                    return await self.imports.allocate(vmid, storage, size, fmt)
                return await self.imports.start(vmid, storage, size, fmt, name)
            except StorageError as exc:
                raise GuestFailure(str(exc)) from None
        if phase == "finish":
            if not volumes or len(volumes) != 1:
                raise GuestFailure("finish names one volume")
            return await self.imports.finish(vmid, volumes[0])
        return await self.imports.abort(vmid, volumes)

    async def incoming_prepare(self, vmid: int, source: str,
                               volids: dict[str, str] | None = None) -> dict[str, Any]:
        """Start a paused QEMU waiting for the state of VM `vmid` from `source`.
        `volids`: its local volumes' copies here (old -> new, allocated by the import
        step): QEMU opens those, and exports the disks among them over NBD for the
        source's mirror jobs (`drives` in the answer: key -> NBD URI)."""
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid, node=source)
            if vm.config.get("lock") != "migrate":
                raise GuestFailure(f"VM {vmid} is not being migrated from {source}")
            if self.ctx.runtime.is_running(vmid):
                raise GuestFailure(f"VM {vmid} already running on {self.ctx.node}")
            if self.ctx.incoming_guard is not None:
                await self.ctx.incoming_guard(vmid)
            keys: list[str] = []
            if volids:
                # the config as it will be here (its local volumes' copies: the source's
                # storage may not even exist on this node)
                vm = dataclasses.replace(vm, config=rename_volumes(vm.config, volids))
                keys = sorted(k for k, v in vm.config.items() if vmconf.is_disk_key(k)
                              and str(v).split(",")[0] in volids.values())
            _local, replicated = await self.ctx.disk_kinds(vm)
            promoted = await self.ctx.activate_here(replicated)
            drives: dict[str, str] = {}
            try:
                spec = await self.lifecycle.launch_spec(vm)
                await self.ctx.runtime.start(spec, incoming=True)
                host = self.ctx.cluster.config.cluster_address
                uri = await self.ctx.runtime.listen_incoming(vmid, host)
                if keys:
                    drives = await self._export(vmid, host, keys)
            except BaseException:
                await asyncio.shield(self._drop_incoming(vmid, promoted))
                raise
            self.ctx.incoming[vmid] = {"source": source, "promoted": promoted,
                                       "since": time.time(), "nbd": bool(drives)}
            log.info("VM %s: incoming migration from %s on %s", vmid, source, uri)
            return {"uri": uri, "promoted": [volume_name(v) for v in promoted],
                    "drives": drives}

    async def _export(self, vmid: int, host: str, keys: list[str]) -> dict[str, str]:
        from binome.guest.volume_copy import free_port

        last: Exception | None = None
        for _attempt in range(5):     # a port taken between the probe and QEMU's bind
            try:
                return await self.ctx.runtime.export_drives(vmid, host, free_port(host),
                                                            keys)
            except GuestError as exc:
                last = exc
                if "in use" not in str(exc).lower():
                    break
                with contextlib.suppress(GuestError):
                    await self.ctx.runtime.stop_exports(vmid)
        raise GuestFailure(f"could not export the disks for the migration: {last}")

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
            # the local disks' NBD exports end before the guest runs (qm nbdstop);
            # none to stop (also after a restart of this daemon) is fine
            with contextlib.suppress(GuestError):
                await self.ctx.runtime.stop_exports(vmid)
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
            await self.imports.abort(vmid)      # copies of an offline migration's disks
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
