"""`GuestService`: the guests of one node, as the API and the HA manager call them.

A facade over the parts, each in its own module, sharing one `GuestContext`:
the config repository (`configs`), the lifecycle (`lifecycle`), snapshots
(`snapshots`), disk moves (`disk_moves`), the guest agent (`guest_agent`),
migration as source and target (`migration`), the settling of
migrations a binomed restart interrupted (`settling`) and the status loop
(`status`). The QEMU processes
belong to the runtime and outlive the daemon: `start` re-adopts them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from binome.guest import spice
from binome.guest.backups import Backups, VzdumpOptions
from binome.guest.configs import VmConfig, conf_missing
from binome.guest.context import GuestContext
from binome.guest.disk_move import DiskMoves
from binome.guest.errors import GuestError, GuestFailure
from binome.guest.guest_agent import GuestAgent
from binome.guest.lifecycle import Lifecycle
from binome.guest.migration import MigrationSource, MigrationTarget
from binome.guest.settling import MigrationSettler
from binome.guest.snapshots import Snapshots
from binome.guest.status import GuestStatus
from binome.guest.volume_copy import StorageMap, VolumeImports
from binome.loops import stop_tasks

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService
    from binome.guest.runtime import QemuRuntime
    from binome.guest.spec import LaunchSpec
    from binome.storage.manager import StorageManager
    from binome.tasks.clusterlog import ClusterLog
    from binome.tasks.manager import Task

__all__ = ["GuestFailure", "GuestService", "VmConfig", "VzdumpOptions", "conf_missing"]

log = logging.getLogger("binome.guest")


class GuestService:
    def __init__(self, node: str, cluster: ClusterService, storages: StorageManager,
                 runtime: QemuRuntime, clusterlog: ClusterLog) -> None:
        self.ctx = ctx = GuestContext(node, cluster, storages, runtime, clusterlog)
        self.configs = ctx.configs
        self.lifecycle = Lifecycle(ctx)
        self.migration = MigrationSource(ctx)
        self.imports = VolumeImports(ctx)
        self.incoming = MigrationTarget(ctx, self.lifecycle, self.imports)
        self.settler = MigrationSettler(ctx)
        self.snapshots = Snapshots(ctx, self.lifecycle)
        self.disk_moves = DiskMoves(ctx, self.lifecycle)
        self.agent = GuestAgent(ctx)
        self.backups = Backups(ctx, self.lifecycle, self.agent)
        self.status = GuestStatus(ctx, self.lifecycle, self.settler)
        runtime.on_exit = self.status.on_guest_exit
        self._loops: list[asyncio.Task] = []

    @property
    def node(self) -> str:
        return self.ctx.node

    @property
    def cluster(self) -> ClusterService:
        return self.ctx.cluster

    @property
    def storages(self) -> StorageManager:
        return self.ctx.storages

    @property
    def runtime(self) -> QemuRuntime:
        return self.ctx.runtime

    @property
    def last_status(self) -> dict[int, dict[str, Any]]:
        return self.status.last_status

    def lock(self, vmid: int) -> asyncio.Lock:
        return self.ctx.lock(vmid)

    # ------------------------------------------------------------ the service's life
    async def start(self) -> None:
        runtime = self.ctx.runtime
        # guests found dead at adoption were running when the daemon went away
        self.ctx.believed_running = {vm.vmid for vm in await self.status.safe_list()}
        adopted = await runtime.adopt()
        self.ctx.believed_running = set(adopted)
        if adopted:
            log.info("re-adopted running guests: %s", ", ".join(map(str, adopted)))
        self._loops = [
            asyncio.create_task(self.status.watch_loop(), name="guest-watch"),
            asyncio.create_task(self.status.onboot_after_host_boot(), name="onboot"),
            asyncio.create_task(self.settler.settle_at_start(), name="settle-migrations"),
            # decide KVM vs TCG now (the probe boots a guest for a few seconds), not on
            # the first start, which may be an HA recovery where seconds count
            asyncio.create_task(runtime.accel(), name="accel-probe"),
        ]

    async def stop(self) -> None:
        await stop_tasks(self._loops)
        self._loops = []
        await self.ctx.runtime.close()

    # ------------------------------------------------------------ configs
    async def read(self, vmid: int, node: str | None = None, *, fresh: bool = True
                   ) -> VmConfig:
        """The VM's config. `fresh` (a quorum read) is required before starting a guest or
        changing its config: a node cut off from the cluster may hold a stale copy of a
        config that was moved away by a recovery. Stop, status and console use this node's
        own copy (`fresh=False`) so they keep working without quorum."""
        return await self.configs.read(vmid, node, fresh=fresh)

    async def monitor(self, vmid: int, command: str) -> str:
        """A human monitor command line for the guest (its permission checked by the
        caller: `binome.guest.monitor`); its output, or PVE's `ERROR: ...` text when the
        guest does not run or QEMU refuses (an answer, not a failure, as PVE's)."""
        await self.read(vmid, self.ctx.node, fresh=False)   # PVE: the VM exists here
        try:
            return await self.ctx.runtime.monitor_command(vmid, command)
        except GuestError as exc:
            return f"ERROR: {exc}\n"

    async def list_configs(self, node: str | None = None) -> list[VmConfig]:
        return await self.configs.list(node)

    async def owner(self, vmid: int) -> str | None:
        return await self.configs.owner(vmid)

    def set_incoming_guard(self, guard: Callable[[int], Awaitable[None]]) -> None:
        """`guard(vmid)` runs before an incoming live migration starts QEMU here and
        raises GuestFailure to refuse it (the HA agent's: its watchdog armed first)."""
        self.ctx.incoming_guard = guard

    def operating_here(self, vmid: int) -> bool:
        """An operation on guest `vmid` runs on this node now (it holds the guest's
        lock: an incoming migration between promoting its copies and starting QEMU, a
        clone, a move ...), or a live migration into this node is under way."""
        return self.ctx.locked(vmid) or vmid in self.ctx.incoming

    async def next_free_vmid(self, start: int = 100) -> int:
        return await self.configs.next_free_vmid(start)

    async def send_key(self, vmid: int, key: str) -> None:
        """`qm sendkey`: the VM must run here."""
        async with self.ctx.lock(vmid):
            await self.ctx.read(vmid)
            if not self.ctx.runtime.is_running(vmid):
                raise GuestFailure(f"VM {vmid} not running")
            try:
                await self.ctx.runtime.send_key(vmid, key)
            except GuestError as exc:
                raise GuestFailure(str(exc)) from None

    async def spice_config(self, vmid: int, proxy: str, key: bytes) -> dict[str, Any]:
        """PVE's `spiceproxy`: the remote-viewer config of a guest running here with a
        SPICE display, its one-time password set on QEMU (`binome.guest.spice`)."""
        vm = await self.ctx.read(vmid, self.ctx.node, fresh=False)
        if not self.ctx.runtime.is_running(vmid):
            raise GuestFailure(f"VM {vmid} not running")
        title = f"VM {vmid}" + (f" - {vm.config['name']}" if vm.config.get("name") else "")
        pki = self.ctx.cluster.paths
        try:
            return await spice.remote_viewer_config(
                self.ctx.runtime, vmid=vmid, node=self.ctx.node, title=title, proxy=proxy,
                cert_file=pki.node_cert, ca_file=pki.ca_cert, key=key)
        except GuestError as exc:
            raise GuestFailure(str(exc)) from None

    async def resize_disk(self, task: Task, vmid: int, key: str, new_size: int) -> None:
        await self.lifecycle.resize_disk(task, vmid, key, new_size)

    async def update(self, vmid: int, changes: dict[str, Any], delete: list[str],
                     digest: str | None, *, task: Task | None = None,
                     force: bool = False, revert: list[str] | None = None) -> VmConfig:
        """Apply config changes (see `Lifecycle.update`: pending and hot-plug on a
        running VM); `digest` (if given) must match the current config."""
        return await self.lifecycle.update(vmid, changes, delete, digest, task=task,
                                           force=force, revert=revert or [])

    # ------------------------------------------------------------ lifecycle
    async def create(self, task: Task, vmid: int, settings: dict[str, Any],
                     start: bool = False) -> None:
        await self.lifecycle.create(task, vmid, settings, start)

    async def destroy(self, task: Task, vmid: int, purge: bool = False,
                      skiplock: bool = False, destroy_unreferenced: bool = False) -> None:
        await self.lifecycle.destroy(task, vmid, purge, skiplock, destroy_unreferenced)

    async def launch_spec(self, vm: VmConfig) -> LaunchSpec:
        return await self.lifecycle.launch_spec(vm)

    async def check_startable(self, vmid: int) -> VmConfig:
        return await self.lifecycle.check_startable(vmid)

    async def update_cloudinit(self, vmid: int) -> bool:
        return await self.lifecycle.update_cloudinit(vmid)

    async def start_vm(self, task: Task, vmid: int) -> None:
        await self.lifecycle.start_vm(task, vmid)

    def require_running(self, vmid: int) -> None:
        self.lifecycle.require_running(vmid)

    async def shutdown_vm(self, task: Task, vmid: int, timeout: float, force_stop: bool) -> None:
        await self.lifecycle.shutdown_vm(task, vmid, timeout, force_stop)

    async def stop_vm(self, task: Task, vmid: int, timeout: float = 10.0) -> None:
        await self.lifecycle.stop_vm(task, vmid, timeout)

    async def reboot_vm(self, task: Task, vmid: int, timeout: float) -> None:
        await self.lifecycle.reboot_vm(task, vmid, timeout)

    async def reset_vm(self, task: Task, vmid: int) -> None:
        await self.lifecycle.reset_vm(task, vmid)

    async def suspend_vm(self, task: Task, vmid: int) -> None:
        await self.lifecycle.suspend_vm(task, vmid)

    async def resume_vm(self, task: Task, vmid: int) -> None:
        await self.lifecycle.resume_vm(task, vmid)

    async def clone(self, task: Task, vmid: int, newid: int, name: str | None,
                    target: str | None, storage: str | None = None,
                    bwlimit_kib: int | None = None, fmt: str | None = None,
                    snapname: str | None = None, full: bool | None = None) -> None:
        await self.lifecycle.clone(task, vmid, newid, name, target, storage, bwlimit_kib,
                                   fmt, snapname, full)

    async def clone_is_linked(self, vm: VmConfig, full: bool | None, *,
                              snapname: str | None = None, target: str | None = None
                              ) -> bool:
        return await self.lifecycle.clone_is_linked(vm, full, snapname=snapname,
                                                    target=target)

    async def selected(self, vmids: list[int] | None, exclude: list[int]) -> list[int]:
        return await self.backups.selected(vmids, exclude)

    async def backup_job(self, task: Task, vmids: list[int], options: VzdumpOptions) -> None:
        await self.backups.run_job(task, vmids, options)

    async def restore(self, task: Task, vmid: int, archive: str, *, storage: str | None,
                      unique: bool, force: bool, live: bool = False,
                      bwlimit_kib: int | None = None) -> None:
        await self.backups.restore(task, vmid, archive, storage_id=storage, unique=unique,
                                   force=force, live=live, bwlimit_kib=bwlimit_kib)

    async def make_template(self, task: Task, vmid: int, disk: str | None = None) -> None:
        await self.lifecycle.make_template(task, vmid, disk)

    # ------------------------------------------------------------ status
    async def current_status(self, vmid: int) -> dict[str, Any]:
        return await self.status.current_status(vmid)

    def _status_entry(self, vm: VmConfig, st: Any) -> dict[str, Any]:
        # (kept for api/methods/qemu.py, which lists statuses itself)
        return self.status.status_entry(vm, st)

    async def cluster_vms(self) -> list[dict[str, Any]]:
        """Every VM of the cluster with its status, for /cluster/resources."""
        return await self.status.cluster_vms()

    # ------------------------------------------------------------ migration
    async def migrate_preconditions(self, vmid: int, target: str | None = None
                                    ) -> dict[str, Any]:
        return await self.migration.migrate_preconditions(vmid, target)

    async def check_migratable(self, vmid: int, target: str, *, online: bool,
                               with_local_disks: bool = False,
                               storage_map: StorageMap | None = None) -> VmConfig:
        return await self.migration.check_migratable(vmid, target, online=online,
                                                     with_local_disks=with_local_disks,
                                                     storage_map=storage_map)

    async def migrate_vm(self, task: Task, vmid: int, target: str, *, online: bool,
                         with_local_disks: bool = False, bwlimit_kib: int | None = None,
                         storage_map: StorageMap | None = None) -> None:
        await self.migration.migrate_vm(task, vmid, target, online=online,
                                        with_local_disks=with_local_disks,
                                        bwlimit_kib=bwlimit_kib, storage_map=storage_map)

    async def import_volume(self, phase: str, vmid: int, source: str, *,
                            storage: str | None = None, size: int | None = None,
                            fmt: str | None = None, volumes: list[str] | None = None,
                            name: str | None = None) -> dict[str, Any]:
        """The target's side of a volume copy (`volume_copy`): start, finish, abort,
        allocate."""
        return await self.incoming.import_volume(phase, vmid, source, storage=storage,
                                                 size=size, fmt=fmt, volumes=volumes,
                                                 name=name)

    async def incoming_prepare(self, vmid: int, source: str,
                               volids: dict[str, str] | None = None) -> dict[str, Any]:
        return await self.incoming.incoming_prepare(vmid, source, volids)

    async def incoming_resume(self, vmid: int, source: str) -> dict[str, Any]:
        return await self.incoming.incoming_resume(vmid, source)

    async def incoming_abort(self, vmid: int, source: str) -> dict[str, Any]:
        return await self.incoming.incoming_abort(vmid, source)

    async def incoming_promote(self, vmid: int) -> dict[str, Any]:
        return await self.incoming.incoming_promote(vmid)
