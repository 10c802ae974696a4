"""A live restore (PVE's `live-restore`): the restored VM runs at once, its disks filled
from the backup in the background.

Owns nothing in the cluster: the restore (`backups.Backups.restore`) has allocated the
volumes and written the config (locked `create`, as PVE keeps it for the whole restore);
this starts the guest on them and fills them. How, with the QEMU Debian ships (PVE's
`alloc-track` driver is its own patch): each disk is served read-only from the backup
store by binomed's NBD server (`binome.backup.nbd_server`, chunks checked and decrypted
as a restore reads them); QEMU opens, instead of the volume, a temporary qcow2 overlay
whose backing file is that export (the guest's writes land in the overlay, its reads of
untouched blocks come from the backup), and a mirror job per disk (`qemu_mirror`,
write-blocking once ready) copies overlay + backing into the volume, then switches the
drive to it (`block-job-complete`). Then the overlays and the server go, and the lock.
On any failure the guest is stopped, as PVE does ("live-restore failed"): the volumes
then hold an incomplete disk, and the task says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from binome.backup.datastore import SnapshotRef
from binome.backup.dumpstore import backup_name
from binome.backup.index import FixedIndex
from binome.backup.nbd_server import ImageSource, NbdServer
from binome.backup.reader import RestoreError
from binome.guest.tools import run_tool
from binome.tasks.manager import Task, TaskFailed

if TYPE_CHECKING:
    from binome.backup.dumpstore import DumpStore
    from binome.backup.remote import RemoteDumpStore
    from binome.guest.context import GuestContext
    from binome.guest.lifecycle import Lifecycle

OVERLAY_CACHE = "writeback"   # the overlay lives in the run directory (tmpfs: no O_DIRECT)


@dataclass(frozen=True)
class LiveDisk:
    """One disk restored live: its config key, its image's index in the backup (read once,
    by the restore that allocated the volume), its new volume."""

    key: str
    index: FixedIndex
    volid: str


def chunk_loader(store: DumpStore | RemoteDumpStore, index: FixedIndex) -> ImageSource:
    """The image `index` describes, read from `store` by chunk (checked, decrypted)."""

    def load(position: int) -> bytes:
        data = store.chunks.read_chunk(index.digests[position], store.crypt)
        start, end = index.chunk_range(position)
        if len(data) != end - start:
            raise RestoreError(f"chunk {position} has {len(data)} bytes, not {end - start}")
        return data

    return ImageSource(index.size, index.chunk_size, load)


async def live_restore(ctx: GuestContext, lifecycle: Lifecycle, task: Task, vmid: int,
                       store: DumpStore | RemoteDumpStore, ref: SnapshotRef, archive: str,
                       disks: list[LiveDisk], bwlimit_kib: int | None = None) -> None:
    """Start VM `vmid` on its backup and fill `disks` while it runs (module notes), each
    mirror job at most `bwlimit_kib` KiB/s."""
    task.log("starting VM for live-restore")
    task.log(f"repository: '{archive.partition(':')[0]}', snapshot: '{backup_name(ref)}'")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"live-restore-{vmid}-", dir=ctx.runtime.run_dir))
    server: NbdServer | None = None
    try:
        exports = {d.key: chunk_loader(store, d.index) for d in disks}
        server = NbdServer(workdir / "nbd.sock", exports)
        await server.start()
        overlays: dict[str, Path] = {}
        for d in disks:
            overlay = workdir / f"{d.key}.qcow2"
            backing = f"nbd+unix:///{d.key}?socket={server.path}"
            await run_tool("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-F", "raw",
                       "-b", backing, str(overlay), str(exports[d.key].export_size))
            overlays[d.key] = overlay
            task.log(f"restoring 'drive-{d.key}' to '{d.volid}'")
        await _start_on_overlays(ctx, lifecycle, task, vmid, disks, overlays)
        await _fill(ctx, task, vmid, disks, bwlimit_kib)
        task.log("restore-drive jobs finished successfully, removing all tracking block "
                 "devices to disconnect from the backup")
    except BaseException as exc:
        why = str(exc) or type(exc).__name__
        if server is not None and server.errors:
            why += f" (backup reads failed: {server.errors[0]})"
        task.warn(f"An error occurred during live-restore: {why}")
        if ctx.runtime.is_running(vmid):
            ctx.believed_running.discard(vmid)
            with contextlib.suppress(Exception):
                await asyncio.shield(ctx.runtime.stop(vmid, timeout=10.0))
        raise TaskFailed("live-restore failed: the VM is stopped and its disks are "
                         "incomplete; restore it again") from None
    finally:
        if server is not None:
            await server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    vm = await ctx.read(vmid)
    if vm.config.get("lock") == "create":
        await ctx.configs.set_lock(vm, None)
    task.log(f"live-restore of VM {vmid} done in {time.monotonic() - started:.1f} s")


async def _start_on_overlays(ctx: GuestContext, lifecycle: Lifecycle, task: Task, vmid: int,
                             disks: list[LiveDisk], overlays: dict[str, Path]) -> None:
    """The guest's QEMU, each restored disk opened through its overlay; the volumes are
    active here (the mirror writes them)."""
    async with ctx.lock(vmid):
        vm = await ctx.read(vmid)
        await ctx.activate_here([d.volid for d in disks])
        await lifecycle.regenerate_cloudinit(vm, task)
        spec = await lifecycle.launch_spec(vm, warn=task.log)
        spec = dataclasses.replace(spec, disks=tuple(
            dataclasses.replace(s, source=str(overlays[s.name]), format="qcow2",
                                cache=OVERLAY_CACHE)
            if s.name in overlays else s for s in spec.disks))
        pid = await ctx.runtime.start(spec)
        ctx.believed_running.add(vmid)
        task.log(f"VM {vmid} started (pid {pid})")


async def _fill(ctx: GuestContext, task: Task, vmid: int, disks: list[LiveDisk],
                bwlimit_kib: int | None) -> None:
    """One mirror job per disk into its volume; each drive switched to its volume once
    every job is ready."""
    runtime = ctx.runtime
    jobs = []
    try:
        config = (await ctx.read(vmid)).config
        for d in disks:
            target = (await ctx.storages.for_volid(d.volid)).source(d.volid)
            cache = _drive_cache(config.get(d.key))
            job = await runtime.mirror_start(vmid, d.key, target.source, target.format, cache,
                                             speed=bwlimit_kib * 1024 if bwlimit_kib else None)
            jobs.append((d, job, target, cache))
        for _d, job, _target, _cache in jobs:
            await runtime.mirror_wait_ready(vmid, job, task.log)
        task.log("all 'mirror' jobs are ready")
        while jobs:
            d, job, target, cache = jobs[0]
            await runtime.mirror_complete(vmid, job, target.source, target.format, cache)
            jobs.pop(0)
            task.log(f"drive-{d.key}: the guest reads and writes '{d.volid}' now")
    except BaseException:
        for _d, job, _target, _cache in jobs:
            with contextlib.suppress(Exception):
                await asyncio.shield(runtime.mirror_cancel(vmid, job))
        raise


def _drive_cache(value: object) -> str:
    for part in str(value or "").split(",")[1:]:
        name, _, setting = part.partition("=")
        if name == "cache" and setting:
            return setting
    return "none"
