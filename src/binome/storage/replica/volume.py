"""One replicated volume: its local disk, metadata, state, write path and NBD export.

A `Volume` owns everything about one resource on this node: the backing file
(`disk.LocalDisk`), the metadata file (`meta.MetaFile`: GIs, flags, activity
log, bitmap), the DRBD state (`states.State`) and the NBD server its QEMU
client talks to. It is the `Export` the NBD server calls.

Write path (DRBD's `drbd_req.c`, reduced to what exists so far):
1. the extents the write touches must be hot in the activity log; a cold one
   costs an AL transaction, durable before the data is submitted (concurrent
   transactions are grouped, one writer at a time);
2. if the write is not mirrored (no peer, as in this increment: StandAlone),
   its blocks are marked out of sync in the bitmap *before* the data is written;
3. the data goes to the backing file; FUA waits for a (coalesced) fdatasync.
The peer connection slots in between 2 and 3 in the next increment: the
request will complete when the local write is done and the network part is
acknowledged per protocol A/B/C.

The bitmap reaches the disk lazily (a periodic writer, and always before an
extent leaves the activity log); a clean detach writes it fully and marks the
activity log clean. On attach after a crash the bits of every extent still in
the activity log are set (DRBD's apply-al).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binome.storage.replica import states
from binome.storage.replica.activity_log import ActivityLog
from binome.storage.replica.bitmap import Bitmap
from binome.storage.replica.config import VolumeConfig
from binome.storage.replica.disk import LocalDisk
from binome.storage.replica.meta import MetaError, MetaFile, Superblock
from binome.storage.replica.nbd.server import NbdServer
from binome.storage.replica.states import ConnState, DiskState, Fencing, MetaFlags, Role, State

log = logging.getLogger("binome.replica")

BITMAP_WRITEBACK_INTERVAL = 5.0
BIG_DISCARD = 1 << 20            # discards larger than this run in a thread


@dataclass
class Counters:
    """DRBD's /proc/drbd counters (KiB unless noted)."""

    ns: int = 0      # sent to the peer
    nr: int = 0      # received from the peer
    dw: int = 0      # written to the local disk
    dr: int = 0      # read from the local disk
    al: int = 0      # activity-log transactions (count)
    bm: int = 0      # bitmap pages written (count)
    lo: int = 0      # local requests open
    pe: int = 0      # pending at the peer
    ua: int = 0      # unacknowledged (received, not acked)
    ap: int = 0      # application requests in progress
    ep: int = 0      # epochs in flight


class VolumeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _rand64() -> int:
    return secrets.randbits(64)


class Volume:
    def __init__(self, config: VolumeConfig, *, rand64: Callable[[], int] = _rand64) -> None:
        self.config = config
        self.name = config.name
        self.size = config.size
        self.state = State()
        self.crashed_primary = False
        self.open_count = 0
        self.counters = Counters()
        self.disk: LocalDisk | None = None
        self.meta: MetaFile | None = None
        self.bitmap: Bitmap | None = None
        self.al: ActivityLog | None = None
        self.nbd: NbdServer | None = None
        self._rand64 = rand64
        self._al_shift = config.al_extent_size.bit_length() - 1
        self._bm_shift = config.bm_block_size.bit_length() - 1
        self._meta_lock = asyncio.Lock()
        self._al_wanted: set[int] = set()
        self._al_waiters: list[asyncio.Future] = []
        self._al_writer: asyncio.Task | None = None
        self._al_starved: asyncio.Event | None = None
        self._writeback: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._mark_oos = True

    # --- lifecycle ----------------------------------------------------------------------

    @staticmethod
    def create_md(config: VolumeConfig) -> None:
        """Create the backing file if needed and write fresh metadata (create-md)."""
        disk = LocalDisk(config.backing, config.size)
        disk.open(create=True)
        disk.close()
        sb = Superblock(size=config.size, bm_block_size=config.bm_block_size,
                        al_extent_size=config.al_extent_size, al_nr_extents=config.al_extents,
                        flags=MetaFlags.AL_CLEAN, device_uuid=_rand64())
        MetaFile.create(Path(config.meta), sb)

    async def attach(self) -> None:
        """Open disk and metadata, recover the bitmap, derive the disk state (attach)."""
        cfg = self.config
        if self.state.disk != DiskState.Diskless:
            raise VolumeError("EBUSY", f"{self.name}: already attached")
        self.state = self.state.with_(disk=DiskState.Attaching)
        try:
            meta = await asyncio.to_thread(MetaFile.open, Path(cfg.meta))
        except (MetaError, OSError) as e:
            self.state = self.state.with_(disk=DiskState.Diskless)
            raise VolumeError("EIO", f"{self.name}: {e}") from e
        sb = meta.sb
        if sb.size != cfg.size or sb.bm_block_size != cfg.bm_block_size:
            meta.close()
            self.state = self.state.with_(disk=DiskState.Diskless)
            raise VolumeError("EINVAL", f"{self.name}: metadata is for a {sb.size}-byte volume "
                                        f"with {sb.bm_block_size}-byte blocks")
        disk = LocalDisk(cfg.backing, cfg.size)
        try:
            await asyncio.to_thread(disk.open)
        except OSError as e:
            meta.close()
            self.state = self.state.with_(disk=DiskState.Diskless)
            raise VolumeError("EIO", f"{self.name}: backing store: {e}") from e
        self.disk, self.meta, self.bitmap = disk, meta, meta.bitmap
        self.al = ActivityLog(sb.al_nr_extents, sb.al_extent_size.bit_length() - 1,
                              meta.al_table)
        flags = sb.flags
        self.crashed_primary = bool(flags & (MetaFlags.CRASHED_PRIMARY | MetaFlags.PRIMARY_IND))
        if not flags & MetaFlags.AL_CLEAN:
            applied = self._apply_al()
            log.info("%s: applied the activity log: %d extents, bitmap now %d bits",
                     self.name, applied, self.bitmap.weight)
        if flags & MetaFlags.FULL_SYNC:
            log.info("%s: Assuming that all blocks are out of sync (aka FullSync)", self.name)
            self.bitmap.set_all()
            flags &= ~MetaFlags.FULL_SYNC
        async with self._meta_lock:
            await asyncio.to_thread(meta.write_bitmap_pages, self.bitmap.take_dirty_pages())
        disk_state, pdsk = states.disk_state_on_attach(flags, Fencing(cfg.fencing))
        self.state = State(role=Role.Secondary, peer=Role.Unknown, conn=ConnState.StandAlone,
                           disk=disk_state, pdsk=pdsk)
        await self._persist(flags=flags)
        self._writeback = asyncio.get_running_loop().create_task(self._writeback_loop())
        log.info("%s: attached: disk %s, %s, gi %s, %d KiB out of sync", self.name, disk_state,
                 "crashed primary" if self.crashed_primary else "clean", meta.sb.gi,
                 self.out_of_sync_kib())

    def _apply_al(self) -> int:
        assert self.al is not None and self.bitmap is not None
        bits_per_extent = 1 << (self.al.extent_shift - self._bm_shift)
        hot = self.al.hot()
        for ext in hot:
            first = ext * bits_per_extent
            if first < self.bitmap.nbits:
                self.bitmap.set_range(first, min(first + bits_per_extent, self.bitmap.nbits) - 1)
        return len(hot)

    async def start_export(self) -> None:
        self.nbd = NbdServer(self._lookup, lambda: [self])
        await self.nbd.start_unix(self.config.socket)

    def _lookup(self, name: str) -> Volume | None:
        return self if name in ("", self.name) else None

    async def detach(self) -> None:
        """Stop serving and detach cleanly: data and bitmap durable, activity log clean."""
        if self.nbd is not None:
            await self.nbd.close(abort=True)
            self.nbd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.socket)
        if self.state.disk == DiskState.Diskless:
            return
        async with asyncio.timeout(60):
            while self._tasks or (self._al_writer and not self._al_writer.done()):
                await asyncio.gather(*self._tasks, return_exceptions=True)
                if self._al_writer is not None:
                    await asyncio.gather(self._al_writer, return_exceptions=True)
        if self._writeback is not None:
            self._writeback.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writeback
        assert self.disk is not None and self.meta is not None and self.bitmap is not None
        await self.disk.flush()
        async with self._meta_lock:
            await asyncio.to_thread(self.meta.write_bitmap_pages, self.bitmap.take_dirty_pages())
            flags = states.flags_from_state(self.state, self.meta.sb.flags,
                                            crashed_primary=self.crashed_primary)
            await asyncio.to_thread(self.meta.write_superblock,
                                    self.meta.sb.with_(flags=flags | MetaFlags.AL_CLEAN))
        self.disk.close()
        self.meta.close()
        self.disk = self.meta = None
        self.bitmap = self.al = None
        self.state = self.state.with_(disk=DiskState.Diskless, role=Role.Secondary)
        log.info("%s: detached", self.name)

    async def _persist(self, *, flags: MetaFlags | None = None,
                       gi: Any = None) -> None:
        """Write the superblock for the current state (flags from state, GIs)."""
        assert self.meta is not None
        base = self.meta.sb.flags if flags is None else flags
        new_flags = states.flags_from_state(self.state, base, crashed_primary=self.crashed_primary)
        sb = self.meta.sb.with_(flags=new_flags, gi=self.meta.sb.gi if gi is None else gi)
        async with self._meta_lock:
            await asyncio.to_thread(self.meta.write_superblock, sb)

    # --- role changes -------------------------------------------------------------------

    async def promote(self, *, force: bool = False) -> None:
        assert self.meta is not None
        gi = self.meta.sb.gi
        pr = states.promote(self.state, force=force, allow_two_primaries=False,
                            fencing=Fencing(self.config.fencing), bitmap_uuid=gi.bitmap)
        if pr.new_generation:
            gi = gi.new_current(self._rand64, primary=True)
            log.info("%s: new current UUID %016X (bitmap %016X)", self.name, gi.current, gi.bitmap)
        old = self.state
        self.state = pr.state
        try:
            await self._persist(gi=gi.with_role(True))
        except OSError:
            self.state = old
            raise
        log.info("%s: role( %s -> Primary ) disk( %s -> %s )", self.name, old.role, old.disk,
                 pr.state.disk)

    async def demote(self) -> None:
        assert self.meta is not None
        new = states.demote(self.state, open_count=self.open_count)
        if new == self.state:
            return
        old, self.state = self.state, new
        await self._persist(gi=self.meta.sb.gi.with_role(False))
        log.info("%s: role( %s -> Secondary )", self.name, old.role)

    async def outdate(self) -> None:
        new = states.outdate(self.state)
        if new != self.state:
            self.state = new
            await self._persist()

    # --- the Export interface (called by the NBD server) --------------------------------

    def description(self) -> str:
        return f"binome replicated volume {self.name}"

    def refuse_reason(self) -> str | None:
        if self.state.disk == DiskState.Diskless:
            return f"volume {self.name} has no disk attached"
        if self.state.role != Role.Primary:
            return f"volume {self.name} is {self.state.role}: only a Primary serves I/O"
        return None

    def opened(self) -> None:
        self.open_count += 1

    def closed(self) -> None:
        self.open_count -= 1

    def _check_io(self) -> None:
        # A Secondary refuses all local I/O (DRBD), including reads.
        if self.state.role != Role.Primary or self.disk is None:
            raise OSError(errno.EPERM, f"volume {self.name} is not Primary")

    def read_into(self, offset: int, view: memoryview) -> None:
        self._check_io()
        assert self.disk is not None
        self.disk.read_into(offset, view)
        self.counters.dr += len(view)

    def write(self, offset: int, data: memoryview, fua: bool) -> asyncio.Future | None:
        self._check_io()
        length = len(data)
        shift = self._al_shift
        e0, e1 = offset >> shift, (offset + length - 1) >> shift
        al = self.al
        assert al is not None and self.disk is not None
        if not al.begin(e0, e1):
            # The data must outlive this call: the receive buffer will be reused.
            return self._spawn(self._write_cold(offset, bytes(data), fua, e0, e1))
        try:
            if self._mark_oos:
                self._mark(offset, length)
            self.disk.write(offset, data)
        finally:
            al.end(e0, e1)
            if self._al_starved is not None:
                self._al_starved.set()
        self.counters.dw += length
        return self.disk.flush() if fua else None

    def _mark(self, offset: int, length: int) -> None:
        assert self.bitmap is not None
        shift = self._bm_shift
        first, last = offset >> shift, (offset + length - 1) >> shift
        if first == last:
            self.bitmap.set_bit(first)
        else:
            self.bitmap.set_range(first, last)

    async def _write_cold(self, offset: int, data: bytes, fua: bool, e0: int, e1: int) -> None:
        await self._al_begin(e0, e1)
        assert self.disk is not None and self.al is not None
        try:
            if self._mark_oos:
                self._mark(offset, len(data))
            self.disk.write(offset, data)
        finally:
            self._al_end(e0, e1)
        self.counters.dw += len(data)
        if fua:
            await self.disk.flush()

    def trim(self, offset: int, length: int, fua: bool) -> asyncio.Future | None:
        return self.write_zeroes(offset, length, fua, no_hole=False, fast=False)

    def write_zeroes(self, offset: int, length: int, fua: bool, no_hole: bool,
                     fast: bool) -> asyncio.Future | None:
        self._check_io()
        if length == 0:
            return None
        assert self.al is not None and self.disk is not None
        e0, e1 = self.al.extents_of(offset, length)
        if length > BIG_DISCARD or not self.al.begin(e0, e1):
            return self._spawn(self._discard_async(offset, length, fua, no_hole, fast, e0, e1))
        try:
            if self._mark_oos:
                self._mark(offset, length)
            self.disk.discard(offset, length, keep_allocated=no_hole, fast=fast)
        finally:
            self._al_end(e0, e1)
        return self.disk.flush() if fua else None

    async def _discard_async(self, offset: int, length: int, fua: bool, no_hole: bool,
                             fast: bool, e0: int, e1: int) -> None:
        await self._al_begin(e0, e1)
        assert self.disk is not None
        try:
            if self._mark_oos:
                self._mark(offset, length)
            await asyncio.to_thread(self.disk.discard, offset, length,
                                    keep_allocated=no_hole, fast=fast)
        finally:
            self._al_end(e0, e1)
        if fua:
            await self.disk.flush()

    def flush(self) -> asyncio.Future:
        self._check_io()
        assert self.disk is not None
        return self.disk.flush()

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._check_io()
        assert self.disk is not None
        return self.disk.block_status(offset, length)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- activity log transactions ------------------------------------------------------

    async def _al_begin(self, e0: int, e1: int) -> None:
        """Wait until extents e0..e1 are hot on disk, then hold them for one I/O."""
        al = self.al
        assert al is not None
        while not al.begin(e0, e1):
            self._al_wanted.update(e for e in range(e0, e1 + 1) if not al.is_hot(e))
            fut = asyncio.get_running_loop().create_future()
            self._al_waiters.append(fut)
            if self._al_writer is None or self._al_writer.done():
                self._al_writer = asyncio.get_running_loop().create_task(self._al_commit())
            await fut

    def _al_end(self, e0: int, e1: int) -> None:
        assert self.al is not None
        self.al.end(e0, e1)
        if self._al_starved is not None:
            self._al_starved.set()

    async def _al_commit(self) -> None:
        """Write AL transactions until no write waits for a cold extent (group commit)."""
        al, meta, bitmap = self.al, self.meta, self.bitmap
        assert al is not None and meta is not None and bitmap is not None
        try:
            while self._al_wanted:
                wanted = set(self._al_wanted)
                tx = al.prepare(wanted)
                if tx is None:
                    # Every slot holds an extent with I/O in flight: wait for one to end.
                    self._al_starved = asyncio.Event()
                    await self._al_starved.wait()
                    self._al_starved = None
                    continue
                async with self._meta_lock:
                    if tx.evicted:
                        # Bits of evicted extents must be on disk before they leave the log.
                        pages = bitmap.take_dirty_pages()
                        await asyncio.to_thread(meta.write_bitmap_pages, pages)
                        self.counters.bm = meta.writes_bm
                    await asyncio.to_thread(meta.write_al, tx.table)
                al.commit(tx)
                self.counters.al = meta.writes_al
                self._al_wanted -= tx.added
                waiters, self._al_waiters = self._al_waiters, []
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
        except BaseException as e:
            waiters, self._al_waiters = self._al_waiters, []
            self._al_wanted.clear()
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(OSError(errno.EIO, f"activity log write failed: {e}"))
            if not isinstance(e, Exception):
                raise
            log.error("%s: activity log write failed: %s", self.name, e)

    async def _writeback_loop(self) -> None:
        """Lazy bitmap writeback (DRBD writes bitmap pages lazily too)."""
        while True:
            await asyncio.sleep(BITMAP_WRITEBACK_INTERVAL)
            await self.write_bitmap()

    async def write_bitmap(self) -> int:
        """Write the dirty bitmap pages now; return how many."""
        if self.meta is None or self.bitmap is None or not self.bitmap.dirty_pages:
            return 0
        async with self._meta_lock:
            pages = self.bitmap.take_dirty_pages()
            await asyncio.to_thread(self.meta.write_bitmap_pages, pages)
        self.counters.bm = self.meta.writes_bm
        return len(pages)

    # --- status -------------------------------------------------------------------------

    def out_of_sync_kib(self) -> int:
        if self.bitmap is None:
            return 0
        return self.bitmap.weight * self.config.bm_block_size // 1024

    def status(self) -> dict[str, Any]:
        s = self.state
        c = self.counters
        meta = self.meta
        return {
            "name": self.name,
            "size": self.size,
            "role": str(s.role),
            "peer_role": str(s.peer),
            "cstate": str(s.conn),
            "disk": str(s.disk),
            "peer_disk": str(s.pdsk),
            "suspended": s.susp,
            "gi": str(meta.sb.gi) if meta else None,
            "flags": int(meta.sb.flags) if meta else None,
            "crashed_primary": self.crashed_primary,
            "out_of_sync_kib": self.out_of_sync_kib(),
            "bitmap_bits": self.bitmap.weight if self.bitmap else 0,
            "al_hot": len(self.al.hot()) if self.al else 0,
            "open_count": self.open_count,
            "socket": self.config.socket,
            "counters": {"ns": c.ns // 1024, "nr": c.nr // 1024, "dw": c.dw // 1024,
                         "dr": c.dr // 1024, "al": c.al, "bm": c.bm, "lo": c.lo,
                         "pe": c.pe, "ua": c.ua, "ap": c.ap, "ep": c.ep},
        }

    def proc_drbd(self, minor: int) -> str:
        """The two /proc/drbd lines of this volume (protocol letter C by default)."""
        s, c = self.state, self.counters
        flags = ("s" if s.susp else "r") + "-----"
        return (f"{minor:2d}: cs:{s.conn} ro:{s.role}/{s.peer} ds:{s.disk}/{s.pdsk} C {flags}\n"
                f"    ns:{c.ns // 1024} nr:{c.nr // 1024} dw:{c.dw // 1024} dr:{c.dr // 1024} "
                f"al:{c.al} bm:{c.bm} lo:{c.lo} pe:{c.pe} ua:{c.ua} ap:{c.ap} ep:{c.ep} wo:f "
                f"oos:{self.out_of_sync_kib()}")
