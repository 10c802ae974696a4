"""Backups and restores of this node's guests: PVE's `vzdump` job and `qmrestore`.

Owns how a guest's disks are read for a backup and written back by a restore: the
`backup` config lock for the duration of a backup, the modes (`stop`: shut the guest
down, read its images, start it again; `suspend` and `snapshot`: the disks as they were
at the start, by QEMU image fleecing), and the vzdump task log. The backup's format and
layout are the `binome.backup` library's (`dumpstore`: deduplicated chunks, one fixed
index per disk, the guest config); the storage that holds backups gives its datastore
(`Storage.backup_store`).

Image fleecing, for the disks of a running guest: per disk a temporary qcow2
"fleecing" node whose backing is the disk's node, then one QMP `transaction` of
`blockdev-backup sync=none` jobs from each disk to its fleecing node (one instant for
all disks). From then on a guest write first copies the old data to the fleecing node,
so the fleecing node reads as the disk was at that instant. QEMU's NBD server exports
the fleecing nodes on a unix socket and the backup reads them (`binome.backup.nbd`).
(QEMU 7.1's `copy-before-write` + `snapshot-access` nodes, put in with a `qom-set` of
the device's `drive`, did not see the guest's virtio-blk writes of a `-drive` disk in
QEMU 7.2; the integration test caught it.) A stopped guest's qcow2 image is read
through `qemu-nbd`, a raw image directly.

Incremental backups (see `binome.backup.incremental` for the trust rule): the same
transaction starts a new dirty bitmap on each drive and disables the one the previous
backup started, so the old bitmap holds exactly the writes between the two backup
instants. When the previous backup may be trusted, the fleecing export also exports
the old bitmap, the backup asks the NBD server for its dirty extents
(`qemu:dirty-bitmap:<name>`) and reads only the chunks under them; every other chunk
comes from the previous backup's index. Once the backup is committed the old bitmap
is removed; if it fails, the new bitmap is merged back into the old one and the old one
re-enabled, so no dirty bit is lost. On a raw file or an NBD-backed (replicated) volume
the bitmaps are QEMU's transient ones; on a qcow2 image of a dir storage they are
persistent: QEMU writes them into the image when it closes it cleanly. A running
guest's bitmap is still trusted only within one QEMU process (`incremental.decide`).

A stopped guest's qcow2 images are read through `qemu-nbd`: the backup adds its new
bitmap to each image (`qemu-img bitmap --add`) and, when the previous backup's bitmap
is in the image and trusted (recording, not flagged `in-use` by a QEMU that died with
the image open), exports it (`qemu-nbd -B`) and reads only its dirty chunks; once
committed the old bitmap is removed, after a failure the new one. So "run, back up,
stop, back up" reads only what the guest wrote in between. A snapshot rollback drops
these bitmaps (`qemu-img snapshot -a` refuses an image with them), and the next backup
is full. Raw images of a stopped guest are read in full.

efidisk0 (with `bios: ovmf`, as PVE's vzdump) and tpmstate0 are backed up as disks of
their own (`drive-efidisk0.img.fidx`, `drive-tpmstate0.img.fidx`). A running guest's
efidisk0 is a QEMU pflash drive, fleeced with the others; its tpmstate0 belongs to
swtpm and is read from its file as it is at that moment (PVE reads it likewise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.backup.chunkstore import DEFAULT_CHUNK_SIZE, encode_blob
from binome.backup.crypt import CryptError
from binome.backup.datastore import DatastoreError, SnapshotRef
from binome.backup.dumpstore import GUEST_CONFIG, DumpStore, DumpWriter, backup_name, ref_of_name
from binome.backup.incremental import (
    BITMAP_PREFIX,
    RECORD_FILE,
    STOPPED,
    BitmapRecord,
    LiveBitmap,
    LiveDrive,
    PreviousBackup,
    Restored,
    TrustDecision,
    decide,
)
from binome.backup.index import FixedIndex, FixedIndexError
from binome.backup.nbd import NbdError, NbdExport, parse_nbd_unix_uri
from binome.backup.prune import Mark, PruneOptions
from binome.backup.reader import RestoreError, RestoreStats, restore_to
from binome.backup.remote import RemoteDumpStore, RemoteWriter
from binome.backup.writer import (
    BackupStats,
    BlockSource,
    FileSource,
    Throttle,
    backup_image,
    dirty_chunks,
)
from binome.guest import config as vmconf
from binome.guest.errors import GuestError, GuestFailure
from binome.guest.live_restore import LiveDisk, live_restore
from binome.guest.process import proc_stat
from binome.guest.tools import run_tool
from binome.storage.base import StorageError, VolumeSource, split_volid
from binome.tasks.manager import Task, TaskFailed
from binome.units import render_bytes

if TYPE_CHECKING:
    from binome.guest.context import GuestContext
    from binome.guest.guest_agent import GuestAgent
    from binome.guest.lifecycle import Lifecycle
    from binome.storage.base import Storage

log = logging.getLogger("binome.guest.backups")

MODES = ("snapshot", "suspend", "stop")
_NBD_WAIT = 10.0
_SHUTDOWN_TIMEOUT = 60.0
_BITMAP_BUSY_WAIT = 10.0   # an export being deleted still holds its bitmap briefly

# where a backup goes: a local datastore (dir storage) or a backup server's
BackupStore = DumpStore | RemoteDumpStore
BackupWriter = DumpWriter | RemoteWriter


def human_size(count: float) -> str:
    """PVE's render_bytes as vzdump logs it: `4.0 GiB`, `512 B`."""
    return render_bytes(count, whole_bytes=True)


def human_duration(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def expand_notes(template: str, *, vmid: int, name: str, node: str, cluster: str) -> str:
    """PVE's notes-template variables: {{cluster}}, {{guestname}}, {{node}}, {{vmid}};
    a literal `\\n` is a new line."""
    text = template.replace("\\n", "\n")
    for key, value in (("cluster", cluster), ("guestname", name), ("node", node),
                       ("vmid", str(vmid))):
        text = text.replace("{{" + key + "}}", value)
    return text


@dataclass
class VzdumpOptions:
    storage: str
    mode: str = "snapshot"
    notes_template: str | None = None
    protected: bool = False
    prune: PruneOptions | None = None   # prune-backups given with the job (remove=1)
    bwlimit_kib: int = 0                # KiB/s, 0 = unlimited
    command_line: str = ""


@dataclass
class _Disk:
    key: str
    volid: str
    source: str            # path or URI QEMU opens
    fmt: str
    index_name: str = ""
    # a running guest's drive is read through QEMU (fleecing, dirty bitmap): the bus
    # disks and efidisk0 (the pflash vars); tpmstate0 is swtpm's file, read as it is
    in_qemu: bool = True

    def __post_init__(self) -> None:
        self.index_name = f"drive-{self.key}.img.fidx"


@dataclass
class _Fleecing:
    """What a live backup added to a running QEMU, to be undone in reverse."""

    vmid: int
    workdir: Path
    socket: Path
    fleece_dir: Path
    nodes: list[str] = field(default_factory=list)         # blockdev-del, reverse order
    jobs: list[str] = field(default_factory=list)          # the backup jobs (sync=none)
    exports: list[str] = field(default_factory=list)
    server: bool = False


@dataclass
class _Bitmaps:
    """The dirty bitmaps a live backup started and disabled, to settle once it ends."""

    vmid: int
    new: str                                                 # started on every drive
    nodes: dict[str, str] = field(default_factory=dict)      # disk key -> QEMU node
    bases: dict[str, str] = field(default_factory=dict)      # disk key -> disabled bitmap
    contexts: dict[str, str] = field(default_factory=dict)   # trusted: key -> meta context
    started: bool = False


@dataclass
class _Incremental:
    """What a live backup needs to read incrementally: the previous backup's indexes
    of the trusted drives and the decision."""

    decision: TrustDecision
    previous: SnapshotRef | None
    bases: dict[str, FixedIndex] = field(default_factory=dict)


def qemu_instance(pidfile: Path) -> str:
    """One QEMU process, told apart from any other ever run on this machine: boot id,
    pid, start time. A fresh unique string when it cannot be read (never trusted)."""
    try:
        pid = int(pidfile.read_text().strip())
        stat = proc_stat(pid)
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except (OSError, ValueError):
        stat = None
    if stat is None:
        return f"unknown-{uuid.uuid4().hex}"
    return f"{boot}:{pid}:{stat.start_ticks}"


def previous_backup(store: BackupStore, vmid: int) -> tuple[SnapshotRef, PreviousBackup] | None:
    """The newest finished backup of VM `vmid` in `store`, with its bitmap record."""
    refs = store.snapshots("vm", str(vmid))
    if not refs:
        return None
    ref = refs[-1]
    unusable = None
    try:
        manifest = store.manifest(ref)
        state = (manifest.verify_state or {}).get("state")
    except DatastoreError:
        manifest, state = None, "failed"
    if manifest is not None and manifest.crypt_fingerprint != (
            store.crypt.fingerprint if store.crypt is not None else None):
        # its chunk ids are another key's (or plain): none can be reused under this one
        unusable = (f"previous backup {backup_name(ref)} was made with another encryption "
                    f"key (or none)")
    try:
        record = BitmapRecord.from_json(store.read_file(ref, RECORD_FILE))
    except (OSError, DatastoreError, CryptError) as error:
        record = None
        if isinstance(error, CryptError) and unusable is None:
            unusable = str(error)
    return ref, PreviousBackup(backup_name(ref), ref.backup_time, record,
                               verify_failed=state == "failed", unusable=unusable)


class _Progress:
    """vzdump's progress lines, at most one per 10 %, from the writer's thread."""

    def __init__(self, emit: Callable[[str], None], total: int) -> None:
        self.emit, self.total = emit, max(total, 1)
        self.started = time.monotonic()
        self.done_before = 0   # bytes of earlier disks
        self.read_before = 0
        self.last_step = -1

    def __call__(self, stats: BackupStats) -> None:
        done = self.done_before + stats.bytes_done
        percent = done * 100 // self.total
        step = percent // 10
        if step == self.last_step:
            return
        self.last_step = step
        elapsed = max(time.monotonic() - self.started, 1e-6)
        read = self.read_before + stats.bytes_read
        self.emit(f"INFO: {percent:3d}% ({human_size(done)} of {human_size(self.total)}) "
                  f"in {int(elapsed)}s, read: {human_size(read / elapsed)}/s, "
                  f"write: {human_size(stats.bytes_stored / elapsed)}/s")


class Backups:
    """The vzdump job and the restore of this node's guests."""

    def __init__(self, ctx: GuestContext, lifecycle: Lifecycle, agent: GuestAgent) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle
        self.agent = agent
        # restores made here since the daemon started: the next backup says why it is full
        self.restored: dict[int, Restored] = {}

    # ------------------------------------------------------------------ the job

    async def selected(self, vmids: list[int] | None, exclude: list[int]) -> list[int]:
        """The guests of this node a job backs up: the given ones, or all but `exclude`."""
        if vmids is not None:
            return vmids
        return sorted(vm.vmid for vm in await self.ctx.configs.list(self.ctx.node)
                      if vm.vmid not in exclude)

    async def run_job(self, task: Task, vmids: list[int], options: VzdumpOptions) -> None:
        """Back up each guest in turn; a failure of one is logged and the job goes on."""
        task.log(f"INFO: starting new backup job: vzdump {options.command_line}".rstrip())
        failed = []
        for vmid in vmids:
            try:
                await self.backup_vm(task, vmid, options)
            except Exception as error:
                if not isinstance(error, (GuestFailure, GuestError, TaskFailed,
                                          DatastoreError, StorageError, NbdError, OSError)):
                    log.exception("backup of VM %s failed", vmid)
                task.log(f"ERROR: Backup of VM {vmid} failed - {error}")
                failed.append(vmid)
        if failed:
            task.log("INFO: Backup job finished with errors")
            raise TaskFailed("job errors")
        task.log("INFO: Backup job finished successfully")

    async def backup_vm(self, task: Task, vmid: int, options: VzdumpOptions) -> SnapshotRef:
        started = time.time()
        task.log(f"INFO: Starting Backup of VM {vmid} (qemu)")
        task.log(f"INFO: Backup started at {datetime.now():%Y-%m-%d %H:%M:%S}")
        storage = await self.ctx.storages.get(options.storage)
        store = storage.backup_store()
        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if vm.node != self.ctx.node:
                raise GuestFailure(f"VM {vmid} is not on node '{self.ctx.node}'")
            if vm.config.get("template"):
                raise GuestFailure(f"VM {vmid} is a template: back up its clones instead")
            if vm.config.get("lock"):
                raise GuestFailure(f"VM is locked ({vm.config['lock']})")
            config = dict(vm.config)
            await self.ctx.configs.set_lock(vm, "backup")
        try:
            return await self._backup_locked(task, vmid, config, store, options, started)
        finally:
            with contextlib.suppress(Exception):
                async with self.ctx.lock(vmid):
                    current = await self.ctx.read(vmid)
                    if current.config.get("lock") == "backup":
                        await self.ctx.configs.set_lock(current, None)

    async def _disks(self, config: dict[str, Any], task: Task) -> list[_Disk]:
        disks = []
        for entry in vmconf.disks(config):
            if not entry.volid or entry.is_cdrom:
                continue
            if entry.options.get("backup") == "0":
                task.log(f"INFO: exclude disk '{entry.key}' '{entry.volid}' (backup=no)")
                continue
            storage = await self.ctx.storages.for_volid(entry.volid)
            source = storage.source(entry.volid)
            size = entry.size or await storage.size(entry.volid)
            task.log(f"INFO: include disk '{entry.key}' '{entry.volid}' {human_size(size)}")
            disks.append(_Disk(entry.key, entry.volid, source.source, source.format or "raw"))
        for entry in vmconf.special_drives(config):
            # PVE's vzdump: efidisk0 only with an OVMF BIOS (otherwise nothing uses it)
            if not entry.volid:
                continue
            if entry.key == "efidisk0" and config.get("bios") != "ovmf":
                task.log(f"INFO: exclude disk '{entry.key}' '{entry.volid}' (efidisk but no "
                         f"OMVF BIOS)")
                continue
            storage = await self.ctx.storages.for_volid(entry.volid)
            source = storage.source(entry.volid)
            size = entry.size or await storage.size(entry.volid)
            task.log(f"INFO: include disk '{entry.key}' '{entry.volid}' {human_size(size)}")
            disks.append(_Disk(entry.key, entry.volid, source.source, source.format or "raw",
                               in_qemu=entry.key != "tpmstate0"))
        if not disks:
            raise GuestFailure("no disks to back up")
        return disks

    async def _backup_locked(self, task: Task, vmid: int, config: dict[str, Any],
                             store: BackupStore, options: VzdumpOptions,
                             started: float) -> SnapshotRef:
        runtime = self.ctx.runtime
        running = runtime.is_running(vmid)
        task.log(f"INFO: status = {'running' if running else 'stopped'}")
        name = str(config.get("name", f"vm{vmid}"))
        task.log(f"INFO: VM Name: {name}")
        config.pop("lock", None)
        disks = await self._disks(config, task)
        mode = options.mode
        if mode != "stop" and not running:
            task.log(f"INFO: backup mode: stop (the VM is not running; mode {mode} needs no "
                     f"more)")
        else:
            task.log(f"INFO: backup mode: {mode}")
        restart = False
        if mode == "stop" and running:
            task.log("INFO: stopping virtual guest")
            await runtime.shutdown(vmid, timeout=_SHUTDOWN_TIMEOUT, force_stop=True)
            running, restart = False, True
        # a backup server's datastore is across the network: its calls run in threads
        writer: BackupWriter = await asyncio.to_thread(store.begin, "vm", str(vmid))
        task.log(f"INFO: creating vzdump archive {store.describe(writer.ref)}")
        bitmaps: _Bitmaps | None = None
        image_bitmaps: _Bitmaps | None = None
        try:
            conf = vmconf.format_conf(config).encode()
            if writer.crypt is not None:
                conf = encode_blob(conf, writer.crypt)   # the guest's config is its data too
                task.log(f"INFO: encrypting the backup (key fingerprint "
                         f"{writer.crypt.fingerprint})")
            await asyncio.to_thread(writer.add_file, GUEST_CONFIG, conf)
            if running:
                stats, bitmaps, record = await self._backup_running(task, vmid, disks, writer,
                                                                    store, options, config)
                await asyncio.to_thread(writer.add_file, RECORD_FILE, record.to_json())
            else:
                stats, image_bitmaps, image_record = await self._backup_stopped(
                    task, vmid, disks, writer, store, options)
                if image_record is not None:
                    await asyncio.to_thread(writer.add_file, RECORD_FILE,
                                            image_record.to_json())
            notes = ""
            if options.notes_template:
                notes = expand_notes(options.notes_template, vmid=vmid, name=name,
                                     node=self.ctx.node,
                                     cluster=self.ctx.cluster.cluster_name or "")
            ref = await asyncio.to_thread(writer.commit, notes, options.protected)
            if image_bitmaps is not None:
                # before a `stop` mode restart: QEMU will hold the images
                settled, image_bitmaps = image_bitmaps, None
                await self._settle_image_bitmaps(task, settled, committed=True)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(writer.abort))
            if bitmaps is not None:
                await asyncio.shield(self._settle_bitmaps(task, bitmaps, committed=False))
            if image_bitmaps is not None:
                await asyncio.shield(self._settle_image_bitmaps(task, image_bitmaps,
                                                                committed=False))
            raise
        finally:
            if restart:
                task.log("INFO: restarting virtual guest")
                try:
                    await self.lifecycle.start_vm(task, vmid)
                except Exception as error:
                    task.log(f"ERROR: could not restart VM {vmid}: {error}")
        if bitmaps is not None:
            await self._settle_bitmaps(task, bitmaps, committed=True)
        self.restored.pop(vmid, None)
        self._log_totals(task, stats, await asyncio.to_thread(store.used_bytes, ref),
                         store.volid(ref))
        if notes:
            task.log("INFO: adding notes to backup")
        if options.protected:
            task.log("INFO: marking backup as protected")
        if options.prune is not None:
            await self._prune(task, store, vmid, options.prune)
        task.log(f"INFO: Finished Backup of VM {vmid} "
                 f"({human_duration(time.time() - started)})")
        task.log(f"INFO: Backup finished at {datetime.now():%Y-%m-%d %H:%M:%S}")
        return ref

    def _log_totals(self, task: Task, stats: BackupStats, archive_size: int,
                    volid: str) -> None:
        seconds = max(stats.seconds, 1e-6)
        task.log(f"INFO: transferred {human_size(stats.bytes_read)} in {int(stats.seconds)} "
                 f"seconds ({human_size(stats.bytes_read / seconds)}/s)")
        task.log(f"INFO: backup stored {human_size(stats.bytes_stored)} in {stats.chunks_new} "
                 f"new chunks, {stats.chunks_reused} chunks already in the store "
                 f"(deduplicated)")
        task.log(f"INFO: archive file size: {human_size(archive_size)}")
        task.log(f"INFO: backup volume: {volid}")

    async def _prune(self, task: Task, store: BackupStore, vmid: int,
                     options: PruneOptions) -> None:
        task.log("INFO: prune older backups with retention: "
                 + ", ".join(f"{k}={v}" for k, v in options.counts().items() if v))
        marks = await asyncio.to_thread(store.prune_group, "vm", str(vmid), options)
        removed = [ref for ref, mark in marks.items() if mark is Mark.REMOVE]
        for ref in removed:
            task.log(f"INFO: removed backup {store.volid(ref)}")
        task.log(f"INFO: pruned {len(removed)} backup(s)")

    async def _read_disks(self, task: Task, disks: list[_Disk], writer: BackupWriter,
                          options: VzdumpOptions,
                          sources: Callable[[_Disk], BlockSource],
                          incremental: tuple[_Incremental, _Bitmaps] | None = None
                          ) -> BackupStats:
        """Read every disk into the writer (in a worker thread); the summed stats.

        `incremental`: the drives whose bitmap is trusted are read only where it says
        dirty (their sources are NBD exports negotiated with its meta context)."""
        loop = asyncio.get_running_loop()

        def emit(line: str) -> None:
            loop.call_soon_threadsafe(task.log, line)

        def work() -> BackupStats:
            opened = [sources(d) for d in disks]
            try:
                total = sum(s.size for s in opened)
                dirty = self._dirty_extents(emit, disks, opened, incremental)
                progress = _Progress(emit, total)
                summed = BackupStats()
                for disk, source in zip(disks, opened, strict=True):
                    previous = incremental[0].bases.get(disk.key) if incremental else None
                    stats = backup_image(writer, disk.index_name, source, progress=progress,
                                         bwlimit=options.bwlimit_kib * 1024 or None,
                                         previous=previous if disk.key in dirty else None,
                                         dirty=dirty.get(disk.key))
                    if stats.full_reason:
                        emit(f"INFO: {disk.key}: dirty bitmap not used ({stats.full_reason}): "
                             f"read in full")
                    progress.done_before += stats.size
                    progress.read_before += stats.bytes_read
                    for name in ("size", "bytes_read", "chunks_read", "chunks_new",
                                 "chunks_reused", "bytes_stored", "bytes_dirty"):
                        setattr(summed, name, getattr(summed, name) + getattr(stats, name))
                summed.seconds = time.monotonic() - progress.started
                return summed
            finally:
                for source in opened:
                    close = getattr(source, "close", None)
                    if close is not None:
                        close()

        return await asyncio.to_thread(work)

    @staticmethod
    def _dirty_extents(emit: Callable[[str], None], disks: list[_Disk],
                       opened: list[BlockSource],
                       incremental: tuple[_Incremental, _Bitmaps] | None
                       ) -> dict[str, list[tuple[int, int]]]:
        """The dirty extents of each trusted drive (from its NBD export's bitmap
        context), logged like PBS's fast incremental mode (worker thread)."""
        if incremental is None:
            return {}
        plan, bitmaps = incremental
        extents: dict[str, list[tuple[int, int]]] = {}
        dirty_total = size_total = 0
        for disk, source in zip(disks, opened, strict=True):
            size_total += source.size
            context = bitmaps.contexts.get(disk.key)
            base = plan.bases.get(disk.key)
            if context is None or base is None or not isinstance(source, NbdExport):
                dirty_total += source.size
                continue
            extents[disk.key] = source.dirty_extents(context)
            chunks = dirty_chunks(extents[disk.key], base.chunk_size, source.size)
            dirty = sum(min(base.chunk_size, source.size - p * base.chunk_size)
                        for p in chunks)
            dirty_total += dirty
            emit(f"INFO: {disk.key}: dirty-bitmap status: OK ({human_size(dirty)} of "
                 f"{human_size(source.size)} dirty)")
        if extents:
            emit(f"INFO: using fast incremental mode (dirty-bitmap), {human_size(dirty_total)} "
                 f"dirty of {human_size(size_total)} total")
        return extents

    # ------------------------------------------------------------ stopped guests

    async def _backup_stopped(self, task: Task, vmid: int, disks: list[_Disk],
                              writer: BackupWriter, store: BackupStore,
                              options: VzdumpOptions
                              ) -> tuple[BackupStats, _Bitmaps | None, BitmapRecord | None]:
        """Read a stopped guest's images. Its qcow2 images on a dir storage carry a
        persistent dirty bitmap: a new one is added to each at this backup's instant,
        and a trusted one the previous backup added is exported by qemu-nbd (`-B`) so
        that only its dirty chunks are read. The bitmaps are settled by the caller
        (`_settle_image_bitmaps`) once the backup is committed or has failed."""
        servers: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}
        workdir = Path(tempfile.mkdtemp(prefix=f"binome-vzdump-{vmid}-"))
        images = [d for d in disks if _local_qcow2(d)]
        bitmaps = _Bitmaps(vmid, f"{BITMAP_PREFIX}{uuid.uuid4().hex[:12]}") if images else None
        plan: _Incremental | None = None
        read = False
        # a volume bound to nodes (replicated) is read where it is active: here, for the
        # backup's duration if it was not already
        activated = await self.ctx.activate_here(
            [d.volid for d in disks if parse_nbd_unix_uri(d.source) is not None])
        try:
            if bitmaps is not None:
                plan = await self._start_image_bitmaps(task, vmid, images, store, bitmaps,
                                                       options.storage)
            for disk in disks:
                # raw data read as it is; an image (qcow2, also inside a replicated
                # volume's export) through qemu-nbd, which serves what the guest sees
                if disk.fmt == "raw" and (parse_nbd_unix_uri(disk.source) is not None
                                          or os.path.exists(disk.source)):
                    continue
                socket = workdir / f"{disk.key}.sock"
                exported = bitmaps.bases.get(disk.key) if bitmaps is not None \
                    and disk.key in bitmaps.contexts else None
                servers[disk.key] = (await _qemu_nbd(disk.source, disk.fmt, socket,
                                                     read_only=True, bitmap=exported), socket)

            def source(disk: _Disk) -> BlockSource:
                if disk.key in servers:
                    context = bitmaps.contexts.get(disk.key) if bitmaps is not None else None
                    return NbdExport(str(servers[disk.key][1]), "drive",
                                     meta_contexts=[context] if context else None)
                nbd = parse_nbd_unix_uri(disk.source)
                if nbd is not None:      # the storage's own NBD export (raw)
                    return NbdExport(*nbd)
                return FileSource(Path(disk.source))

            stats = await self._read_disks(
                task, disks, writer, options, source,
                (plan, bitmaps) if plan is not None and bitmaps is not None else None)
            read = True
        finally:
            for process, _ in servers.values():
                await _stop_process(process)
            shutil.rmtree(workdir, ignore_errors=True)
            if not read and bitmaps is not None:    # once qemu-nbd let go of the images
                await asyncio.shield(self._settle_image_bitmaps(task, bitmaps,
                                                                committed=False))
            if activated:
                await asyncio.shield(self.ctx.deactivate_after(task, activated))
        if bitmaps is None or plan is None or not bitmaps.nodes:
            return stats, None, None
        record = BitmapRecord(
            node=self.ctx.node, instance=STOPPED, bitmap=bitmaps.new,
            volumes={d.key: d.volid for d in disks},
            previous=(backup_name(plan.previous) if plan.previous is not None
                      and plan.bases else None))
        return stats, bitmaps, record

    async def _start_image_bitmaps(self, task: Task, vmid: int, images: list[_Disk],
                                   store: BackupStore, bitmaps: _Bitmaps,
                                   storage_id: str) -> _Incremental:
        """Decide which images' bitmaps to trust, drop our stale ones and add this
        backup's (the guest is stopped and locked: nothing writes in between)."""
        live = []
        for disk in list(images):
            can_store, stored = await _image_bitmaps(disk.source)
            if can_store:
                live.append(LiveDrive(disk.key, disk.volid, stored))
            else:       # a qcow2 v2 (compat 0.10) image: read in full
                images.remove(disk)
                task.log(f"INFO: {disk.key}: qcow2 image of version 2 (compat=0.10) keeps no "
                         f"dirty bitmap - read in full")
        plan = await self._trust(task, vmid, store, live, STOPPED, storage_id)
        recorded = plan.decision.recorded_bitmap
        for disk, drive in zip(images, live, strict=True):
            path = disk.source
            for bitmap in drive.bitmaps:
                if not bitmap.name.startswith(BITMAP_PREFIX):
                    continue
                if bitmap.name == recorded and disk.key in plan.bases:
                    bitmaps.bases[disk.key] = bitmap.name
                    bitmaps.contexts[disk.key] = f"qemu:dirty-bitmap:{bitmap.name}"
                else:
                    await run_tool("qemu-img", "bitmap", "--remove", path, bitmap.name)
            await run_tool("qemu-img", "bitmap", "--add", "-g", str(DEFAULT_CHUNK_SIZE), path,
                       bitmaps.new)
            bitmaps.nodes[disk.key] = path     # settled by _settle_image_bitmaps
            bitmaps.started = True
        for key in list(plan.bases):
            if key not in bitmaps.contexts:
                plan.bases.pop(key)
        return plan

    async def _settle_image_bitmaps(self, task: Task, bm: _Bitmaps, *,
                                    committed: bool) -> None:
        """A stopped guest's images (`bm.nodes`: disk key -> image): after a committed
        backup, drop the bitmap it read (the new one holds the writes since); after a
        failed one, drop the new one (the old one still holds every write since the
        last good backup)."""
        for key, path in bm.nodes.items():
            name = bm.bases.get(key) if committed else bm.new
            if name is None:
                continue
            try:
                await run_tool("qemu-img", "bitmap", "--remove", path, name)
            except GuestFailure as error:
                task.log(f"WARN: {key}: could not remove dirty bitmap {name} ({error}): "
                         f"the next backup of {key} is full")

    # ------------------------------------------------------------ running guests

    async def _backup_running(self, task: Task, vmid: int, disks: list[_Disk],
                              writer: BackupWriter, store: BackupStore, options: VzdumpOptions,
                              config: dict[str, Any],
                              ) -> tuple[BackupStats, _Bitmaps, BitmapRecord]:
        """Fleece and read the disks of a running guest; the bitmaps it started are
        settled by the caller once the backup is committed or has failed. With an
        enabled guest agent (and `freeze-fs`), the guest's filesystems are frozen
        around the snapshot instant (the fleecing start) and thawed right after it,
        whatever happened (PVE's qga_fs_freeze / qga_fs_thaw)."""
        workdir = Path(tempfile.mkdtemp(prefix=f"binome-vzdump-{vmid}-"))
        fleece_dir = store.root / ".fleecing" / f"{vmid}-{uuid.uuid4().hex[:8]}"
        fleecing = _Fleecing(vmid, workdir, workdir / "nbd.sock", fleece_dir)
        bitmaps = _Bitmaps(vmid, f"{BITMAP_PREFIX}{uuid.uuid4().hex[:12]}")
        instance = qemu_instance(self.ctx.runtime.paths(vmid).pidfile)
        try:
            try:
                paused = False
                # the agent cannot answer while the guest is paused: freeze first, thaw last
                frozen = await self.agent.freeze_for_backup(vmid, config, task.log)
                try:
                    if options.mode == "suspend":
                        # PVE's suspend mode: the guest is paused while the backup is set up
                        task.log("INFO: suspending guest")
                        await self._qmp(vmid, "stop")
                        paused = True
                    try:
                        plan = await self._start_fleecing(task, fleecing,
                                                          [d for d in disks if d.in_qemu],
                                                          store, bitmaps, instance,
                                                          options.storage)
                    finally:
                        if paused:
                            task.log("INFO: resuming guest")
                            await self._qmp(vmid, "cont")
                finally:
                    if frozen:
                        await asyncio.shield(self.agent.thaw_after_backup(vmid, task.log))

                def source(disk: _Disk) -> BlockSource:
                    if not disk.in_qemu:    # tpmstate0: swtpm's raw file, as it is now
                        return FileSource(Path(disk.source))
                    context = bitmaps.contexts.get(disk.key)
                    return NbdExport(str(fleecing.socket), f"drive-{disk.key}",
                                     meta_contexts=[context] if context else None)

                stats = await self._read_disks(task, disks, writer, options, source,
                                               (plan, bitmaps))
            finally:
                await asyncio.shield(self._stop_fleecing(fleecing))
                shutil.rmtree(workdir, ignore_errors=True)
        except BaseException:
            await asyncio.shield(self._settle_bitmaps(task, bitmaps, committed=False))
            raise
        record = BitmapRecord(
            node=self.ctx.node, instance=instance, bitmap=bitmaps.new,
            volumes={d.key: d.volid for d in disks},
            previous=(backup_name(plan.previous) if plan.previous is not None
                      and plan.bases else None))
        return stats, bitmaps, record

    async def _qmp(self, vmid: int, command: str, args: dict[str, Any] | None = None) -> Any:
        return await self.ctx.runtime.command(vmid, command, args)

    async def _start_fleecing(self, task: Task, fl: _Fleecing, disks: list[_Disk],
                              store: BackupStore, bitmaps: _Bitmaps, instance: str,
                              storage_id: str) -> _Incremental:
        vmid = fl.vmid
        blocks = {b.get("device"): b for b in await self._qmp(vmid, "query-block")}
        persistent: set[str] = set()    # the drives whose image can store the bitmap
        plan = []
        live = []
        for disk in disks:
            block = blocks.get(f"drive-{disk.key}")
            if not block or "inserted" not in block:
                raise GuestFailure(f"VM {vmid}: QEMU has no drive 'drive-{disk.key}'")
            inserted = block["inserted"]
            plan.append((disk, inserted["node-name"], int(inserted["image"]["virtual-size"])))
            if _local_qcow2(disk) and _qcow2_v3(inserted["image"]):
                persistent.add(disk.key)
            live.append(LiveDrive(disk.key, disk.volid, tuple(
                LiveBitmap.from_qmp(b) for b in inserted.get("dirty-bitmaps") or [])))
        incremental = await self._trust(task, vmid, store, live, instance, storage_id)
        await self._remove_leftovers(vmid, [disk.key for disk, _node, _size in plan])
        fl.fleece_dir.mkdir(parents=True, exist_ok=True)
        for disk, node, size in plan:
            image = fl.fleece_dir / f"{disk.key}.qcow2"
            await run_tool("qemu-img", "create", "-q", "-f", "qcow2", str(image), str(size))
            fleece = f"fleece-{disk.key}"
            await self._qmp(vmid, "blockdev-add", {
                "driver": "qcow2", "node-name": fleece, "discard": "unmap",
                "file": {"driver": "file", "filename": str(image)}, "backing": node})
            fl.nodes.append(fleece)
        # the bitmap each drive keeps is the one the previous backup started (if it still
        # records): it is disabled at this backup's instant, a new one starts; any other
        # of ours (left by an interrupted backup) goes first
        actions: list[dict[str, Any]] = []
        for (disk, node, _size), drive in zip(plan, live, strict=True):
            bitmaps.nodes[disk.key] = node
            ours = [b for b in drive.bitmaps if b.name.startswith(BITMAP_PREFIX)]
            recorded = incremental.decision.recorded_bitmap
            keep = next((b for b in ours if b.name == recorded and b.recording
                         and not b.busy), None) or next(
                (b for b in ours if b.recording and not b.busy and not b.inconsistent), None)
            for stale in ours:
                if stale is not keep:
                    await self._remove_bitmap(vmid, node, stale.name)
            actions.append({"type": "block-dirty-bitmap-add", "data": {
                "node": node, "name": bitmaps.new, "granularity": DEFAULT_CHUNK_SIZE,
                "persistent": disk.key in persistent}})
            if keep is not None:
                bitmaps.bases[disk.key] = keep.name
                actions.append({"type": "block-dirty-bitmap-disable", "data": {
                    "node": node, "name": keep.name}})
        # one transaction: every disk's copy-before-write and bitmap switch happen at the
        # same instant, so no write falls between "old bitmap stopped" and "backup point"
        await self._qmp(vmid, "transaction", {"actions": actions + [
            {"type": "blockdev-backup", "data": {
                "job-id": f"vzdump-{disk.key}", "device": node, "target": f"fleece-{disk.key}",
                "sync": "none", "auto-finalize": True, "auto-dismiss": True}}
            for disk, node, _size in plan]})
        bitmaps.started = True
        fl.jobs = [f"vzdump-{disk.key}" for disk, _node, _size in plan]
        task.log("INFO: started backup: copy-before-write fleecing of "
                 + ", ".join(d.key for d in disks))
        for disk, _node, _size in plan:
            base = bitmaps.bases.get(disk.key)
            if base is not None and base == incremental.decision.recorded_bitmap \
                    and disk.key in incremental.bases and incremental.decision.trusted(disk.key):
                bitmaps.contexts[disk.key] = f"qemu:dirty-bitmap:{base}"
            else:
                incremental.bases.pop(disk.key, None)
        await self._qmp(vmid, "nbd-server-start", {
            "addr": {"type": "unix", "data": {"path": str(fl.socket)}}})
        fl.server = True
        for disk, node, _size in plan:
            export = f"vzdump-{disk.key}"
            args: dict[str, Any] = {
                "type": "nbd", "id": export, "node-name": f"fleece-{disk.key}",
                "name": f"drive-{disk.key}", "writable": False}
            if disk.key in bitmaps.contexts:
                args["bitmaps"] = [{"node": node, "name": bitmaps.bases[disk.key]}]
            await self._qmp(vmid, "block-export-add", args)
            fl.exports.append(export)
        return incremental

    async def _trust(self, task: Task, vmid: int, store: BackupStore, live: list[LiveDrive],
                     instance: str, storage_id: str) -> _Incremental:
        """Decide which drives may be read incrementally, load their previous indexes
        and log why the others are read in full."""
        found = await asyncio.to_thread(previous_backup, store, vmid)
        previous_ref, previous = found if found is not None else (None, None)
        decision = decide(previous, node=self.ctx.node, instance=instance, drives=live,
                          restored=self.restored.get(vmid), storage=storage_id)
        if previous is not None and previous.record is not None:
            decision.recorded_bitmap = previous.record.bitmap
        plan = _Incremental(decision, previous_ref)
        if decision.reason is not None:
            task.log(f"INFO: dirty bitmap not trusted: {decision.reason} - full backup")
            return plan
        for drive in live:
            reason = decision.why_full(drive.key)
            if reason is not None:
                task.log(f"INFO: {drive.key}: dirty bitmap not trusted: {reason} - read in "
                         f"full")
                continue
            assert previous_ref is not None
            try:
                plan.bases[drive.key] = await asyncio.to_thread(
                    store.read_index, previous_ref, f"drive-{drive.key}.img.fidx")
            except (OSError, FixedIndexError, CryptError) as error:
                task.log(f"INFO: {drive.key}: previous index unreadable ({error}) - read in "
                         f"full")
        return plan

    async def _remove_bitmap(self, vmid: int, node: str, name: str) -> bool:
        """Remove one of our bitmaps, waiting while an export being deleted holds it."""
        deadline = time.monotonic() + _BITMAP_BUSY_WAIT
        while True:
            try:
                await self._qmp(vmid, "block-dirty-bitmap-remove", {"node": node, "name": name})
                return True
            except GuestError as error:
                if "busy" not in str(error).lower() or time.monotonic() > deadline:
                    log.warning("VM %s: removing dirty bitmap %s on %s: %s", vmid, name, node,
                                error)
                    return False
            await asyncio.sleep(0.05)

    async def _settle_bitmaps(self, task: Task, bm: _Bitmaps, *, committed: bool) -> None:
        """After a committed backup, drop the bitmaps it disabled (the new ones now hold
        the writes since it). After a failed one, merge the new bitmaps back into the
        old ones and re-enable them, so the next backup still sees every write since
        the last good one; if that cannot be done, drop both (the next one is full)."""
        vmid = bm.vmid
        if not bm.started or not self.ctx.runtime.is_running(vmid):
            return
        for key, node in bm.nodes.items():
            base = bm.bases.get(key)
            if committed:
                if base is not None:
                    await self._remove_bitmap(vmid, node, base)
                continue
            if base is None:
                await self._remove_bitmap(vmid, node, bm.new)
                continue
            deadline = time.monotonic() + _BITMAP_BUSY_WAIT
            while True:
                try:
                    await self._qmp(vmid, "transaction", {"actions": [
                        {"type": "block-dirty-bitmap-enable",
                         "data": {"node": node, "name": base}},
                        {"type": "block-dirty-bitmap-merge",
                         "data": {"node": node, "target": base, "bitmaps": [bm.new]}},
                        {"type": "block-dirty-bitmap-remove",
                         "data": {"node": node, "name": bm.new}}]})
                    task.log(f"INFO: {key}: dirty bitmap kept (the failed backup's writes "
                             f"merged back)")
                    break
                except GuestError as error:
                    if "busy" in str(error).lower() and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                        continue
                    task.log(f"WARN: {key}: could not merge the dirty bitmap back ({error}): "
                             f"the next backup is full")
                    await self._remove_bitmap(vmid, node, bm.new)
                    await self._remove_bitmap(vmid, node, base)
                    break

    async def _stop_fleecing(self, fl: _Fleecing) -> None:
        """Undo what `_start_fleecing` did, in reverse; nothing to do if QEMU is gone."""
        vmid = fl.vmid
        if self.ctx.runtime.is_running(vmid):
            steps: list[tuple[str, dict[str, Any]]] = []
            steps += [("block-export-del", {"id": e, "mode": "hard"}) for e in fl.exports]
            if fl.server:
                steps.append(("nbd-server-stop", {}))
            steps += [("block-job-cancel", {"device": job, "force": True})
                      for job in fl.jobs]
            for command, args in steps:
                try:
                    await self._qmp(vmid, command, args)
                except GuestError as error:
                    log.warning("VM %s: fleecing cleanup %s %s: %s", vmid, command, args,
                                error)
            deadline = time.monotonic() + 10
            while fl.jobs and time.monotonic() < deadline:
                try:
                    running = {j["device"] for j in await self._qmp(vmid, "query-block-jobs")}
                except GuestError:
                    break
                if not running & set(fl.jobs):
                    break
                await asyncio.sleep(0.05)
            await self._wait_exports_gone(vmid, fl.exports, deadline)
            await self._delete_nodes(vmid, list(reversed(fl.nodes)), deadline)
        shutil.rmtree(fl.fleece_dir, ignore_errors=True)

    async def _wait_exports_gone(self, vmid: int, exports: list[str], deadline: float) -> None:
        """QEMU deletes an export asynchronously (`block-export-del` returns while its
        requests drain): until it is gone it holds its node, and a blockdev-del of the
        node fails."""
        while exports and time.monotonic() < deadline:
            try:
                listed = {e["id"] for e in await self._qmp(vmid, "query-block-exports")}
            except GuestError:
                return
            if not listed & set(exports):
                return
            await asyncio.sleep(0.05)

    async def _delete_nodes(self, vmid: int, nodes: list[str], deadline: float) -> None:
        """blockdev-del each node, retried while it is still in use (until `deadline`): a
        fleecing node left behind would refuse every later backup of the guest."""
        for node in nodes:
            while True:
                try:
                    await self._qmp(vmid, "blockdev-del", {"node-name": node})
                    break
                except GuestError as error:
                    if time.monotonic() >= deadline:
                        log.warning("VM %s: fleecing cleanup blockdev-del %s: %s", vmid,
                                    node, error)
                        break
                    await asyncio.sleep(0.1)

    async def _remove_leftovers(self, vmid: int, keys: list[str]) -> None:
        """An earlier backup whose cleanup did not finish (QEMU busy, binomed stopped)
        may have left its export and fleecing nodes: this backup reuses their names."""
        exports = {f"vzdump-{key}" for key in keys}
        listed = {e["id"] for e in await self._qmp(vmid, "query-block-exports")} & exports
        for export in sorted(listed):
            with contextlib.suppress(GuestError):
                await self._qmp(vmid, "block-export-del", {"id": export, "mode": "hard"})
        deadline = time.monotonic() + 10
        await self._wait_exports_gone(vmid, sorted(listed), deadline)
        names = {n.get("node-name") for n in
                 await self._qmp(vmid, "query-named-block-nodes", {"flat": True})}
        left = [f"fleece-{key}" for key in keys if f"fleece-{key}" in names]
        if left:
            log.warning("VM %s: removing fleecing nodes left by an earlier backup: %s", vmid,
                        ", ".join(left))
            await self._delete_nodes(vmid, left, deadline)

    # ------------------------------------------------------------------ restore

    async def restore(self, task: Task, vmid: int, archive: str, *,
                      storage_id: str | None, unique: bool, force: bool,
                      live: bool = False, bwlimit_kib: int | None = None) -> None:
        """Create VM `vmid` from backup volume `archive`; over an existing VM only with
        `force` (that VM is destroyed first: nothing of it is kept). `live`: the VM
        starts at once, its disks filled while it runs (`live_restore`; its EFI vars and
        TPM state are restored before, as PVE's). `bwlimit_kib`: at most this many KiB
        written per second (PVE's `bwlimit`; the live restore's mirror speed)."""
        source_storage = await self.ctx.storages.for_volid(archive)
        volname = split_volid(archive)[1]
        if not volname.startswith("backup/"):
            raise TaskFailed(f"'{archive}' is not a backup volume")
        store = source_storage.backup_store()
        try:
            ref = ref_of_name(volname[len("backup/"):])
            # with the storage's key: the manifest's signature (and through it every
            # index and file) is checked before anything is created
            manifest = await asyncio.to_thread(store.authenticated_manifest, ref)
            backed_up = vmconf.parse_conf(await asyncio.to_thread(store.guest_config, ref))
        except (DatastoreError, CryptError) as error:
            raise TaskFailed(f"cannot restore '{archive}': {error}") from None
        if manifest.crypt_fingerprint is not None:
            task.log(f"backup is encrypted (key fingerprint {manifest.crypt_fingerprint}): "
                     f"manifest signature ok")
        indexes = {f["filename"] for f in manifest.files}
        if live and backed_up.get("template"):
            raise TaskFailed("cannot do live-restore for template")
        task.log(f"restore binome backup '{archive}' ({backup_name(ref)}) to VM {vmid}")
        owner = await self.ctx.configs.owner(vmid)
        if owner is not None:
            if not force:
                raise TaskFailed(f"unable to restore VM {vmid} - VM {vmid} already exists on "
                                 f"node '{owner}'")
            if owner != self.ctx.node:
                raise TaskFailed(f"unable to restore VM {vmid} - VM {vmid} is on node "
                                 f"'{owner}': restore over it there")
            if self.ctx.runtime.is_running(vmid):
                raise TaskFailed(f"unable to restore VM {vmid} - VM is running")
            task.log(f"destroying existing VM {vmid} (force)")
            await self.lifecycle.destroy(task, vmid)
        if not await self.ctx.configs.reserve(vmid, {"lock": "create"}):
            raise TaskFailed(f"unable to restore VM {vmid} - VM {vmid} already exists on "
                             f"node '{await self.ctx.configs.owner(vmid)}'")
        allocated: list[str] = []
        live_disks: list[LiveDisk] = []
        try:
            new: dict[str, Any] = {}
            for key, value in backed_up.items():
                if key in ("lock",):
                    continue
                index_name = f"drive-{key}.img.fidx"
                if key in vmconf.SPECIAL_DRIVES and index_name not in indexes:
                    # an efidisk0 / tpmstate0 the archive does not hold (an efidisk0
                    # without OVMF, or a backup made before they were backed up): the
                    # restored VM must not point at the original VM's volume
                    task.warn(f"{key} is not restored (not in the archive): left out")
                    continue
                if vmconf.is_disk_key(key) or key in vmconf.SPECIAL_DRIVES:
                    disk = vmconf.parse_drive(key, str(value))
                    if disk.volid and not disk.is_cdrom and index_name in indexes \
                            and live and key not in vmconf.SPECIAL_DRIVES:
                        # filled by the running guest's mirror jobs, after the config
                        index = await asyncio.to_thread(store.read_index, ref, index_name)
                        _storage, volid = await self._restore_volume(task, index.size, disk,
                                                                     vmid, storage_id)
                        allocated.append(volid)
                        live_disks.append(LiveDisk(key, index, volid))
                        value = ",".join([volid, *(f"{k}={v}"
                                                   for k, v in disk.options.items())])
                    elif disk.volid and not disk.is_cdrom and index_name in indexes:
                        volid = await self._restore_disk(task, store, ref, index_name, disk,
                                                         vmid, storage_id, bwlimit_kib)
                        allocated.append(volid)
                        value = ",".join([volid, *(f"{k}={v}"
                                                   for k, v in disk.options.items())])
                elif vmconf.is_net_key(key) and unique:
                    nic = vmconf.parse_net(key, str(value))
                    value = vmconf.NetEntry(nic.key, nic.index, nic.model, vmconf.random_mac(),
                                            nic.bridge, nic.tag, nic.options).format()
                new[key] = value
            if unique and "smbios1" in new:
                new["smbios1"] = f"uuid={uuid.uuid4()}"
            if live:
                new["lock"] = "create"     # PVE keeps it for the whole live restore
            await self.ctx.configs.write(await self.ctx.read(vmid), new)
        except BaseException as error:
            task.log(f"restore failed ({error}); removing what was created")
            for volid in allocated:
                with contextlib.suppress(Exception):
                    await (await self.ctx.storages.for_volid(volid)).free(volid)
            with contextlib.suppress(Exception):
                await self.ctx.configs.unreserve(vmid)
            raise
        self.restored[vmid] = Restored(archive, time.time())
        if live:
            await live_restore(self.ctx, self.lifecycle, task, vmid, store, ref, archive,
                               live_disks, bwlimit_kib)
        task.log(f"VM {vmid} restored on node {self.ctx.node}")

    async def _restore_disk(self, task: Task, store: BackupStore, ref: SnapshotRef,
                            index_name: str, disk: vmconf.DiskEntry, vmid: int,
                            storage_id: str | None, bwlimit_kib: int | None = None) -> str:
        index = await asyncio.to_thread(store.read_index, ref, index_name)
        storage, volid = await self._restore_volume(task, index.size, disk, vmid, storage_id)
        try:
            # a volume bound to nodes (replicated) is written where it is active: here
            activated = await storage.activate_volume(volid, task=task)
            try:
                stats = await self._write_image(task, store, ref, index_name, disk.key,
                                                storage.source(volid), vmid, bwlimit_kib)
            finally:
                if activated:
                    with contextlib.suppress(Exception):
                        await storage.deactivate_volume(volid)
        except BaseException:
            with contextlib.suppress(Exception):
                await storage.free(volid)
            raise
        sparse = stats.size - stats.bytes_written
        task.log(f"total bytes read {stats.size}, sparse bytes {human_size(sparse)} "
                 f"({sparse * 100 / max(stats.size, 1):.1f}%)")
        task.log(f"{disk.key}: restored {human_size(stats.size)}, sha256 {stats.sha256}")
        return volid

    async def _restore_volume(self, task: Task, size: int, disk: vmconf.DiskEntry,
                              vmid: int, storage_id: str | None) -> tuple[Storage, str]:
        """The new volume a restored disk goes to: on `storage_id` (else the disk's own
        storage), in the disk's format where the storage has it."""
        target_id = storage_id or str(disk.storage)
        storage = await self.ctx.storages.get(target_id)
        if disk.key == "tpmstate0" and storage.per_node_activation:
            # swtpm needs a local file: a replicated volume would refuse every start
            fallback = str(disk.storage)
            if fallback == target_id or not await self._is_local_dir(fallback):
                fallback = "local"
            task.warn(f"tpmstate0: storage '{target_id}' cannot hold a TPM state (swtpm "
                      f"needs a dir storage): restored to '{fallback}'")
            storage = await self.ctx.storages.get(fallback)
        fmt = disk.volid.rsplit(".", 1)[-1] if disk.volid and "." in disk.volid else "raw"
        fmt = fmt if fmt in ("raw", "qcow2") else "raw"
        try:
            volid = await storage.alloc(vmid, size, fmt)
        except StorageError:
            volid = await storage.alloc(vmid, size, "raw")
        task.log(f"new volume ID is '{volid}'")
        return storage, volid

    async def _is_local_dir(self, storage_id: str) -> bool:
        try:
            storage = await self.ctx.storages.get(storage_id)
        except StorageError:
            return False
        return storage.config.type == "dir" and "images" in storage.config.content

    async def _write_image(self, task: Task, store: BackupStore, ref: SnapshotRef,
                           index_name: str, key: str, source: VolumeSource,
                           vmid: int, bwlimit_kib: int | None = None) -> RestoreStats:
        """Write a backed-up image into a fresh volume through the storage's own source:
        a raw file, an NBD export (a replicated volume's), or a qcow2 image through
        qemu-nbd. Chunks are checked (and decrypted) with the store's key; at most
        `bwlimit_kib` KiB of the image per second."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        last = [-1]
        throttle, restored = Throttle(bwlimit_kib * 1024 if bwlimit_kib else None), [0]

        def progress(done: int, size: int) -> None:
            # (in the restore's thread, after each chunk: the limit paces the next one)
            throttle.account(done - restored[0])
            restored[0] = done
            step = done * 10 // max(size, 1)
            if step != last[0]:
                last[0] = step
                loop.call_soon_threadsafe(
                    task.log, f"progress {step * 10}% (read {done} bytes, duration "
                              f"{int(time.monotonic() - started)} sec)")

        def write_nbd(socket: str, export_name: str) -> RestoreStats:
            with NbdExport(socket, export_name) as export:
                if export.size < index.size:
                    raise RestoreError(f"the volume ({export.size} bytes) is smaller than "
                                       f"the image ({index.size} bytes)")
                stats = restore_to(store, ref, index_name, export.pwrite, crypt=store.crypt,
                                   skip_zero=True, progress=progress)
                export.flush()
                return stats

        index = await asyncio.to_thread(store.read_index, ref, index_name)
        nbd = parse_nbd_unix_uri(source.source)
        try:
            if nbd is not None and source.format in ("raw", None):
                return await asyncio.to_thread(write_nbd, *nbd)
            if source.format in ("raw", None) and os.path.exists(source.source):
                def write_raw() -> RestoreStats:
                    fd = os.open(source.source, os.O_WRONLY)
                    try:
                        stats = restore_to(store, ref, index_name,
                                           lambda offset, data: os.pwrite(fd, data, offset),
                                           crypt=store.crypt, skip_zero=True,
                                           progress=progress)
                        os.fsync(fd)
                        return stats
                    finally:
                        os.close(fd)
                return await asyncio.to_thread(write_raw)
            workdir = Path(tempfile.mkdtemp(prefix=f"binome-restore-{vmid}-"))
            socket = workdir / "nbd.sock"
            process = await _qemu_nbd(source.source, source.format or "raw", socket,
                                      read_only=False)
            try:
                return await asyncio.to_thread(write_nbd, str(socket), "drive")
            finally:
                await _stop_process(process)
                shutil.rmtree(workdir, ignore_errors=True)
        except (RestoreError, NbdError, CryptError) as error:
            raise TaskFailed(f"restore of {key} failed: {error}") from None


def _local_qcow2(disk: _Disk) -> bool:
    """A qcow2 image file of a dir storage: it can hold a persistent dirty bitmap."""
    return disk.fmt == "qcow2" and disk.in_qemu and parse_nbd_unix_uri(disk.source) is None


def _qcow2_v3(image: dict[str, Any]) -> bool:
    """A qcow2 image (QMP's or `qemu-img info`'s description) of version 3, the one that
    can store dirty bitmaps (compat 0.10 cannot)."""
    specific = image.get("format-specific") or {}
    return specific.get("type") == "qcow2" and \
        (specific.get("data") or {}).get("compat") == "1.1"


async def _image_bitmaps(path: str) -> tuple[bool, tuple[LiveBitmap, ...]]:
    """Whether a qcow2 image can store dirty bitmaps, and those it stores
    (`qemu-img info`)."""
    process = await asyncio.create_subprocess_exec(
        "qemu-img", "info", "--output=json", path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if process.returncode != 0:
        raise GuestFailure(f"qemu-img info {path} failed: {err.decode().strip()}")
    try:
        data = json.loads(out)
        listed = (data.get("format-specific") or {}).get("data", {}).get("bitmaps") or []
        return _qcow2_v3(data), tuple(LiveBitmap.from_image(b) for b in listed)
    except (ValueError, AttributeError) as error:
        raise GuestFailure(f"qemu-img info {path}: {error}") from None


async def _qemu_nbd(path: str, fmt: str, socket: Path, *, read_only: bool,
                    bitmap: str | None = None) -> asyncio.subprocess.Process:
    """Serve one image as export `drive` on `socket` (`qemu-nbd`, our child: stopped by
    `_stop_process`), with dirty bitmap `bitmap` as meta context
    `qemu:dirty-bitmap:<bitmap>`; returns once the socket accepts connections."""
    argv = ["qemu-nbd", f"--format={fmt}", "--export-name=drive", f"--socket={socket}",
            "--cache=none", "--aio=threads", "--persistent"]
    if read_only:
        argv.append("--read-only")
    if bitmap is not None:
        argv += ["-B", bitmap]
    process = await asyncio.create_subprocess_exec(*argv, path,
                                                   stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE)
    deadline = time.monotonic() + _NBD_WAIT
    while not socket.exists():
        if process.returncode is not None or time.monotonic() > deadline:
            err = b""
            if process.stderr is not None and process.returncode is not None:
                err = await process.stderr.read()
            await _stop_process(process)
            raise GuestFailure(f"qemu-nbd could not serve {path}: "
                               f"{err.decode().strip() or 'no socket'}")
        await asyncio.sleep(0.02)
    return process


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
