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
import os
import uuid
from typing import TYPE_CHECKING, Any

from binome.guest import cloudinit
from binome.guest import config as vmconf
from binome.guest import pending as pending_mod
from binome.guest.configs import VmConfig
from binome.guest.errors import GuestError, GuestFailure, HotplugProblems
from binome.guest.spec import DiskSpec, LaunchSpec, NicSpec
from binome.storage.base import StorageError
from binome.tasks.manager import Task, TaskFailed

if TYPE_CHECKING:
    from binome.guest.context import GuestContext


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
            action = pending_mod.live_action(key, old, new, features)
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
        elif action == "cpu":
            await runtime.set_vcpus(vmid, int(config.get("vcpus") or vmconf.cpu_count(config)))
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
                      skiplock: bool = False) -> None:
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if self.ctx.runtime.is_running(vmid):
                raise TaskFailed(f"VM {vmid} is running - destroy failed")
            if vm.config.get("lock") and vm.config["lock"] != "create" and not skiplock:
                raise TaskFailed(f"VM is locked ({vm.config['lock']})")
            protected = vmconf.protection_error(vm.config, f"can't remove VM {vmid}")
            if protected:
                raise TaskFailed(protected)
            for key, volid in owned_volumes(vm.config, vm.snapshots):
                if not (vmconf.is_owned_volume(vmid, volid)
                        or (cloudinit.is_cloudinit_volid(volid) and f"vm-{vmid}-" in volid)):
                    task.log(f"{key}: {volid} is not owned by VM {vmid}; kept")
                    continue
                try:
                    await (await self.ctx.storages.for_volid(volid)).free(volid)
                    task.log(f"{key}: removed {volid}")
                except StorageError as exc:
                    task.warn(f"{key}: could not remove {volid}: {exc}")
            await self.ctx.configs.remove(vm)
            self.ctx.believed_running.discard(vmid)
            task.log(f"VM {vmid} destroyed{' (purged)' if purge else ''}")


    async def launch_spec(self, vm: VmConfig) -> LaunchSpec:
        c = vm.config
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
        try:
            return LaunchSpec(vmid=vm.vmid, name=str(c.get("name", f"vm{vm.vmid}")),
                              memory_mb=int(c.get("memory", vmconf.DEFAULTS["memory"])),
                              cores=int(c.get("cores", 1)), sockets=int(c.get("sockets", 1)),
                              disks=tuple(disks), nics=tuple(nics),
                              boot=tuple(vmconf.boot_order(c)), kernel=kernel, initrd=initrd,
                              append=c.get("append"),
                              **{**launch_options(self.ctx.node, c), **firmware})
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
            spec = await self.launch_spec(vm)
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
                    target: str | None) -> None:
        if target and target != self.ctx.node:
            raise TaskFailed("clone to another node is not supported yet; clone here, then "
                             "migrate")
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if self.ctx.runtime.is_running(vmid) and not vm.config.get("template"):
                raise TaskFailed(f"VM {vmid} is running: full clone of a running VM is not "
                                 f"supported yet (stop it, or clone from a template)")
            source = dict(vm.config)
        configs = self.ctx.configs
        if not await configs.reserve(newid, {"lock": "clone"}):
            raise TaskFailed(f"unable to create VM {newid} - VM {newid} already exists on node "
                             f"'{await self.ctx.configs.owner(newid)}'")
        copied: list[str] = []
        try:
            new: dict[str, Any] = {}
            for key, value in source.items():
                # like PVE's clone: no snapshot keys (the copy has no snapshots)
                if key in ("template", "smbios1", *vmconf.INTERNAL_KEYS):
                    continue
                if vmconf.is_drive_key(key):
                    disk = vmconf.parse_drive(key, str(value))
                    if cloudinit.is_cloudinit_volid(disk.volid):
                        # PVE's clone_disk: the copy gets its own (empty) cloud-init drive,
                        # written when it starts
                        storage = await self.ctx.storages.for_volid(str(disk.volid))
                        fmt = "qcow2" if str(disk.volid).endswith(".qcow2") else "raw"
                        volid = await storage.alloc(newid, cloudinit.DISK_SIZE, fmt,
                                                    name=f"vm-{newid}-cloudinit")
                        copied.append(volid)
                        task.log(f"{key}: allocated {volid}")
                        value = ",".join([volid, *(f"{k}={v}" for k, v in disk.options.items())])
                    elif disk.volid and not disk.is_cdrom:
                        storage = await self.ctx.storages.for_volid(disk.volid)
                        volid = await storage.copy(disk.volid, newid)
                        copied.append(volid)
                        task.log(f"{key}: copied {disk.volid} to {volid}")
                        value = ",".join([volid, *(f"{k}={v}" for k, v in disk.options.items())])
                elif vmconf.is_net_key(key):
                    nic = vmconf.parse_net(key, str(value))
                    value = vmconf.NetEntry(nic.key, nic.index, nic.model, vmconf.random_mac(),
                                            nic.bridge, nic.tag, nic.options).format()
                new[key] = value
            new["name"] = name or f"Copy-of-VM-{source.get('name', vmid)}"[:63]
            new["smbios1"] = f"uuid={uuid.uuid4()}"
            if new.get("vmgenid", "0") != "0":
                # PVE's clone: a copy is a new generation, to the guest too
                new["vmgenid"] = str(uuid.uuid4())
            await self.ctx.configs.write(await self.ctx.read(newid), new)
        except BaseException as exc:
            task.log(f"clone failed ({exc}); removing what was created")
            for vol in copied:
                with contextlib.suppress(Exception):
                    await (await self.ctx.storages.for_volid(vol)).free(vol)
            with contextlib.suppress(Exception):
                await configs.unreserve(newid)
            raise
        task.log(f"VM {vmid} cloned to VM {newid}")

    async def make_template(self, task: Task, vmid: int) -> None:
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if self.ctx.runtime.is_running(vmid):
                raise TaskFailed(f"VM {vmid} is running: shut it down before converting it to "
                                 f"a template")
            if vm.config.get("template"):
                raise TaskFailed(f"VM {vmid} is already a template")
            await self.ctx.configs.write(vm, {**vm.config, "template": 1})
            task.log(f"VM {vmid} converted to a template")

