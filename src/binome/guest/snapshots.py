"""VM snapshots (PVE's `qm snapshot|rollback|delsnapshot|listsnapshot`): the snapshot
tree in the VM config and the flows that take, roll back and delete snapshots.

The tree is PVE's: each snapshot is a ``[name]`` section of the config holding
the config as it was (without ``lock``, ``description``, ``unused*``), with
``snaptime``, its own ``description``, ``parent`` (the snapshot the current
state descended from when it was taken) and, for a snapshot with RAM,
``vmstate``; the current config's ``parent`` names the snapshot it descends
from. The sections are written through the config repository (`configs`), the
volumes' snapshots through the storage interface (`StorageManager`) or, for a
running guest whose storage lets QEMU do it (qcow2 internal snapshots), by its
QEMU (`qemu_snapshot`).

Each flow follows PVE's AbstractConfig: the config is locked (`snapshot`,
`rollback`, `snapshot-delete`) and the section marked (``snapstate``) before
any volume is touched, and unlocked after, each config step under the VM's
operation lock and compare-and-swap; the volume work runs between, without
the operation lock, so other requests see PVE's "VM is locked (snapshot)".
A failed snapshot is deleted again (what was taken of it); a failed rollback or
delete leaves the lock for the administrator (`qm unlock`, then again), as PVE.

RAM (``vmstate``) is saved by QEMU into the first disk's qcow2 image with the
disks' snapshots (QEMU's ``snapshot-save``), where PVE writes a separate state
volume; the section's ``vmstate`` names that disk's volume. A rollback to such
a snapshot starts the guest from it, whether it ran or not (PVE does too).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from binome.guest import config as vmconf
from binome.guest import qemu_snapshot
from binome.guest.configs import VmConfig
from binome.guest.errors import GuestFailure
from binome.storage.base import SNAPSHOT_UNAVAILABLE

if TYPE_CHECKING:
    from binome.guest.context import GuestContext
    from binome.guest.lifecycle import Lifecycle
    from binome.tasks.manager import Task

RESERVED_NAMES = ("current", "pending")
# what a snapshot section does not copy from the config (AbstractConfig
# __snapshot_copy_config), besides unused* volumes
NOT_COPIED = ("snapstate", "snaptime", "vmstate", "lock", "digest", "description")
STATE_TIMEOUT = 600.0     # saving or loading the RAM of a guest
STOP_TIMEOUT = 10.0


def reserved_name_error(snapname: str) -> str | None:
    """PVE's refusal of the reserved names (API2/Qemu.pm snapshot)."""
    if snapname == "current":
        return "unable to use snapshot name 'current' (reserved name)"
    if snapname.lower() == "pending":
        return "unable to use snapshot name 'pending' (reserved name)"
    return None


def copy_config(source: dict[str, Any]) -> dict[str, Any]:
    """The part of a config a snapshot section holds, or a rollback copies back."""
    return {k: v for k, v in source.items()
            if k not in NOT_COPIED and not k.startswith("unused")}


def applied_config(current: dict[str, Any], snap: dict[str, Any], snapname: str
                   ) -> dict[str, Any]:
    """The config after a rollback to `snap` (AbstractConfig __snapshot_apply_config):
    the snapshot's, keeping the current description and unused volumes; a current
    disk the snapshot does not have becomes an `unusedN` volume (QemuConfig
    __snapshot_rollback_get_unused), so no volume is forgotten."""
    new = {k: v for k, v in current.items() if k == "description" or k.startswith("unused")}
    in_snapshot = {d.volid for d in snapshot_disks(snap)}
    for disk in snapshot_disks(current):
        if disk.volid not in in_snapshot and disk.volid not in new.values():
            n = 0
            while f"unused{n}" in new:
                n += 1
            new[f"unused{n}"] = disk.volid
    new.update(copy_config(snap))
    new["parent"] = snapname
    return new


def reparented(config: dict[str, Any], gone: str, new_parent: str | None) -> dict[str, Any]:
    """`config` with its `parent` moved from the deleted snapshot `gone` to `new_parent`."""
    if config.get("parent") != gone:
        return config
    out = {k: v for k, v in config.items() if k != "parent"}
    if new_parent:
        out["parent"] = new_parent
    return out


def snapshot_disks(config: dict[str, Any]) -> list[vmconf.DiskEntry]:
    """The disks a snapshot covers: every volume but CD-ROMs and empty drives."""
    return [d for d in vmconf.disks(config) if d.volid and not d.is_cdrom]


def snapshot_list(vm: VmConfig, running: bool) -> list[dict[str, Any]]:
    """PVE's GET .../snapshot: one item per snapshot and the `current` one."""
    out: list[dict[str, Any]] = []
    for name, snap in sorted(vm.snapshots.items()):
        item: dict[str, Any] = {"name": name, "snaptime": int(snap.get("snaptime") or 0),
                                "vmstate": 1 if snap.get("vmstate") else 0,
                                "description": str(snap.get("description") or "")}
        if snap.get("parent"):
            item["parent"] = snap["parent"]
        if snap.get("snapstate"):
            item["snapstate"] = snap["snapstate"]
        out.append(item)
    current: dict[str, Any] = {"name": "current", "digest": vm.digest,
                               "running": 1 if running else 0,
                               "description": "You are here!"}
    if vm.config.get("parent"):
        current["parent"] = vm.config["parent"]
    out.append(current)
    return out


class Snapshots:
    def __init__(self, ctx: GuestContext, lifecycle: Lifecycle) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle

    def _qmp(self, vmid: int) -> qemu_snapshot.Qmp:
        async def qmp(cmd: str, args: dict[str, Any] | None, timeout: float) -> Any:
            return await self.ctx.runtime.command(vmid, cmd, args, timeout)
        return qmp

    # ------------------------------------------------------------ checks

    async def unavailable(self, config: dict[str, Any], *, state_bytes: int | None = 0
                          ) -> str | None:
        """Why the disks of `config` cannot all have snapshots (None: they can).
        `state_bytes`: the RAM a new snapshot saves into the first disk; None: no
        snapshot is being taken (a rollback): the storages check only that the
        volumes can have snapshots, not their room for one more."""
        for n, disk in enumerate(snapshot_disks(config)):
            assert disk.volid is not None
            state = state_bytes if state_bytes is None or n == 0 else 0
            reason = await self.ctx.storages.snapshot_blocker(disk.volid, state_bytes=state)
            if reason is not None:
                return f"{disk.key}: {reason}"
        return None

    async def check_create(self, vm: VmConfig, snapname: str, *, state_bytes: int = 0
                           ) -> None:
        """PVE's refusals of a new snapshot, before anything changes (GuestFailure);
        `state_bytes`: the guest's RAM, when it is saved with the snapshot."""
        if vm.config.get("template"):
            raise GuestFailure("you can't take a snapshot if it's a template")
        if vm.config.get("lock"):
            raise GuestFailure(f"VM is locked ({vm.config['lock']})")
        if snapname in vm.snapshots:
            raise GuestFailure(f"snapshot name '{snapname}' already used")
        reason = await self.unavailable(vm.config, state_bytes=state_bytes)
        if reason is not None:
            raise GuestFailure(f"{SNAPSHOT_UNAVAILABLE} ({reason})")

    @staticmethod
    def existing(vm: VmConfig, snapname: str) -> dict[str, Any]:
        snap = vm.snapshots.get(snapname)
        if snap is None:
            raise GuestFailure(f"snapshot '{snapname}' does not exist")
        return snap

    def check_rollback(self, vm: VmConfig, snapname: str) -> dict[str, Any]:
        if vm.config.get("template"):
            raise GuestFailure("you can't rollback if vm is a template")
        snap = self.existing(vm, snapname)
        if snap.get("snapstate"):
            raise GuestFailure(f"unable to rollback to incomplete snapshot (snapstate = "
                               f"{snap['snapstate']})")
        if vm.config.get("lock"):
            raise GuestFailure(f"VM is locked ({vm.config['lock']})")
        return snap

    def check_delete(self, vm: VmConfig, snapname: str) -> dict[str, Any]:
        snap = self.existing(vm, snapname)
        if vm.config.get("template"):
            raise GuestFailure("you can't delete a snapshot if vm is a template")
        if vm.config.get("lock"):
            raise GuestFailure(f"VM is locked ({vm.config['lock']})")
        return snap

    # ------------------------------------------------------------ reads and metadata

    async def listing(self, vmid: int) -> list[dict[str, Any]]:
        vm = await self.ctx.read(vmid, fresh=False)
        return snapshot_list(vm, self.ctx.runtime.is_running(vmid))

    async def config(self, vmid: int, snapname: str) -> dict[str, Any]:
        return dict(self.existing(await self.ctx.read(vmid, fresh=False), snapname))

    async def set_description(self, vmid: int, snapname: str, description: str) -> None:
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if vm.config.get("lock"):
                raise GuestFailure(f"VM is locked ({vm.config['lock']})")
            snap = dict(self.existing(vm, snapname))
            snap["description"] = description
            await self.ctx.configs.write(vm, vm.config, {**vm.snapshots, snapname: snap})

    # ------------------------------------------------------------ create

    async def create(self, task: Task, vmid: int, snapname: str, *, vmstate: bool,
                     description: str | None) -> None:
        ctx = self.ctx
        async with ctx.lock(vmid):
            vm = await ctx.read(vmid)
            running = ctx.runtime.is_running(vmid)
            memory = int(vm.config.get("memory") or vmconf.DEFAULTS["memory"])
            await self.check_create(vm, snapname,
                                    state_bytes=memory << 20 if vmstate and running else 0)
            disks = snapshot_disks(vm.config)
            snap = copy_config(vm.config)
            snap.update(snapstate="prepare", snaptime=int(time.time()))
            if description:
                snap["description"] = description
            with_state = vmstate and running and bool(disks)
            if with_state:
                snap["vmstate"] = disks[0].volid
            # a stale child naming the new snapshot as parent would make a cycle
            snapshots = {name: reparented(s, snapname, None) for name, s in vm.snapshots.items()}
            snapshots[snapname] = snap
            await ctx.configs.write(vm, {**vm.config, "lock": "snapshot"}, snapshots)
        task.log(f"snapshot '{snapname}' of VM {vmid}: {len(disks)} disk(s)"
                 f"{', with RAM' if with_state else ''}{', running' if running else ''}")
        taken: list[vmconf.DiskEntry] = []
        try:
            if running and with_state:
                await qemu_snapshot.save_with_state(
                    self._qmp(vmid), snapname, [d.key for d in disks], disks[0].key,
                    STATE_TIMEOUT)
                taken = list(disks)
                task.log("saved the RAM and the disks")
            else:
                in_qemu = [d for d in disks if running and
                           await ctx.storages.qemu_snapshots_internal(str(d.volid))]
                if in_qemu:
                    await qemu_snapshot.snapshot_disks(self._qmp(vmid), snapname,
                                                       [d.key for d in in_qemu])
                    taken += in_qemu
                for disk in disks:
                    if disk in in_qemu:
                        continue
                    await ctx.storages.snapshot(str(disk.volid), snapname)
                    taken.append(disk)
            for disk in disks:
                task.log(f"{disk.key}: snapshot of {disk.volid}")
        except BaseException as exc:
            task.warn(f"snapshot create failed: starting cleanup ({exc})")
            await self._undo_create(task, vmid, snapname, taken, running)
            raise
        async with ctx.lock(vmid):
            vm = await ctx.read(vmid)
            if vm.config.get("lock") != "snapshot":
                raise GuestFailure("missing snapshot lock")
            snap = dict(self.existing(vm, snapname))
            if snap.pop("snapstate", None) != "prepare":
                raise GuestFailure("wrong snapshot state")
            config = {k: v for k, v in vm.config.items() if k != "lock"}
            config["parent"] = snapname
            await ctx.configs.write(vm, config, {**vm.snapshots, snapname: snap})
        task.log(f"snapshot '{snapname}' created")

    async def _undo_create(self, task: Task, vmid: int, snapname: str,
                           taken: list[vmconf.DiskEntry], running: bool) -> None:
        """Drop what a failed create took, its section and the lock."""
        for disk in taken:
            try:
                await self._delete_disk_snapshot(vmid, disk, snapname, running)
            except Exception as exc:
                task.warn(f"{disk.key}: could not remove snapshot '{snapname}': {exc}")
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            snapshots = {n: s for n, s in vm.snapshots.items() if n != snapname}
            config = {k: v for k, v in vm.config.items() if k != "lock"}
            await self.ctx.configs.write(vm, config, snapshots)

    async def _delete_disk_snapshot(self, vmid: int, disk: vmconf.DiskEntry, snapname: str,
                                    running: bool) -> None:
        volid = str(disk.volid)
        if running and await self.ctx.storages.qemu_snapshots_internal(volid):
            await qemu_snapshot.delete_disk_snapshot(self._qmp(vmid), snapname, disk.key)
        else:
            await self.ctx.storages.delete_snapshot(volid, snapname)

    # ------------------------------------------------------------ rollback

    async def rollback(self, task: Task, vmid: int, snapname: str, *, start: bool) -> None:
        ctx = self.ctx
        async with ctx.lock(vmid):
            vm = await ctx.read(vmid)
            snap = self.check_rollback(vm, snapname)
            reason = await self.unavailable(snap, state_bytes=None)
            if reason is not None:
                raise GuestFailure(f"{SNAPSHOT_UNAVAILABLE} ({reason})")
            if ctx.runtime.is_running(vmid):
                task.log(f"stopping VM {vmid} for the rollback")
                ctx.believed_running.discard(vmid)
                await ctx.runtime.stop(vmid, timeout=STOP_TIMEOUT)
            if ctx.runtime.is_running(vmid):
                raise GuestFailure(f"unable to rollback vm {vmid}: vm is running")
            await ctx.configs.write(vm, {**vm.config, "lock": "rollback"})
        for disk in snapshot_disks(snap):
            await ctx.storages.rollback_snapshot(str(disk.volid), snapname)
            task.log(f"{disk.key}: {disk.volid} rolled back to '{snapname}'")
        async with ctx.lock(vmid):
            vm = await ctx.read(vmid)
            if vm.config.get("lock") != "rollback":
                raise GuestFailure("got wrong lock")
            snap = self.existing(vm, snapname)
            vm = await ctx.configs.write(vm, applied_config(vm.config, snap, snapname))
            task.log(f"VM {vmid} config rolled back to snapshot '{snapname}'")
            if snap.get("vmstate"):
                await self._start_from_state(task, vm, snap, snapname)
                return
        if start:
            await self.lifecycle.start_vm(task, vmid)

    async def _start_from_state(self, task: Task, vm: VmConfig, snap: dict[str, Any],
                                snapname: str) -> None:
        """Start the guest paused, load the snapshot's RAM and disks, let it run."""
        ctx = self.ctx
        disks = snapshot_disks(snap)
        state_disk = next((d.key for d in disks if d.volid == snap["vmstate"]), None)
        if state_disk is None:
            raise GuestFailure(f"snapshot '{snapname}': its RAM volume {snap['vmstate']} is "
                               f"not one of its disks")
        spec = dataclasses.replace(await self.lifecycle.launch_spec(vm), freeze=True)
        pid = await ctx.runtime.start(spec)
        try:
            await qemu_snapshot.load_with_state(self._qmp(vm.vmid), snapname,
                                                [d.key for d in disks], state_disk,
                                                STATE_TIMEOUT)
            if not vm.config.get("freeze"):
                await ctx.runtime.resume(vm.vmid)
        except BaseException:
            await ctx.runtime.stop(vm.vmid, timeout=STOP_TIMEOUT)
            raise
        ctx.believed_running.add(vm.vmid)
        task.log(f"VM {vm.vmid} started from the RAM of snapshot '{snapname}' (pid {pid})")

    # ------------------------------------------------------------ delete

    async def _forget_disk(self, vmid: int, snapname: str, key: str) -> None:
        """Drop disk `key` from snapshot `snapname`'s section once its volume snapshot
        is gone (the section's `vmstate` too, when it named that disk's volume)."""
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if vm.config.get("lock") != "snapshot-delete":
                raise GuestFailure("encountered invalid lock, expected 'snapshot-delete'")
            snap = dict(self.existing(vm, snapname))
            volid = vmconf.parse_disk(key, str(snap.pop(key))).volid if key in snap else None
            if volid is not None and snap.get("vmstate") == volid:
                snap.pop("vmstate")
            await self.ctx.configs.write(vm, vm.config, {**vm.snapshots, snapname: snap})

    async def delete(self, task: Task, vmid: int, snapname: str, *, force: bool) -> None:
        ctx = self.ctx
        async with ctx.lock(vmid):
            vm = await ctx.read(vmid)
            snap = dict(self.check_delete(vm, snapname))
            snap["snapstate"] = "delete"
            await ctx.configs.write(vm, {**vm.config, "lock": "snapshot-delete"},
                                    {**vm.snapshots, snapname: snap})
        running = ctx.runtime.is_running(vmid)
        attached = {d.volid for d in snapshot_disks(vm.config)}
        for disk in snapshot_disks(snap):
            try:
                # a volume no longer attached is not open in QEMU: the storage drops it
                await self._delete_disk_snapshot(vmid, disk, snapname,
                                                 running and disk.volid in attached)
                task.log(f"{disk.key}: snapshot '{snapname}' of {disk.volid} removed")
            except Exception as exc:
                if not force:
                    raise GuestFailure(f"{disk.key}: {exc}") from exc
                task.warn(f"{disk.key}: {exc}")
                continue
            if not force:
                # PVE's $remove_drive: a retry after a failure skips what is done
                await self._forget_disk(vmid, snapname, disk.key)
        async with ctx.lock(vmid):
            vm = await ctx.read(vmid)
            if vm.config.get("lock") != "snapshot-delete":
                raise GuestFailure("encountered invalid lock, expected 'snapshot-delete'")
            gone = self.existing(vm, snapname)
            new_parent = gone.get("parent")
            config = reparented({k: v for k, v in vm.config.items() if k != "lock"},
                                snapname, new_parent)
            snapshots = {n: reparented(s, snapname, new_parent)
                         for n, s in vm.snapshots.items() if n != snapname}
            await ctx.configs.write(vm, config, snapshots)
        task.log(f"snapshot '{snapname}' deleted")
