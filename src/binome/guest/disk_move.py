"""Disk moves (PVE's `move_disk` / `qm disk move`): a VM's disk to another storage, or
to another VM.

To another storage (`DiskMoves.move`), as qemu-server's move_vm_disk + clone_disk:
- a stopped VM's disk (or any `unusedN` volume) is copied by `qemu-img convert` into
  a new volume of the target storage, with its progress in the task log, a format
  change allowed; the config is switched only once the copy is whole;
- a running VM's disk is copied by QEMU itself (`qemu_mirror`: blockdev-mirror in
  write-blocking mode, PVE's progress lines); once the job is ready every write
  reaches both volumes, the config is switched then (the commit point: the volume it
  names holds every acknowledged write whatever happens after), and the job
  completes, switching the guest to the new volume. Before the commit any failure
  or a cancelled task leaves the guest on its old volume, the config unchanged and
  the new volume freed;
- the old volume becomes `unusedN` (PVE's add_unused_volume), or with `delete` is
  freed (only if the VM owns it; a disk a snapshot holds is never deleted).
Storage is reached only through the storage interface: volumes bound to nodes
(replicated) are activated here for the copy and released after, so dir <->
replicated moves work either way.

To another VM (`DiskMoves.reassign`), as PVE's disk_reassignfn: both VMs on this
node, the source stopped unless the disk is `unusedN`; the storage renames the
volume for the target VM (`rename_volume`), the disk leaves the source's config and
enters the target's (as a config update: a running target hot-plugs it) or its
`unusedN`.

The checks are pure (`check_move`, `check_reassign`) and run twice, as PVE's: once
before the task starts (a refusal is the API's answer, nothing changes) and again
under the VM's lock in the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from binome.guest import cloudinit
from binome.guest import config as vmconf
from binome.guest.configs import VmConfig
from binome.guest.errors import GuestError, GuestFailure, HotplugProblems
from binome.guest.qemu_mirror import render_bytes
from binome.storage.base import StorageError, VolumeSource

if TYPE_CHECKING:
    from binome.guest.context import GuestContext
    from binome.guest.lifecycle import Lifecycle
    from binome.storage.base import Storage
    from binome.tasks.manager import Task

T = TypeVar("T")

FORMATS = ("raw", "qcow2", "vmdk")   # PVE's move_disk `format` enum


class MoveRefused(GuestFailure):
    """A disk move refused before anything changed: PVE's text; `param` names the
    parameter when PVE raises it as a parameter error (a 400), else None (a 500)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _modified(prefix: str = "") -> MoveRefused:
    return MoveRefused(f"{prefix}detected modified configuration - file changed by other "
                       f"user? Try again.")


def volume_of(key: str, value: Any) -> tuple[vmconf.DiskEntry | None, str | None]:
    """(the drive, its volid) of a config entry: `unusedN` holds just a volid."""
    if vmconf.is_unused_key(key):
        volid = str(value).split(",")[0]
        return None, volid or None
    drive = vmconf.parse_drive(key, str(value))
    return drive, drive.volid


def in_use_elsewhere(config: dict[str, Any], snapshots: dict[str, dict[str, Any]],
                     skip: str, volid: str) -> bool:
    """PVE's is_volume_in_use: another drive of the config, or any snapshot, uses it."""
    def uses(conf: dict[str, Any], skip_key: str | None) -> bool:
        for key, value in conf.items():
            if key == skip_key or not vmconf.is_drive_key(key):
                continue
            try:
                drive = vmconf.parse_drive(key, str(value))
            except ValueError:
                continue
            if drive.volid == volid and not drive.is_cdrom:
                return True
        return False

    return uses(config, skip) or any(uses(snap, None) for snap in snapshots.values())


@dataclass(frozen=True)
class MovePlan:
    """A checked move to another storage."""

    key: str
    old_volid: str
    storage: str
    format: str                 # resolved against the target storage's formats
    online: bool                # QEMU mirrors it (a running VM's drive)
    snapshotted: bool           # a snapshot (or another drive) still uses the volume
    delete: bool
    warnings: tuple[str, ...] = ()


def check_move(vmid: int, config: dict[str, Any], snapshots: dict[str, dict[str, Any]],
               digest: str, *, key: str, storage: str, fmt: str | None, delete: bool,
               want_digest: str | None, running: bool, old_format: str,
               target_content: tuple[str, ...], target_formats: tuple[str, ...]
               ) -> MovePlan:
    """PVE's $load_and_check_move (pure), in its order; MoveRefused with its texts."""
    if config.get("lock"):
        raise MoveRefused(f"VM is locked ({config['lock']})")
    if want_digest and want_digest != digest:
        raise _modified()
    if not config.get(key):
        raise MoveRefused(f"disk '{key}' does not exist")
    try:
        drive, volid = volume_of(key, config[key])
    except ValueError as exc:
        raise MoveRefused(f"unable to parse drive options for '{key}' - {exc}") from None
    if not volid:
        raise MoveRefused(f"disk '{key}' has no associated volume")
    if drive is not None and cloudinit.is_cloudinit_volid(volid):
        raise MoveRefused(f"{key}: binome writes the cloud-init drive at every start: "
                          f"delete it and add it again on storage '{storage}'")
    if drive is not None and drive.is_cdrom:
        raise MoveRefused("you can't move a cdrom")
    old_storage = volid.partition(":")[0]
    if old_storage == storage and (not fmt or fmt == old_format):
        raise MoveRefused("you can't move to the same storage with same format")
    if "images" not in target_content:
        raise MoveRefused(f"storage '{storage}' does not support vm images", "storage")
    snapshotted = in_use_elsewhere(config, snapshots, key, volid)
    if snapshotted and delete:
        raise MoveRefused("you can't move a disk with snapshots and delete the source")
    online = running and drive is not None
    if online and key == "tpmstate0":
        raise MoveRefused("cannot move TPM state while VM is running")
    if online and key == "efidisk0":
        raise MoveRefused("binome moves an EFI disk only while the VM is stopped (its "
                          "firmware holds it)")
    warnings = []
    hint = fmt or old_format
    resolved = hint if hint in target_formats else target_formats[0]
    if fmt and fmt != resolved:
        warnings.append(f"format '{fmt}' is not supported by the target storage "
                        f"'{storage}' - using '{resolved}' instead")
    if snapshotted:
        warnings.append("moving disk with snapshots, snapshots will not be moved!")
    return MovePlan(key, volid, storage, resolved, online, snapshotted, delete,
                    tuple(warnings))


def moved_config(config: dict[str, Any], plan: MovePlan, new_volid: str,
                 new_size: int | None) -> tuple[dict[str, Any], str | None]:
    """The config after the move (pure): the drive on `new_volid` (its options kept,
    `size` updated, `format` dropped as PVE's clone_disk does), the old volume as the
    lowest free `unusedN` unless deleted; (config, that unused key)."""
    new = dict(config)
    if vmconf.is_unused_key(plan.key):
        new[plan.key] = new_volid
    else:
        drive = vmconf.parse_drive(plan.key, str(config[plan.key]))
        options = {k: v for k, v in drive.options.items() if k != "format"}
        if new_size is not None:
            options["size"] = vmconf.format_size(new_size)
        new[plan.key] = ",".join([new_volid, *(f"{k}={v}" for k, v in options.items())])
    unused = None
    if not plan.delete:
        try:
            unused = vmconf.add_unused_volume(new, plan.old_volid)
        except ValueError as exc:
            raise MoveRefused(str(exc)) from None
    return new, unused


@dataclass(frozen=True)
class ReassignPlan:
    """A checked move of a disk to another VM."""

    key: str
    target_key: str
    volid: str
    value: str                  # the drive as the target gets it (its new volid aside)
    warnings: tuple[str, ...] = field(default=())


def check_reassign(vmid: int, source: VmConfig, target: VmConfig, *, key: str,
                   target_key: str, digest: str | None, target_digest: str | None,
                   source_running: bool) -> ReassignPlan:
    """PVE's $load_and_check_reassign_configs (pure; the node, the storage's rename
    feature and the permissions are the caller's), with PVE's texts."""
    for vm in (source, target):
        if vm.config.get("lock"):
            raise MoveRefused(f"VM is locked ({vm.config['lock']})")
    if source.config.get("template") or target.config.get("template"):
        raise MoveRefused("Can't move disks from or to template VMs")
    if digest and digest != source.digest:
        raise _modified(f"VM {vmid}: ")
    if target_digest and target_digest != target.digest:
        raise _modified(f"VM {target.vmid}: ")
    if key not in source.config:
        raise MoveRefused(f"Disk '{key}' for VM '{vmid}' does not exist")
    if target.config.get(target_key):
        raise MoveRefused(f"Target disk key '{target_key}' is already in use for VM "
                          f"'{target.vmid}'")
    try:
        drive, volid = volume_of(key, source.config[key])
    except ValueError as exc:
        raise MoveRefused(f"failed to parse source disk - {exc}") from None
    if not volid:
        raise MoveRefused(f"disk '{key}' has no associated volume")
    if drive is not None and (drive.is_cdrom or cloudinit.is_cloudinit_volid(volid)):
        raise MoveRefused("CD drive contents can't be moved to another VM")
    if in_use_elsewhere(source.config, source.snapshots, key, volid):
        raise MoveRefused("Can't move disk used by a snapshot to another VM")
    if source_running and not vmconf.is_unused_key(key):
        raise MoveRefused("Cannot move disk to another VM while the source VM is running - "
                          "detach first")
    # binome: protection also keeps a protected VM's disks from leaving it
    protected = vmconf.protection_error(source.config, f"can't move disk '{key}' to "
                                                       f"another VM")
    if protected:
        raise MoveRefused(protected)
    if vmconf.is_unused_key(target_key):
        value = volid
    else:
        value = str(source.config[key]) if drive is not None else volid
        try:
            vmconf.parse_drive(target_key, value)
        except ValueError as exc:
            raise MoveRefused(f"failed to parse source disk for target disk format - "
                              f"{exc}") from None
    return ReassignPlan(key, target_key, volid, value)


def with_volid(key: str, value: str, volid: str) -> str:
    """A drive value (or a bare volid) with its volume replaced."""
    if vmconf.is_unused_key(key):
        return volid
    rest = value.split(",", 1)
    return volid if len(rest) == 1 else f"{volid},{rest[1]}"


def without_drive(config: dict[str, Any], key: str) -> tuple[dict[str, Any], bool]:
    """The source config once its disk left for another VM: the key gone, and out of
    the boot order (True if it was in it), as PVE's disk_reassignfn."""
    new = dict(config)
    new.pop(key, None)
    in_order = key in vmconf.boot_order(config) and str(config.get("boot", "")).startswith(
        "order=")
    if in_order:
        vmconf.drop_from_boot_order(new, key)
    return new, in_order


_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


async def _uncancellable(aw: Awaitable[T]) -> tuple[T, bool]:
    """Await `aw` to its end even if the task is cancelled meanwhile: what a move does
    at and after its commit point must not stop half-way. (result, cancelled)."""
    inner = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(inner), cancelled
        except asyncio.CancelledError:
            if inner.done() and inner.cancelled():
                raise
            cancelled = True


def convert_argv(src: VolumeSource, dst: VolumeSource, bwlimit_kib: int | None = None, *,
                 snapname: str | None = None, shared: bool = False) -> list[str]:
    """`qemu-img convert -p -n` from one volume's source to another's (PVE's
    qemu_img_convert): `-l snapshot.name=` to read a snapshot, `-U` for an image a
    running QEMU holds (its snapshot's clusters do not change under it), `-r` KiB/s."""
    argv = ["qemu-img", "convert", "-p", "-n", "-f", src.format or "raw",
            "-O", dst.format or "raw"]
    if snapname:
        argv += ["-l", f"snapshot.name={snapname}"]
    if shared:
        argv += ["-U"]
    if bwlimit_kib:
        argv += ["-r", f"{bwlimit_kib}K"]
    return [*argv, src.source, dst.source]


async def convert_with_progress(task: Task, argv: list[str], size: int) -> None:
    """Run `qemu-img convert -p ...`, its progress in the task log (PVE's lines)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    said = None
    try:
        buf = b""
        while True:
            chunk = await proc.stdout.read(256)
            if not chunk:
                break
            buf += chunk
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            for part in parts:
                m = _PROGRESS_RE.search(part)
                if m and m.group(1) != said:
                    said = m.group(1)
                    percent = float(said)
                    task.log(f"transferred {render_bytes(int(size * percent / 100))} of "
                             f"{render_bytes(size)} ({said.decode()}%)")
        err = await proc.stderr.read()
        code = await proc.wait()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    if code != 0:
        raise GuestFailure(f"copy failed: {err.decode(errors='replace').strip() or code}")


class KeepTarget(GuestFailure):
    """A move failed where the new volume may be in use (the config may name it, or a
    mirror job still writes it): it is never freed then."""


@dataclass
class _State:
    committed: bool = False      # the config names the new volume


class DiskMoves:
    def __init__(self, ctx: GuestContext, lifecycle: Lifecycle) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle

    # ------------------------------------------------------------ to another storage

    async def target_storage(self, storage_id: str) -> Storage:
        try:
            return await self.ctx.storages.get(storage_id)
        except StorageError as exc:
            raise MoveRefused(str(exc)) from None

    async def check_move(self, vm: VmConfig, *, key: str, storage: str, fmt: str | None,
                         delete: bool, digest: str | None) -> MovePlan:
        """The checks of a move, storage facts looked up (no lock: the caller's)."""
        value = vm.config.get(key)
        old_format = "raw"
        if value:
            try:
                _, volid = volume_of(key, value)
                if volid:
                    old_format = (await self.ctx.storages.for_volid(volid)).volume_format(volid)
            except (ValueError, StorageError):
                pass        # reported by check_move, or by the copy
        target = await self.target_storage(storage) if value else None
        return check_move(
            vm.vmid, vm.config, vm.snapshots, vm.digest, key=key, storage=storage, fmt=fmt,
            delete=delete, want_digest=digest, running=self.ctx.runtime.is_running(vm.vmid),
            old_format=old_format,
            target_content=target.config.content if target else ("images",),
            target_formats=target.formats if target else ("raw",))

    async def move(self, task: Task, vmid: int, *, key: str, storage: str,
                   fmt: str | None = None, delete: bool = False, digest: str | None = None,
                   bwlimit_kib: int | None = None, user: str = "root@pam") -> None:
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            plan = await self.check_move(vm, key=key, storage=storage, fmt=fmt,
                                         delete=delete, digest=digest)
            await self.ctx.clusterlog.write(
                f"move disk VM {vmid}: move --disk {key} --storage {storage}", user=user,
                tag="qemu")
            for warning in plan.warnings:
                task.warn(warning)
            source = await self.ctx.storages.for_volid(plan.old_volid)
            target = await self.target_storage(storage)
            size = await source.size(plan.old_volid)
            task.log(f"create full clone of drive {key} ({plan.old_volid})")
            new = await target.alloc(vmid, size, plan.format)
            task.log(f"allocated target volume '{new}'")
            state = _State()
            try:
                if plan.online:
                    await self._mirror(task, vm, plan, source, target, new, size,
                                       bwlimit_kib, state)
                else:
                    await self._copy(task, vm, plan, source, target, new, size, bwlimit_kib,
                                     state)
            except BaseException as exc:
                if state.committed:
                    raise          # the config names the new volume: it stays
                task.log(f"storage migration failed: {exc}" if str(exc) else
                         "storage migration failed")
                if not isinstance(exc, KeepTarget):
                    await asyncio.shield(self._free_quietly(task, target, new))
                raise
            if vm.config.get("template") and not vmconf.is_unused_key(key):
                await self._as_base(task, vmid, key, new, target)
            if plan.delete:
                await self._drop_old(task, vm, plan.old_volid, source)

    async def _as_base(self, task: Task, vmid: int, key: str, volid: str,
                       storage: Storage) -> None:
        """PVE's move_disk of a template: the moved disk becomes a base image too
        (template_create for that disk), so linked clones can be made of it."""
        base = await storage.create_base(volid)
        if base == volid:
            return
        vm = await self.ctx.read(vmid)
        drive = vmconf.parse_drive(key, str(vm.config[key]))
        await self.ctx.configs.write(vm, {**vm.config, key: replace(
            drive, volid=base).format()})
        task.log(f"{key}: {volid} is now the base image {base}")

    async def _copy(self, task: Task, vm: VmConfig, plan: MovePlan, source: Storage,
                    target: Storage, new: str, size: int, bwlimit_kib: int | None,
                    state: _State) -> None:
        """qemu-img convert (a stopped VM, or an unusedN volume), then the config."""
        activated = await self.ctx.activate_here([plan.old_volid, new])
        try:
            src, dst = source.source(plan.old_volid), target.source(new)
            await self._convert(task, convert_argv(src, dst, bwlimit_kib), size)
        finally:
            await asyncio.shield(self._release(activated))
        if target.per_node_activation and not self.ctx.runtime.is_running(vm.vmid) \
                and new not in activated:
            # PVE deactivates the new volume of a stopped VM (its start activates it)
            with contextlib.suppress(Exception):
                await target.deactivate_volume(new)
        await self._commit(task, vm, plan, new, await self._size(target, new, size), state)

    async def _convert(self, task: Task, argv: list[str], size: int) -> None:
        await convert_with_progress(task, argv, size)

    async def _mirror(self, task: Task, vm: VmConfig, plan: MovePlan, source: Storage,
                      target: Storage, new: str, size: int, bwlimit_kib: int | None,
                      state: _State) -> None:
        """QEMU's mirror job; the config switches while it is ready (see the module
        notes), then the guest does."""
        runtime, vmid, key = self.ctx.runtime, vm.vmid, plan.key
        drive = vmconf.parse_drive(key, str(vm.config[key]))
        activated = await self.ctx.activate_here([new])
        try:
            dst = target.source(new)
            device = f"drive-{key}"
            task.log(f"drive mirror is starting for {device}" + (
                f" with bandwidth limit: {bwlimit_kib} KiB/s" if bwlimit_kib else ""))
            job = await runtime.mirror_start(
                vmid, key, dst.source, dst.format, drive.options.get("cache", "none"),
                speed=bwlimit_kib * 1024 if bwlimit_kib else None)
            try:
                await runtime.mirror_wait_ready(vmid, job, task.log)
                task.log("all 'mirror' jobs are ready")
                written = await self._commit(task, vm, plan, new,
                                             await self._size(target, new, size), state)
            except BaseException:
                if state.committed:
                    raise      # cannot be: the commit is the last step of this block
                task.log(f"{device}: Cancelling block job")
                try:
                    await asyncio.shield(runtime.mirror_cancel(vmid, job))
                except Exception as exc:
                    task.warn(f"{device}: cancelling the mirror job: {exc}")
                raise
        except BaseException:
            await asyncio.shield(self._release(activated))
            raise
        # the commit point is behind us: the switch runs to its end
        await _uncancellable(self._switch(task, vm, written, plan, job, dst.source,
                                          dst.format, source, state))

    async def _switch(self, task: Task, before: VmConfig, written: VmConfig, plan: MovePlan,
                      job: Any, new_source: str, new_format: str | None,
                      source: Storage, state: _State) -> None:
        runtime, vmid, device = self.ctx.runtime, before.vmid, f"drive-{plan.key}"
        task.log(f"{device}: Completing block job...")
        try:
            await runtime.mirror_complete(vmid, job, new_source, new_format)
        except GuestError as exc:
            if not runtime.is_running(vmid):
                # the guest is gone; the config names the new volume, which holds
                # every write it acknowledged (write-blocking mirror)
                task.warn(f"{device}: the guest stopped during the switch ({exc}); its "
                          f"config uses the new volume, the old one is kept")
                return
            # QEMU runs on the old volume: the config goes back to it first, while the
            # mirror still writes both, then the job is cancelled
            try:
                await self.ctx.configs.write(written, before.config)
            except Exception as back:
                raise KeepTarget(
                    f"{device}: the switch failed ({exc}) and the config could not be "
                    f"set back ({back}): the mirror job stays active, writing both "
                    f"volumes; run the move again or stop the VM") from None
            state.committed = False      # set back: the new volume may go
            with contextlib.suppress(Exception):
                await runtime.mirror_cancel(vmid, job)
            raise GuestFailure(f"{device}: block job cannot be completed - {exc}") from None
        task.log(f"{device}: Completed successfully.")
        task.log(f"{device}: mirror-job finished")
        if source.per_node_activation:
            # QEMU closed the old volume with its node: release this node's copy
            await self.ctx.deactivate_after(task, [plan.old_volid])

    async def _commit(self, task: Task, vm: VmConfig, plan: MovePlan, new: str,
                      new_size: int | None, state: _State) -> VmConfig:
        """The config switched to the new volume (CAS), run to its end even if the task
        is cancelled meanwhile. An unknown outcome (etcd did not answer) is settled by
        reading the config back; if that fails too, KeepTarget: the new volume stays."""
        config, unused = moved_config(vm.config, plan, new, new_size)

        async def write() -> VmConfig:
            try:
                return await self.ctx.configs.write(vm, config)
            except GuestFailure:
                raise                       # compared and refused: nothing written
            except Exception as exc:
                try:
                    current = await self.ctx.read(vm.vmid)
                except Exception:
                    raise KeepTarget(f"the config switch to '{new}' has an unknown "
                                     f"outcome ({exc}); '{new}' is kept") from None
                if current.config.get(plan.key) == config[plan.key]:
                    return current
                raise

        written, _ = await _uncancellable(write())
        state.committed = True
        if unused:
            task.log(f"adding source volume '{plan.old_volid}' as '{unused}' to config")
        return written

    async def _size(self, storage: Storage, volid: str, fallback: int) -> int | None:
        try:
            return await storage.size(volid)
        except StorageError:
            return fallback

    async def _drop_old(self, task: Task, vm: VmConfig, volid: str, source: Storage) -> None:
        """`delete=1`: the old volume freed after the switch (only if the VM owns it)."""
        if not vmconf.is_owned_volume(vm.vmid, volid):
            task.warn(f"source volume '{volid}' is not owned by VM {vm.vmid}: kept")
            return
        task.log(f"removing source volume '{volid}' after successful copy")
        try:
            if source.per_node_activation:
                with contextlib.suppress(StorageError):
                    await source.deactivate_volume(volid)
            await source.free(volid)
        except StorageError as exc:
            task.warn(f"could not remove {volid}: {exc}")

    async def _release(self, activated: list[str]) -> None:
        if activated:
            await self.ctx.deactivate_after(None, activated, timeout=10.0)

    async def _free_quietly(self, task: Task, storage: Storage, volid: str) -> None:
        try:
            if storage.per_node_activation:
                with contextlib.suppress(StorageError):
                    await storage.deactivate_volume(volid)
            await storage.free(volid)
            task.log(f"removed target volume '{volid}'")
        except Exception as exc:
            task.warn(f"could not remove target volume '{volid}': {exc}")

    # ------------------------------------------------------------ to another VM

    async def check_reassign(self, vmid: int, target_vmid: int, *, key: str,
                             target_key: str, digest: str | None,
                             target_digest: str | None) -> tuple[ReassignPlan, Storage]:
        """The checks of a reassign (no lock: the caller's) and the volume's storage."""
        owner, target_owner = (await self.ctx.configs.owner(vmid),
                               await self.ctx.configs.owner(target_vmid))
        if owner is None:
            raise MoveRefused(f"could not find VM {vmid}")
        if target_owner is None:
            raise MoveRefused(f"could not find target VM {target_vmid}")
        if owner != target_owner:
            raise MoveRefused(f"Both VMs need to be on the same node ({owner} != "
                              f"{target_owner})")
        source = await self.ctx.read(vmid)
        target = await self.ctx.read(target_vmid)
        plan = check_reassign(vmid, source, target, key=key, target_key=target_key,
                              digest=digest, target_digest=target_digest,
                              source_running=self.ctx.runtime.is_running(vmid))
        try:
            storage = await self.ctx.storages.for_volid(plan.volid)
        except StorageError as exc:
            raise MoveRefused(str(exc)) from None
        if not storage.can_rename:
            raise MoveRefused("Storage does not support moving of this disk to another VM")
        return plan, storage

    async def reassign(self, task: Task, vmid: int, target_vmid: int, *, key: str,
                       target_key: str, digest: str | None = None,
                       target_digest: str | None = None) -> None:
        first, second = sorted((vmid, target_vmid))     # one lock order: no deadlock
        async with self.ctx.lock(first), self.ctx.lock(second):
            plan, storage = await self.check_reassign(
                vmid, target_vmid, key=key, target_key=target_key, digest=digest,
                target_digest=target_digest)
            source = await self.ctx.read(vmid)
            task.log(f"reassign disk '{key}' from VM '{vmid}' as '{target_key}' to VM "
                     f"'{target_vmid}'")
            try:
                new_volid = await storage.rename_volume(plan.volid, target_vmid)
            except StorageError as exc:
                raise GuestFailure(str(exc)) from None
            config, in_order = without_drive(source.config, key)
            if in_order:
                task.log(f"removing disk '{key}' from boot order config")
            try:
                await self.ctx.configs.write(source, config)
            except BaseException:
                with contextlib.suppress(Exception):
                    await storage.rename_volume(new_volid, vmid)
                raise
            task.log(f"removing disk '{key}' from VM '{vmid}' config")
            value = with_volid(target_key, plan.value, new_volid)
            try:
                if vmconf.is_unused_key(target_key):
                    target = await self.ctx.read(target_vmid)
                    await self.ctx.configs.write(target, {**target.config,
                                                          target_key: value})
                else:
                    await self.lifecycle.update_locked(target_vmid, {target_key: value}, [],
                                                       target_digest, task=task)
            except HotplugProblems as exc:
                # written, left pending for the target's next start (PVE's update_vm)
                task.warn(f"VM {target_vmid}: {exc}")
            except Exception as exc:
                # the volume is the target's now: never lost, at worst unreferenced
                task.warn(f"VM {target_vmid}: {target_key} not set ({exc}); keeping "
                          f"'{new_volid}' as an unused disk")
                target = await self.ctx.read(target_vmid)
                config = dict(target.config)
                vmconf.add_unused_volume(config, new_volid)
                await self.ctx.configs.write(target, config)
