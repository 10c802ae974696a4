"""Guest lifecycle on this node: config changes, create, destroy, start, stop, clone, template.

Every operation on a VM holds its lock (`GuestContext.lock`) and reads the
config first: with quorum (`fresh`) before starting a guest or changing its
config, since a node cut off from the cluster may hold a stale copy of a
config a recovery moved away; from this node's own copy for stop, status and
console, so they keep working without quorum. A create or clone reserves the
vmid cluster-wide with a placeholder config (locked `create` / `clone`)
before it allocates disks, and removes both if it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from binome.guest import cloudinit, host_devices
from binome.guest import config as vmconf
from binome.guest import pending as pending_mod
from binome.guest.configs import VmConfig
from binome.guest.errors import GuestError, GuestFailure, HotplugProblems
from binome.guest.spec import DiskSpec, LaunchSpec, NicSpec
from binome.guest.spice import is_spice, next_spice_port
from binome.storage.base import StorageError
from binome.tasks.manager import Task, TaskFailed

if TYPE_CHECKING:
    from binome.guest.context import GuestContext

log = logging.getLogger(__name__)


# Debian's 'ovmf' package: the 4 MiB build first (what PVE's efitype=4m uses), then 2 MiB
OVMF_FIRMWARE = (("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
                 ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"))


def ovmf_firmware(node: str) -> dict[str, str]:
    for code, template in OVMF_FIRMWARE:
        if os.path.exists(code) and os.path.exists(template):
            return {"ovmf_code": code, "ovmf_vars_template": template}
    raise GuestFailure(f"bios 'ovmf' needs the OVMF firmware ({OVMF_FIRMWARE[0][0]}, Debian "
                       f"package 'ovmf'), which is not installed on node '{node}'")


# Debian's OVMF builds for an efidisk0 (PVE's OVMF.pm table, Debian's file names):
# (efitype, pre-enrolled-keys) -> (code, vars template); secure boot needs SMM
OVMF_FOR_EFIDISK = {
    ("2m", False): ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("4m", False): ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("4m", True): ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
                   "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
}


def efi_files(options: dict[str, Any], node: str) -> tuple[str, str]:
    """(OVMF code, vars template) for an efidisk0's efitype / pre-enrolled-keys (keys
    are only enrolled with 4m, as PVE); GuestFailure if the firmware is missing."""
    efitype = str(options.get("efitype") or "2m")
    keys_on = str(options.get("pre-enrolled-keys", "0")) in ("1", "True", "true")
    code, template = OVMF_FOR_EFIDISK[(efitype, keys_on and efitype == "4m")]
    for path in (code, template):
        if not os.path.exists(path):
            raise GuestFailure(f"EFI image '{path}' not found on node '{node}' (Debian "
                               f"package 'ovmf')")
    return code, template


def efi_vars_template(options: dict[str, Any], node: str) -> str:
    return efi_files(options, node)[1]


async def write_volume(storage: Any, volid: str, image: str, fmt: str) -> None:
    """Copy a raw image file into a volume through the storage's own source (a file or
    NBD export), activating a per-node volume for the copy and releasing it after."""
    activated = await storage.activate_volume(volid)
    try:
        src = storage.source(volid)
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "convert", "-q", "-n", "-f", "raw", "-O", src.format or "raw",
            image, src.source, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise GuestFailure(f"cannot write {image} to {volid}: "
                               f"{err.decode(errors='replace').strip()}")
    finally:
        if activated:
            with contextlib.suppress(Exception):
                await storage.deactivate_volume(volid)


def launch_options(node: str, config: dict[str, Any]) -> dict[str, Any]:
    options = vmconf.launch_options(config)
    if options["rng"] and not os.path.exists(options["rng"][0]):
        raise GuestFailure(f"rng0: node '{node}' has no {options['rng'][0]}")
    for _, _, _, hostnodes, _ in options["numa_nodes"]:
        for part in (hostnodes or "").split(";"):
            if not part:
                continue
            first, _, last = part.partition("-")
            for i in range(int(first), int(last or first) + 1):
                if not os.path.isdir(f"/sys/devices/system/node/node{i}"):
                    raise GuestFailure(f"host NUMA node{i} doesn't exist")   # PVE's text
    if config.get("bios") == "ovmf":
        options.update(ovmf_firmware(node))
    return options


def owned_volumes(config: dict[str, Any], snapshots: dict[str, dict[str, Any]]
                  ) -> list[tuple[str, str]]:
    """(key, volid) of every volume a VM references, once each: its disks (not
    CD-ROMs, but its cloud-init drive), its `unusedN` volumes and the disks only its
    snapshots still hold (PVE's destroy frees them all)."""
    out: dict[str, str] = {}
    for conf in (config, *snapshots.values()):
        for disk in vmconf.drive_volumes(conf):
            out.setdefault(str(disk.volid), disk.key)
        for disk in vmconf.disks(conf):   # the cloud-init drive is a CD-ROM, but the VM's
            if disk.volid and disk.is_cdrom and cloudinit.is_cloudinit_volid(disk.volid):
                out.setdefault(disk.volid, disk.key)
        for key, value in conf.items():
            if vmconf.is_unused_key(key) and value:
                out.setdefault(str(value).split(",")[0], key)
    return [(key, volid) for volid, key in out.items()]


# efidisk0 and tpmstate0 keep their volume (PVE: the TPM version cannot change; a new
# EFI vars volume is made by deleting the old one first)
SPECIAL_DRIVES_FIXED = vmconf.SPECIAL_DRIVES


def _held_by_snapshot(snapshots: dict[str, dict[str, Any]], volid: str) -> bool:
    return any(d.volid == volid for snap in snapshots.values()
               for d in vmconf.drive_volumes(snap))


def remove_key(vmid: int, config: dict[str, Any], snapshots: dict[str, dict[str, Any]],
               key: str, *, force: bool = False) -> list[str]:
    """Delete `key` from `config` as PVE's update does (pure); the volids to free.

    - `unusedN`: the volume is freed (refused while a snapshot holds it);
    - a drive (disk, efidisk0, tpmstate0): its own volume moves to the lowest free
      `unusedN`, or with `force` is freed (refused while a snapshot holds it); a CD-ROM,
      or a volume another VM owns, just leaves the config;
    - a drive or NIC leaves the boot order too.
    ValueError with PVE's text when `protection` is set or a snapshot holds the volume."""
    value = str(config[key])
    freed: list[str] = []
    if vmconf.is_unused_key(key):
        volid = value.split(",")[0]
        protected = vmconf.protection_error(config, f"can't remove unused disk '{volid}'")
        if protected:
            raise ValueError(protected)
        if vmconf.is_owned_volume(vmid, volid):
            if _held_by_snapshot(snapshots, volid):
                raise ValueError(f"unable to delete '{volid}' - volume is still in use "
                                 f"(snapshot?)")
            freed.append(volid)
    elif vmconf.is_drive_key(key):
        protected = vmconf.protection_error(config, f"can't remove drive '{key}'")
        if protected:
            raise ValueError(protected)
        drive = vmconf.parse_drive(key, value)
        if (drive.volid and cloudinit.is_cloudinit_volid(drive.volid)
                and f"vm-{vmid}-" in drive.volid):
            freed.append(drive.volid)    # PVE frees a removed cloud-init drive
        elif drive.volid and not drive.is_cdrom and vmconf.is_owned_volume(vmid, drive.volid):
            if force:
                if _held_by_snapshot(snapshots, drive.volid):
                    raise ValueError(f"unable to delete '{drive.volid}' - volume is still "
                                     f"in use (snapshot?)")
                freed.append(drive.volid)
            else:
                vmconf.add_unused_volume(config, drive.volid)
    config.pop(key)
    if vmconf.is_drive_key(key) or vmconf.is_net_key(key):
        vmconf.drop_from_boot_order(config, key)
    return freed


def detach_replaced(vmid: int, config: dict[str, Any], key: str, value: str) -> None:
    """A drive set to another volume: the old one, if the VM owns it, becomes unusedN
    (PVE's vmconfig_register_unused_drive)."""
    try:
        old = vmconf.parse_drive(key, str(config[key]))
        new = vmconf.parse_drive(key, value)
    except ValueError:
        return
    if old.volid and old.volid != new.volid and not old.is_cdrom \
            and vmconf.is_owned_volume(vmid, old.volid):
        vmconf.add_unused_volume(config, old.volid)


def apply_pending(vmid: int, config: dict[str, Any], pending: dict[str, Any],
                  snapshots: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """`config` with the `pending` changes applied, as PVE's vmconfig_apply_pending
    (pure): deletions first (a drive's own volume to `unusedN`, or freed when forced:
    the volids to free), then the values (a drive given another volume leaves the old
    one unused). ValueError with PVE's text where `remove_key` refuses."""
    new = dict(config)
    freed: list[str] = []
    for key, force in pending_mod.deletes(pending).items():
        if key in new:
            freed += remove_key(vmid, new, snapshots, key, force=force)
    for key, value in pending_mod.values(pending).items():
        if vmconf.is_drive_key(key) and key in new:
            detach_replaced(vmid, new, key, str(value))
        new[key] = value
    return new, freed


def keep_reverted_volume(vmid: int, config: dict[str, Any], key: str, value: str) -> None:
    """A reverted pending drive: its volume, if the VM owns it and nothing in `config`
    refers to it, becomes `unusedN` (it was allocated for the change: not lost)."""
    try:
        drive = vmconf.parse_drive(key, value)
    except ValueError:
        return
    if not drive.volid or drive.is_cdrom or not vmconf.is_owned_volume(vmid, drive.volid):
        return
    if any(str(v).split(",")[0] == drive.volid for k, v in config.items()
           if vmconf.is_drive_key(k) or vmconf.is_unused_key(k)):
        return
    vmconf.add_unused_volume(config, drive.volid)


def _same_volume(key: str, old: Any, new: Any) -> bool:
    if new is None:
        return False
    try:
        return vmconf.parse_drive(key, str(old)).volid == vmconf.parse_drive(key, str(new)).volid
    except ValueError:
        return False


def check_applicable(config: dict[str, Any], changes: dict[str, Any]) -> None:
    """The rules an update's result must keep (PVE dies with these texts: a 500)."""
    if "boot" in changes:
        try:
            vmconf.check_boot_devices(config)
        except vmconf.ConfigError as exc:
            raise GuestFailure(exc.errors["boot"]) from None
    if "memory" in changes or "balloon" in changes:
        too_large = vmconf.balloon_error(config)
        if too_large:
            raise GuestFailure(too_large)


def nic_spec(n: vmconf.NetEntry) -> NicSpec:
    return NicSpec(index=n.index, model=n.model, mac=n.mac, bridge=n.bridge, tag=n.tag)


class _RunningCopies:
    """A running guest's disks cloned by QEMU (PVE's clone_disk of a running VM): one
    mirror job per disk to its new volume, all left ready (write-blocking: both
    volumes get every write), then, the guest's filesystems frozen when its agent
    allows it, every job ended after its last synchronization without switching the
    drive (`mirror_release`): each new volume holds the disk as it was at that
    instant."""

    def __init__(self, ctx: GuestContext, task: Task, vmid: int) -> None:
        self.ctx, self.task, self.vmid = ctx, task, vmid
        self.jobs: list[tuple[str, Any]] = []
        self.new: list[str] = []      # the copies: given up here once complete

    async def add(self, key: str, volid: str, newid: int, storage_id: str | None,
                  fmt: str | None, bwlimit_kib: int | None, copied: list[str]) -> str:
        ctx, task = self.ctx, self.task
        source = await ctx.storages.for_volid(volid)
        target = await ctx.storages.get(storage_id or volid.partition(":")[0])
        new_format = target.resolve_format(fmt or source.volume_format(volid))
        new = await target.alloc(newid, await source.size(volid), new_format)
        copied.append(new)
        task.log(f"{key}: allocated {new} ({new_format}) for {volid}")
        self.new.append(new)
        await ctx.activate_here([new])
        dst = target.source(new)
        drive = vmconf.parse_drive(key, str((await ctx.read(self.vmid)).config.get(key, "")))
        task.log(f"drive mirror is starting for drive-{key}" + (
            f" with bandwidth limit: {bwlimit_kib} KiB/s" if bwlimit_kib else ""))
        job = await ctx.runtime.mirror_start(
            self.vmid, key, dst.source, dst.format, drive.options.get("cache", "none"),
            speed=bwlimit_kib * 1024 if bwlimit_kib else None)
        self.jobs.append((key, job))
        await ctx.runtime.mirror_wait_ready(self.vmid, job, task.log)
        return new

    async def finish(self, config: dict[str, Any]) -> None:
        """End every job at one instant, the filesystems frozen around it."""
        if not self.jobs:
            return
        from binome.guest.guest_agent import GuestAgent

        agent = GuestAgent(self.ctx)
        task = self.task
        task.log("all 'mirror' jobs are ready")
        frozen = await agent.freeze_for_backup(self.vmid, config, task.log)
        try:
            jobs, self.jobs = self.jobs, []
            for key, job in jobs:
                await self.ctx.runtime.mirror_release(self.vmid, job)
                task.log(f"drive-{key}: Completed successfully (the copy ends here).")
        finally:
            if frozen:
                await agent.thaw_after_backup(self.vmid, task.log)
            await self._deactivate()

    async def cancel(self) -> None:
        jobs, self.jobs = self.jobs, []
        for key, job in jobs:
            try:
                await self.ctx.runtime.mirror_cancel(self.vmid, job)
                self.task.log(f"drive-{key}: Cancelling block job")
            except Exception as exc:   # QEMU gone: its jobs went with it
                self.task.warn(f"drive-{key}: cancelling the mirror job: {exc}")
        await self._deactivate()

    async def _deactivate(self) -> None:
        # like a stopped guest's moved disk: the copy's own start activates it (a
        # replicated copy is Primary here since its allocation)
        new, self.new = self.new, []
        if new:
            await self.ctx.deactivate_after(None, new, timeout=10.0)


class Lifecycle:
    def __init__(self, ctx: GuestContext) -> None:
        self.ctx = ctx

    async def update(self, vmid: int, changes: dict[str, Any], delete: list[str],
                     digest: str | None, *, task: Task | None = None,
                     force: bool = False, revert: list[str] | tuple[str, ...] = ()
                     ) -> VmConfig:
        """PVE's update_vm_api: the changes go to the config's pending section (new
        disks allocated first), then a stopped VM takes them all at once and a running
        one what can be hot-plugged (`_hotplug`); the rest waits for its next start.
        Deleting `unusedN`, `tags`, `vmstate` or `lock` and setting `cipassword` never
        wait. `revert` drops keys' pending changes. Refusals (digest, lock, protection,
        a snapshot holding a volume, the boot order, balloon > memory) change nothing.
        HotplugProblems (after writing) names the changes left pending by a failure."""
        async with self.ctx.lock(vmid):
            return await self.update_locked(vmid, changes, delete, digest, task=task,
                                            force=force, revert=revert)

    async def update_locked(self, vmid: int, changes: dict[str, Any], delete: list[str],
                            digest: str | None, *, task: Task | None = None,
                            force: bool = False, revert: list[str] | tuple[str, ...] = ()
                            ) -> VmConfig:
        """`update` for a caller that holds the VM's lock (a disk reassigned to it)."""
        vm = await self.ctx.read(vmid)
        if digest and digest != vm.digest:
            raise GuestFailure("detected modified configuration - file changed by other "
                               "user? Try again.")
        if vm.config.get("lock") and "lock" not in delete:
            raise GuestFailure(f"VM is locked ({vm.config['lock']})")
        if vm.config.get("template") and any(vmconf.is_disk_key(k) for k in changes):
            raise GuestFailure("you can't change disks of a template")
        config = dict(vm.config)
        running = self.ctx.runtime.is_running(vmid)
        freed: list[str] = []
        later: list[str] = []
        for key in delete:
            if key == "lock" or key in pending_mod.DELETE_AT_ONCE \
                    or vmconf.is_unused_key(key):
                if key in config:
                    try:
                        freed += remove_key(vmid, config, vm.snapshots, key, force=force)
                    except ValueError as exc:
                        raise GuestFailure(str(exc)) from None
            else:
                later.append(key)
        allocated = []
        try:
            staged: dict[str, Any] = {}
            for key, value in changes.items():
                if key == "cipassword":
                    config[key] = value     # PVE writes it directly, never pending
                    continue
                if vmconf.is_drive_key(key):
                    if key in SPECIAL_DRIVES_FIXED and key in vm.config:
                        raise GuestFailure(f"{key} cannot be replaced: delete it first")
                    value, vol = await self._materialize_disk(
                        vmid, key, str(value), pending_mod.merged(config, vm.pending))
                    if vol:
                        allocated.append(vol)
                        if task:
                            task.log(f"{key}: allocated {vol}")
                staged[key] = value
            # a pending drive value reverted, deleted or replaced: its new volume is
            # kept as unusedN (it was allocated for that change: nothing is lost)
            before = pending_mod.values(vm.pending)
            for key in {*revert, *later, *staged}:
                if key in before and vmconf.is_drive_key(key) \
                        and not _same_volume(key, before[key], staged.get(key)):
                    keep_reverted_volume(vmid, config, key, str(before[key]))
            pending = pending_mod.record(config, vm.pending, staged, later, force=force,
                                         revert=list(revert))
            # every refusal before anything is written: the whole update, tried
            try:
                trial, _ = apply_pending(vmid, config, pending, vm.snapshots)
            except ValueError as exc:
                raise GuestFailure(str(exc)) from None
            check_applicable(trial, changes)
            if running:
                written = await self.ctx.configs.write(vm, config, pending=pending)
            else:
                new, more = apply_pending(vmid, config, pending, vm.snapshots)
                freed += more
                written = await self.ctx.configs.write(vm, new, pending={})
        except BaseException:
            for vol in allocated:
                with contextlib.suppress(Exception):
                    await (await self.ctx.storages.for_volid(vol)).free(vol)
            raise
        problems: dict[str, str] = {}
        if running and written.pending:
            written, more, problems = await self._hotplug(written, task)
            freed += more
        await self._free(freed, task)
        if problems:
            raise HotplugProblems(problems)
        return written

    async def _free(self, volids: list[str], task: Task | None) -> None:
        for volid in volids:
            try:
                await (await self.ctx.storages.for_volid(volid)).free(volid)
                if task:
                    task.log(f"removed volume {volid}")
            except StorageError as exc:
                if task:
                    task.warn(f"could not remove unused volume {volid}: {exc}")

    async def _hotplug(self, vm: VmConfig, task: Task | None
                       ) -> tuple[VmConfig, list[str], dict[str, str]]:
        """PVE's vmconfig_hotplug_pending: each pending change the running guest can take
        (`pending.live_action`) is plugged and moves into the config; a failure leaves
        it pending ("hotplug problem - ..."). Returns the written config, the volumes
        to free and the problems."""
        features = vmconf.hotplug_features(vm.config.get("hotplug"))
        config, pending = dict(vm.config), dict(vm.pending)
        freed: list[str] = []
        problems: dict[str, str] = {}
        for key, is_delete in pending_mod.order(vm.pending):
            old = config.get(key)
            new = None if is_delete else pending_mod.values(pending)[key]
            action = pending_mod.live_action(key, old, new, features,
                                             ostype=config.get("ostype"))
            if action == "pending":
                continue
            one = pending_mod.single(pending, key)
            try:
                trial, gone = apply_pending(vm.vmid, config, one, vm.snapshots)
                await self._plug(vm.vmid, action, key, old, new, trial)
            except (GuestError, GuestFailure, StorageError, ValueError) as exc:
                problems[key] = f"hotplug problem - {exc}"
                if task:
                    task.warn(f"{key}: {problems[key]}")
                continue
            config, pending = trial, pending_mod.drop(pending, key)
            freed += gone
            if task and action != "config":
                task.log(f"{key}: {'unplugged' if is_delete else 'hot-plugged'}")
        written = await self.ctx.configs.write(vm, config, pending=pending)
        return written, freed, problems

    async def _plug(self, vmid: int, action: str, key: str, old: Any, new: Any,
                    config: dict[str, Any]) -> None:
        runtime = self.ctx.runtime
        if action == "disk":
            if new is None:
                await runtime.unplug_disk(vmid, key)
            else:
                await runtime.plug_disk(vmid, await self._disk_spec(
                    vmconf.parse_disk(key, str(new))))
        elif action == "nic":
            index = vmconf.parse_net(key, str(old or new)).index
            if old is not None:
                await runtime.unplug_nic(vmid, index)
            if new is not None:
                await runtime.plug_nic(vmid, nic_spec(vmconf.parse_net(key, str(new))))
        elif action == "usb":
            # PVE's qemu_usb_hotplug: the old device goes first, the new one takes its
            # id and port (a mapping resolved for this node, as at start: before the
            # old one goes, so a mapping without an entry here changes nothing)
            index = int(key[3:])
            selector = None
            if new is not None:
                resolved = await host_devices.resolve({key: new}, self.ctx.node,
                                                      self.ctx.cluster.store)
                selector = dict(vmconf.usb_host_devices(resolved)).get(index)
                if selector is None:
                    raise GuestFailure(f"{key}: no USB host device in '{new}'")
            if old is not None:
                await runtime.unplug_usb(vmid, index)
            if selector is not None:
                await runtime.plug_usb(vmid, index, selector)
        elif action == "cpu":
            await runtime.set_vcpus(vmid, int(config.get("vcpus") or vmconf.cpu_count(config)))
        elif action == "memory":
            await runtime.set_memory(vmid, int(new))
        elif action == "balloon":
            # the target: balloon, or all the memory when unset (PVE's default)
            target = int(config.get("balloon") or config.get("memory")
                         or vmconf.DEFAULTS["memory"])
            await runtime.command(vmid, "balloon", {"value": target << 20})

    async def _disk_spec(self, d: vmconf.DiskEntry) -> DiskSpec:
        assert d.volid is not None
        storage = await self.ctx.storages.for_volid(d.volid)
        src = storage.source(d.volid)
        return DiskSpec(bus=d.bus, index=d.index, source=src.source, format=src.format,
                        readonly=d.is_cdrom, cache=d.options.get("cache", "none"))

    async def apply_pending_for_start(self, vm: VmConfig, task: Task | None) -> VmConfig:
        """PVE's vmconfig_apply_pending at a cold start: every pending change goes into
        the config before the command line is built (caller holds the VM's lock)."""
        if not vm.pending:
            return vm
        try:
            new, freed = apply_pending(vm.vmid, vm.config, vm.pending, vm.snapshots)
        except ValueError as exc:
            raise GuestFailure(f"cannot apply pending changes: {exc}") from None
        written = await self.ctx.configs.write(vm, new, pending={})
        if task:
            task.log("applying pending changes: " + ", ".join(pending_mod.keys(vm.pending)))
        await self._free(freed, task)
        return written

    async def resize_disk(self, task: Task, vmid: int, key: str, new_size: int) -> None:
        """PVE's `qm resize`: grow disk `key` to `new_size` bytes. A running guest's disk
        grows through QEMU (`block_resize`: it holds the image open, and the guest sees
        the new capacity at once); a stopped guest's through its storage. A disk QEMU
        reaches over NBD (a replicated volume) cannot grow under a running guest: QEMU's
        NBD client cannot change an export's size."""
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if key not in vm.config or not vmconf.is_disk_key(key):
                raise GuestFailure(f"disk '{key}' does not exist")
            disk = vmconf.parse_disk(key, str(vm.config[key]))
            if not disk.volid or disk.is_cdrom:
                raise GuestFailure(f"disk '{key}' cannot be resized")
            storage = await self.ctx.storages.for_volid(disk.volid)
            if self.ctx.runtime.is_running(vmid):
                if storage.per_node_activation:
                    raise GuestFailure(f"{key}: a disk on '{storage.config.storage}' "
                                       f"({storage.config.type}) cannot grow while the VM "
                                       f"runs (QEMU reaches it over NBD); stop the VM first")
                await self.ctx.runtime.block_resize(vmid, key, new_size)
                task.log(f"{key}: grown online (QMP block_resize)")
            else:
                await storage.resize(disk.volid, new_size)
            options = {**disk.options, "size": vmconf.format_size(new_size)}
            value = ",".join([disk.volid, *(f"{k}={v}" for k, v in options.items())])
            await self.ctx.configs.write(vm, {**vm.config, key: value})
        task.log(f"{key}: resized to {vmconf.format_size(new_size)}")

    async def _materialize_disk(self, vmid: int, key: str, value: str,
                                config: dict[str, Any]) -> tuple[str, str | None]:
        """'local:4' -> allocate 4 GiB and return the volume's config value (efidisk0:
        the EFI vars template, written in; tpmstate0: 4 MiB, as PVE); 'local:cloudinit'
        -> allocate the VM's cloud-init drive."""
        disk = vmconf.parse_drive(key, value)
        ci_storage = cloudinit.cloudinit_request(disk.volid or "")
        if ci_storage is not None:
            return await self._allocate_cloudinit(vmid, key, ci_storage, disk.options, config)
        if disk.new_size_gib is None:
            if disk.volid:
                storage = await self.ctx.storages.for_volid(disk.volid)
                storage.source(disk.volid)   # raises if it does not exist
            return value, None
        options = dict(disk.options)
        storage_id = options.pop("_storage")
        fmt = options.pop("format", "raw")
        storage = await self.ctx.storages.get(storage_id)
        template = None
        if key == "efidisk0":
            template = efi_vars_template(options, self.ctx.node)
            size = os.path.getsize(template)
        elif key == "tpmstate0":
            size = vmconf.TPMSTATE_SIZE
        else:
            if disk.new_size_gib <= 0:
                raise GuestFailure(f"{key}: size must be positive")
            size = int(disk.new_size_gib * (1 << 30))
        volid = await storage.alloc(vmid, size, fmt)
        if template is not None:
            try:
                await write_volume(storage, volid, template, fmt)
            except BaseException:
                with contextlib.suppress(Exception):
                    await storage.free(volid)
                raise
        options["size"] = vmconf.format_size(size)
        return ",".join([volid, *(f"{k}={v}" for k, v in options.items())]), volid

    async def _allocate_cloudinit(self, vmid: int, key: str, storage_id: str,
                                  options: dict[str, str], config: dict[str, Any]
                                  ) -> tuple[str, str]:
        """PVE's create_disks for 'STORAGE:cloudinit': one 4 MiB vm-<vmid>-cloudinit
        volume (qcow2 on a dir storage unless format= says otherwise), a CD-ROM."""
        present = cloudinit.cloudinit_drive({k: v for k, v in config.items() if k != key})
        if present is not None:
            raise GuestFailure(f"{key} - cloud-init drive is already attached at "
                               f"'{present[0]}'")
        storage = await self.ctx.storages.get(storage_id)
        if storage.per_node_activation:
            raise GuestFailure(f"{key} - binome keeps cloud-init drives only on storages "
                               f"without node-bound volumes (e.g. 'dir'), not on "
                               f"'{storage_id}' ({storage.config.type})")
        options = {k: v for k, v in options.items() if k not in ("media", "size")}
        fmt = options.pop("format", "qcow2" if storage.config.type == "dir" else "raw")
        volid = await storage.alloc(vmid, cloudinit.DISK_SIZE, fmt,
                                    name=f"vm-{vmid}-cloudinit")
        return ",".join([volid, "media=cdrom", *(f"{k}={v}" for k, v in options.items())]), \
            volid

    async def regenerate_cloudinit(self, vm: VmConfig, task: Task | None = None) -> None:
        """Write the VM's cloud-init seed to its drive (at start and on PUT .../cloudinit)."""
        try:
            volid = await cloudinit.regenerate(self.ctx.storages, vm.config, vm.vmid)
        except (cloudinit.CloudinitError, StorageError, OSError) as exc:
            raise GuestFailure(str(exc)) from None
        if volid and task is not None:
            task.log(f"generating cloud-init ISO ({volid})")

    async def update_cloudinit(self, vmid: int) -> bool:
        """PUT .../cloudinit (PVE's vmconfig_update_cloudinit_drive): rewrite the drive;
        False when the VM runs (its QEMU holds the image: the next start rewrites it)."""
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if vm.config.get("lock"):
                raise GuestFailure(f"VM is locked ({vm.config['lock']})")
            if self.ctx.runtime.is_running(vmid):
                return False
            await self.regenerate_cloudinit(vm)
            return True

    async def create(self, task: Task, vmid: int, settings: dict[str, Any],
                     start: bool = False) -> None:
        configs = self.ctx.configs
        if not await configs.reserve(vmid, {"lock": "create"}):
            owner = await self.ctx.configs.owner(vmid)
            raise TaskFailed(f"unable to create VM {vmid} - VM {vmid} already exists on node "
                             f"'{owner}'")
        allocated: list[str] = []
        try:
            config: dict[str, Any] = {}
            for key, value in settings.items():
                if vmconf.is_drive_key(key):
                    value, vol = await self._materialize_disk(vmid, key, str(value), config)
                    if vol:
                        allocated.append(vol)
                        task.log(f"{key}: allocated {vol}")
                config[key] = value
            config.setdefault("smbios1", f"uuid={uuid.uuid4()}")
            if config.get("arch") != "aarch64":
                # PVE's create: a generation ID unless one was given ('1' was made one)
                config.setdefault("vmgenid", str(uuid.uuid4()))
            if "boot" not in config:
                order = vmconf.boot_order(config)
                if order:
                    config["boot"] = "order=" + ";".join(order)
            # like PVE's create, the boot order is stored as given: bpg always lists
            # net0, with or without a NIC (devices not present are skipped at start)
            vm = await self.ctx.read(vmid)
            await self.ctx.configs.write(vm, config)
        except BaseException as exc:
            task.log(f"creation failed ({exc}); removing what was created")
            for vol in allocated:
                with contextlib.suppress(Exception):
                    await (await self.ctx.storages.for_volid(vol)).free(vol)
            with contextlib.suppress(Exception):
                await configs.unreserve(vmid)
            raise
        task.log(f"VM {vmid} created on node {self.ctx.node}")
        if start:
            await self.start_vm(task, vmid)

    async def destroy(self, task: Task, vmid: int, purge: bool = False,
                      skiplock: bool = False, destroy_unreferenced: bool = False) -> None:
        """PVE's destroy_vm: the volumes the VM references (its config, snapshots and
        pending changes) and owns are freed, then, with `destroy_unreferenced`
        (`destroy-unreferenced-disks`, default off since PVE 7), every other volume
        named for it on the storages this node can use (`_free_unreferenced`); last
        the config goes."""
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if self.ctx.runtime.is_running(vmid):
                raise TaskFailed(f"VM {vmid} is running - destroy failed")
            if vm.config.get("lock") and vm.config["lock"] != "create" and not skiplock:
                raise TaskFailed(f"VM is locked ({vm.config['lock']})")
            protected = vmconf.protection_error(vm.config, f"can't remove VM {vmid}")
            if protected:
                raise TaskFailed(protected)
            if vm.config.get("template"):
                # PVE's destroy_vm: no base image still backing a linked clone
                for _key, volid in owned_volumes(vm.config, vm.snapshots):
                    with contextlib.suppress(StorageError):
                        store = await self.ctx.storages.for_volid(volid)
                        if await store.base_users(volid):
                            raise TaskFailed(f"base volume '{volid}' is still in use by "
                                             f"linked cloned")
            freed: set[str] = set()
            # a pending disk (added while the VM ran, not yet plugged) is the VM's too
            referenced = owned_volumes(vm.config, {**vm.snapshots,
                                                   "\0pending": pending_mod.values(vm.pending)})
            for key, volid in referenced:
                if not (vmconf.is_owned_volume(vmid, volid)
                        or (cloudinit.is_cloudinit_volid(volid) and f"vm-{vmid}-" in volid)):
                    task.log(f"{key}: {volid} is not owned by VM {vmid}; kept")
                    continue
                try:
                    await (await self.ctx.storages.for_volid(volid)).free(volid)
                    freed.add(volid)
                    task.log(f"{key}: removed {volid}")
                except StorageError as exc:
                    task.warn(f"{key}: could not remove {volid}: {exc}")
            if destroy_unreferenced:
                await self._free_unreferenced(task, vmid, freed | {v for _, v in referenced})
            await self.ctx.configs.remove(vm)
            self.ctx.believed_running.discard(vmid)
            task.log(f"VM {vmid} destroyed{' (purged)' if purge else ''}")


    async def _free_unreferenced(self, task: Task, vmid: int, seen: set[str]) -> None:
        """PVE's destroy_vm with `$purge_unreferenced`: vdisk_list(vmid, 'images') over
        every storage that is enabled, available on this node and holds `images` (shared
        ones included), and each volume found freed; a failure is a warning. Only a
        volume both listed for `vmid` (a replicated volume's record) and named for it is
        freed, never one already handled (`seen`)."""
        for cfg in await self.ctx.storages.configs():
            if cfg.disable or not cfg.available_on(self.ctx.node) or "images" not in cfg.content:
                continue
            try:
                storage = await self.ctx.storages.get(cfg.storage)
                found = await storage.list("images", vmid)
            except StorageError as exc:
                task.warn(f"could not list volumes of VM {vmid} on '{cfg.storage}': {exc}")
                continue
            for entry in found:
                volid = str(entry.get("volid") or "")
                if (volid in seen or entry.get("content", "images") != "images"
                        or entry.get("vmid") != vmid or not vmconf.is_named_for(vmid, volid)):
                    continue
                seen.add(volid)
                try:
                    await storage.free(volid)
                    task.log(f"removed unreferenced volume {volid}")
                except StorageError as exc:
                    task.warn(f"could not remove unreferenced volume '{volid}': {exc}")

    async def launch_spec(self, vm: VmConfig,
                          warn: Callable[[str], None] | None = None) -> LaunchSpec:
        # the cluster mappings (usbN/hostpciN mapping=) resolved for this node
        c = await host_devices.resolve(vm.config, self.ctx.node, self.ctx.cluster.store,
                                       warn=warn or (lambda m: log.warning("%s", m)))
        disks = []
        for d in vmconf.disks(c):
            if not d.volid:
                continue   # empty cdrom drive
            storage = await self.ctx.storages.for_volid(d.volid)
            src = storage.source(d.volid)
            disks.append(DiskSpec(bus=d.bus, index=d.index, source=src.source,
                                  format=src.format, readonly=d.is_cdrom,
                                  cache=d.options.get("cache", "none")))
        firmware: dict[str, Any] = {}
        efidisk = next((d for d in vmconf.special_drives(c) if d.key == "efidisk0"), None)
        if c.get("bios") == "ovmf" and efidisk is not None and efidisk.volid:
            # the VM's own EFI vars volume replaces the per-start copy of the template
            code, _ = efi_files(efidisk.options, self.ctx.node)
            vars_src = (await self.ctx.storages.for_volid(efidisk.volid)).source(efidisk.volid)
            firmware = {"ovmf_code": code, "ovmf_vars_template": None,
                        "efivars_source": vars_src.source,
                        "efivars_format": vars_src.format,
                        "secure_boot": code.endswith(".secboot.fd")}
        tpm = next((d for d in vmconf.special_drives(c) if d.key == "tpmstate0"), None)
        if tpm is not None and tpm.volid:
            tpm_src = (await self.ctx.storages.for_volid(tpm.volid)).source(tpm.volid)
            if tpm_src.source.startswith(("nbd:", "nbd+")) or tpm_src.format != "raw":
                raise GuestFailure(f"tpmstate0: {tpm.volid} is not a raw file on this node; "
                                   f"swtpm here needs a tpmstate0 on a dir storage")
            firmware["tpm_state"] = tpm_src.source
            firmware["tpm_version"] = tpm.options.get("version", "v1.2")
        nics = [nic_spec(n) for n in vmconf.nets(c)]
        kernel = initrd = None
        if c.get("kernel"):
            kernel = (await self.ctx.storages.for_volid(c["kernel"])).source(c["kernel"]).source
        if c.get("initrd"):
            initrd = (await self.ctx.storages.for_volid(c["initrd"])).source(c["initrd"]).source
        options = launch_options(self.ctx.node, c)
        pki = self.ctx.cluster.paths
        if is_spice(str(options.get("vga", ""))) and pki.has_cluster_cert():
            # PVE's SPICE display: TLS with the node's cluster certificate on a free port
            options["spice_port"] = next_spice_port()
            options["spice_x509"] = (str(pki.node_cert), str(pki.node_key), str(pki.ca_cert))
        try:
            return LaunchSpec(vmid=vm.vmid, name=str(c.get("name", f"vm{vm.vmid}")),
                              memory_mb=int(c.get("memory", vmconf.DEFAULTS["memory"])),
                              cores=int(c.get("cores", 1)), sockets=int(c.get("sockets", 1)),
                              disks=tuple(disks), nics=tuple(nics),
                              boot=tuple(vmconf.boot_order(c)), kernel=kernel, initrd=initrd,
                              append=c.get("append"),
                              **{**options, **firmware})
        except ValueError as exc:
            raise GuestFailure(f"VM {vm.vmid}: {exc}") from None

    async def check_startable(self, vmid: int) -> VmConfig:
        vm = await self.ctx.read(vmid)
        if vm.config.get("template"):
            raise GuestFailure("you can't start a vm if it's a template")
        if vm.config.get("lock"):
            raise GuestFailure(f"VM is locked ({vm.config['lock']})")
        if self.ctx.runtime.is_running(vmid):
            raise GuestFailure(f"VM {vmid} already running")
        return vm

    async def start_vm(self, task: Task, vmid: int) -> None:
        async with self.ctx.lock(vmid):
            vm = await self.apply_pending_for_start(await self.check_startable(vmid), task)
            await self.regenerate_cloudinit(vm, task)
            spec = await self.launch_spec(vm, warn=task.log)
            pid = await self.ctx.runtime.start(spec)
            self.ctx.believed_running.add(vmid)
            task.log(f"VM {vmid} started (pid {pid})")

    def require_running(self, vmid: int) -> None:
        if not self.ctx.runtime.is_running(vmid):
            raise GuestFailure(f"VM {vmid} not running")

    async def shutdown_vm(self, task: Task, vmid: int, timeout: float, force_stop: bool) -> None:
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid, fresh=False)
            self.require_running(vmid)
            self.ctx.believed_running.discard(vmid)
            task.log(f"requesting shutdown of VM {vmid} (timeout {timeout:.0f}s)")
            # PVE's vm_stop: through the guest agent when one is configured and answers
            via_agent = bool(vmconf.agent_settings(vm.config))
            try:
                how = await self.ctx.runtime.shutdown(vmid, timeout=timeout,
                                                      force_stop=force_stop,
                                                      via_agent=via_agent)
            except BaseException:
                if self.ctx.runtime.is_running(vmid):
                    self.ctx.believed_running.add(vmid)
                raise
            task.log(f"VM {vmid} is stopped" + {
                "agent": " (shut down through the guest agent)",
                "stop": " (stopped hard: the shutdown timed out)"}.get(how, ""))

    async def stop_vm(self, task: Task, vmid: int, timeout: float = 10.0) -> None:
        async with self.ctx.lock(vmid):
            await self.ctx.read(vmid, fresh=False)
            self.require_running(vmid)
            self.ctx.believed_running.discard(vmid)
            await self.ctx.runtime.stop(vmid, timeout=timeout)
            task.log(f"VM {vmid} stopped (hard)")

    async def reboot_vm(self, task: Task, vmid: int, timeout: float) -> None:
        await self.shutdown_vm(task, vmid, timeout, force_stop=False)
        await self.start_vm(task, vmid)

    async def reset_vm(self, task: Task, vmid: int) -> None:
        async with self.ctx.lock(vmid):
            await self.ctx.read(vmid)
            self.require_running(vmid)
            await self.ctx.runtime.reset(vmid)
            task.log(f"VM {vmid} reset")

    async def suspend_vm(self, task: Task, vmid: int) -> None:
        async with self.ctx.lock(vmid):
            await self.ctx.read(vmid, fresh=False)
            self.require_running(vmid)
            await self.ctx.runtime.suspend(vmid)
            task.log(f"VM {vmid} paused")

    async def resume_vm(self, task: Task, vmid: int) -> None:
        async with self.ctx.lock(vmid):
            await self.ctx.read(vmid, fresh=False)
            self.require_running(vmid)
            await self.ctx.runtime.resume(vmid)
            task.log(f"VM {vmid} resumed")


    async def clone(self, task: Task, vmid: int, newid: int, name: str | None,
                    target: str | None, storage: str | None = None,
                    bwlimit_kib: int | None = None, fmt: str | None = None,
                    snapname: str | None = None, full: bool | None = None) -> None:
        """A copy of VM `vmid` (stopped, or a template) as `newid`: linked (`full`
        false, the default for a template whose disks all allow it: `link_blocker`), each
        disk a new image backed by the template's base image; else full, here or on node
        `target`: to another node each disk is copied over the cluster network onto
        `storage` (default: the disk's own storage) there (`volume_copy`); here, onto
        `storage` in `fmt` when given (else each disk on its own storage, its format).
        `snapname`: the VM as snapshot `snapname` has it, config and disks (here only)."""
        from binome.guest.volume_copy import abort_copies, send_volumes

        remote = bool(target) and target != self.ctx.node
        node = str(target) if remote else self.ctx.node
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            # a running guest's disks are copied by QEMU's mirror (PVE's drive-mirror,
            # ended without switching), unless a snapshot is read: it does not change
            running = self.ctx.runtime.is_running(vmid) and not vm.config.get("template")
            if running and remote:
                raise TaskFailed(f"VM {vmid} is running: a clone to another node copies "
                                 f"stopped disks only (stop it, or clone it here first)")
            if running and snapname is None and vm.config.get("tpmstate0"):
                raise TaskFailed("cannot clone TPM state while VM is running")
            if snapname is not None:
                if remote:
                    raise TaskFailed("cloning a snapshot to another node is not supported "
                                     "yet: clone it here, then migrate the copy")
                if snapname not in vm.snapshots:
                    raise TaskFailed(f"snapshot '{snapname}' does not exist")
                if vm.snapshots[snapname].get("snapstate"):
                    raise TaskFailed(f"snapshot '{snapname}' is not complete "
                                     f"({vm.snapshots[snapname]['snapstate']})")
                source = dict(vm.snapshots[snapname])
                task.log(f"create full clone of VM {vmid} as it was at snapshot "
                         f"'{snapname}'")
            else:
                source = dict(vm.config)
            linked = await self.clone_is_linked(vm, full, snapname=snapname, target=node)
            if linked:
                task.log(f"create linked clone of VM {vmid} as VM {newid}")
            elif remote:
                task.log(f"create full clone of VM {vmid} as VM {newid} on node '{node}'")
        configs = self.ctx.configs
        if not await configs.reserve(newid, {"lock": "clone"}, node=node):
            raise TaskFailed(f"unable to create VM {newid} - VM {newid} already exists on node "
                             f"'{await self.ctx.configs.owner(newid)}'")
        copied: list[str] = []
        remote_copies: dict[str, str] = {}
        mirrors = _RunningCopies(self.ctx, task, vmid) if running and not snapname else None
        try:
            new: dict[str, Any] = {}
            to_send: list[tuple[str, str]] = []
            for key, value in source.items():
                # like PVE's clone: no snapshot keys (the copy has no snapshots), no
                # unused volumes (they are the source's: the copy must never name them)
                if key in ("template", "smbios1", "runningmachine", "runningcpu",
                           *vmconf.INTERNAL_KEYS) or vmconf.is_unused_key(key):
                    continue
                if vmconf.is_drive_key(key):
                    disk = vmconf.parse_drive(key, str(value))
                    if remote and disk.volid and (
                            not disk.is_cdrom or cloudinit.is_cloudinit_volid(disk.volid)):
                        # copied to the target below; the config names the copy after
                        sid = storage or str(disk.volid).partition(":")[0]
                        if (disk.volid, sid) not in to_send:
                            to_send.append((str(disk.volid), sid))
                    elif cloudinit.is_cloudinit_volid(disk.volid):
                        # PVE's clone_disk: the copy gets its own (empty) cloud-init drive,
                        # written when it starts
                        store = await self.ctx.storages.for_volid(str(disk.volid))
                        fmt = "qcow2" if str(disk.volid).endswith(".qcow2") else "raw"
                        volid = await store.alloc(newid, cloudinit.DISK_SIZE, fmt,
                                                  name=f"vm-{newid}-cloudinit")
                        copied.append(volid)
                        task.log(f"{key}: allocated {volid}")
                        value = ",".join([volid, *(f"{k}={v}" for k, v in disk.options.items())])
                    elif linked and disk.volid and not disk.is_cdrom and key != "tpmstate0":
                        store = await self.ctx.storages.for_volid(disk.volid)
                        task.log(f"create linked clone of drive {key} ({disk.volid})")
                        volid = await store.clone_image(disk.volid, newid)
                        copied.append(volid)
                        task.log(f"{key}: {volid} backed by {disk.volid}")
                        value = ",".join([volid, *(f"{k}={v}" for k, v in disk.options.items())])
                    elif disk.volid and not disk.is_cdrom:
                        if mirrors is not None:
                            volid = await mirrors.add(key, str(disk.volid), newid, storage,
                                                      fmt, bwlimit_kib, copied)
                        elif storage or fmt or snapname:
                            volid = await self._clone_disk(task, key, str(disk.volid), newid,
                                                           storage, fmt, snapname,
                                                           bwlimit_kib, copied,
                                                           shared=running)
                        else:
                            store = await self.ctx.storages.for_volid(disk.volid)
                            volid = await store.copy(disk.volid, newid)
                            copied.append(volid)
                        task.log(f"{key}: copied {disk.volid} to {volid}")
                        value = ",".join([volid, *(f"{k}={v}" for k, v in disk.options.items())])
                elif vmconf.is_net_key(key):
                    nic = vmconf.parse_net(key, str(value))
                    value = vmconf.NetEntry(nic.key, nic.index, nic.model, vmconf.random_mac(),
                                            nic.bridge, nic.tag, nic.options).format()
                new[key] = value
            if mirrors is not None:
                await mirrors.finish(vm.config)
            if to_send:
                remote_copies = await send_volumes(self.ctx, task, node, vmid, to_send,
                                                   new_vmid=newid, bwlimit_kib=bwlimit_kib)
                from binome.guest.configs import rename_volumes

                new = rename_volumes(new, remote_copies)
            new["name"] = name or f"Copy-of-VM-{source.get('name', vmid)}"[:63]
            new["smbios1"] = f"uuid={uuid.uuid4()}"
            if new.get("vmgenid", "0") != "0":
                # PVE's clone: a copy is a new generation, to the guest too
                new["vmgenid"] = str(uuid.uuid4())
            await self.ctx.configs.write(await self.ctx.read(newid, node), new)
        except BaseException as exc:
            task.log(f"clone failed ({exc}); removing what was created")
            if mirrors is not None:
                await asyncio.shield(mirrors.cancel())
            for vol in copied:
                with contextlib.suppress(Exception):
                    await (await self.ctx.storages.for_volid(vol)).free(vol)
            if remote_copies:
                await asyncio.shield(abort_copies(self.ctx, task, node, newid,
                                                  list(remote_copies.values())))
            with contextlib.suppress(Exception):
                await configs.unreserve(newid, node)
            raise
        task.log(f"VM {vmid} cloned to VM {newid}" + (f" on node '{node}'" if remote else ""))

    async def link_blocker(self, config: dict[str, Any], snapname: str | None = None
                           ) -> str | None:
        """Why a linked clone of `config` cannot be made (PVE's clone_vm text for the
        first disk whose volume is no base image a linked clone can read: not a
        template's, or on a storage without linked clones, such as `replicated`);
        None: every disk can be linked. CD-ROMs, the cloud-init drive and the TPM state
        are copied in full, as PVE."""
        for key in sorted(config):
            if not vmconf.is_drive_key(key):
                continue
            try:
                disk = vmconf.parse_drive(key, str(config[key]))
            except ValueError:
                continue
            if not disk.volid or disk.is_cdrom or key == "tpmstate0" \
                    or cloudinit.is_cloudinit_volid(disk.volid):
                continue
            try:
                store = await self.ctx.storages.for_volid(disk.volid)
                ok = not snapname and store.can_link(disk.volid)
            except StorageError:
                ok = False
            if not ok:
                of = " a snapshot of" if snapname else ""
                return f"Linked clone feature is not supported for{of} '{disk.volid}' ({key})"
        return None

    async def clone_is_linked(self, vm: VmConfig, full: bool | None, *,
                              snapname: str | None = None, target: str | None = None
                              ) -> bool:
        """PVE's `full` default (linked for a template, full otherwise; binome: full too
        for a template a linked clone cannot be made of, so one on `replicated` storage
        still clones), and its refusals of `full=0` (GuestFailure, PVE's texts)."""
        if full:
            return False
        why = await self.link_blocker(vm.config if not snapname
                                      else vm.snapshots.get(snapname, {}), snapname)
        if full is None:
            return bool(vm.config.get("template")) and why is None and \
                (not target or target == self.ctx.node)
        if why:
            raise GuestFailure(why)
        if target and target != self.ctx.node:
            raise GuestFailure(f"can't clone VM to node '{target}' (VM uses local storage)")
        return True

    async def _clone_disk(self, task: Task, key: str, volid: str, newid: int,
                          storage_id: str | None, fmt: str | None, snapname: str | None,
                          bwlimit_kib: int | None, copied: list[str], *,
                          shared: bool = False) -> str:
        """One disk of a same-node clone onto `storage_id` (default: its own) in `fmt`
        (default: the source's when the target holds it), read at snapshot `snapname`
        when given (PVE's qemu_img_convert `-l snapshot.name=`); the new volume is in
        `copied` as soon as it exists, so a failure frees it."""
        from binome.guest.disk_move import convert_argv, convert_with_progress

        source = await self.ctx.storages.for_volid(volid)
        target = await self.ctx.storages.get(storage_id or volid.partition(":")[0])
        src_format = source.volume_format(volid)
        new_format = target.resolve_format(fmt or src_format)
        if snapname and src_format != "qcow2":
            raise TaskFailed(f"{key}: volume {volid} is {src_format}: it has no snapshot "
                             f"'{snapname}' to read")
        size = await source.size(volid)
        new = await target.alloc(newid, size, new_format)
        copied.append(new)
        task.log(f"{key}: allocated {new} ({new_format}) for {volid}")
        activated = await self.ctx.activate_here([volid, new])
        try:
            src, dst = source.source(volid), target.source(new)
            await convert_with_progress(
                task, convert_argv(src, dst, bwlimit_kib, snapname=snapname, shared=shared),
                size)
        finally:
            if activated:
                await asyncio.shield(self.ctx.deactivate_after(None, activated, timeout=10.0))
        if target.per_node_activation and new not in activated:
            # allocated Primary here; like a stopped VM's moved disk, the copy's start
            # activates it
            with contextlib.suppress(StorageError):
                await target.deactivate_volume(new)
        return new

    async def make_template(self, task: Task, vmid: int, only: str | None = None) -> None:
        """PVE's template + template_create: `template: 1`, then each disk (or only disk
        `only`, also of a template: one that became a plain image, moved or migrated)
        whose storage has base images (`dir`) renamed to its read-only 'base-' image,
        the config written after each, so linked clones can be made of them."""
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if vm.snapshots:
                raise TaskFailed("unable to create template, because VM contains snapshots")
            if vm.config.get("template") and not only:
                raise TaskFailed("you can't convert a template to a template")
            if self.ctx.runtime.is_running(vmid):
                raise TaskFailed("you can't convert a VM to template if VM is running")
            config = {**vm.config, "template": 1}
            vm = await self.ctx.configs.write(vm, config)
            for key in sorted(config):
                if not vmconf.is_drive_key(key) or (only and key != only):
                    continue
                disk = vmconf.parse_drive(key, str(config[key]))
                if not disk.volid or disk.is_cdrom or ":" not in disk.volid:
                    continue
                store = await self.ctx.storages.for_volid(disk.volid)
                if store.can_link(disk.volid):
                    continue                # a base image already
                base = await store.create_base(disk.volid)
                if base == disk.volid:
                    continue
                task.log(f"{key}: {disk.volid} is now the base image {base}")
                config[key] = ",".join([base, *(f"{k}={v}" for k, v in disk.options.items())])
                vm = await self.ctx.configs.write(vm, config)
            task.log(f"VM {vmid} converted to a template")

