"""One replicated volume: its local disk, metadata, state, write path and NBD export.

A `Volume` owns everything about one resource on this node: the backing file
(`disk.LocalDisk`), the metadata file (`meta.MetaFile`: GIs, flags, activity
log, bitmap), the DRBD state (`states.State`) and the NBD server its QEMU
client talks to. It is the `Export` the NBD server calls.

Write path (DRBD's `drbd_req.c`, reduced to what exists so far):
1. the extents the write touches must be hot in the activity log; a cold one
   costs an AL transaction, durable before the data is submitted (concurrent
   transactions are grouped, one writer at a time);
2. if the write is not mirrored (no peer, or the peer cannot take it), its
   blocks are marked out of sync in the bitmap *before* the data is written
   (in WFBitMapS the peer is also sent a P_OUT_OF_SYNC notice);
3. the data goes to the backing file and, when mirrored, to the peer
   (`peer.PeerLink`) without waiting in between; the request completes when
   the local write is done and the network part is acknowledged per protocol
   (A: sent, B: received, C: written); FUA adds a (coalesced) fdatasync here
   and on the peer. FLUSH is a local fdatasync plus a barrier on the peer.

Under quorum fencing (`states.needs_fencing`: a Primary whose peer's disk is
unknown) writes, discards and flushes wait for `_resumed` and the completions
of writes the link lost are held (`hold_completions`), until the peer is back
or the daemon recorded it Outdated (`peer_outdated`); a copy the peer fenced
first (`outdated_by_peer`) fails them with EIO.

The bitmap reaches the disk lazily (a periodic writer, and always before an
extent leaves the activity log); a clean detach writes it fully and marks the
activity log clean. On attach after a crash the bits of every extent still in
the activity log are set (DRBD's apply-al).

Local I/O errors (`local_io_error`, DRBD's on-io-error detach): a failed read,
write, fdatasync or discard on the backing store makes the disk Failed, then
Diskless (closed, FULL_SYNC recorded, the `local-io-error` handler run), and
from then on a Primary serves everything through its peer (reads as
P_DATA_REQUEST, writes as P_DATA only) while the peer is Connected and
UpToDate; `reattach` brings a replaced disk back as a full SyncTarget.
Handlers (`run_handler`, `handlers.py`) include fence-peer for DRBD's
resource-only / resource-and-stonith fencing (`fence_peer`).

This module owns the volume's state and lifecycle (attach, connect, detach,
role changes, metadata persistence, bitmap writeback, handlers). The other
jobs are modules of functions taking the `Volume`, exposed as its methods:
`io_path` (the Export interface, write path, activity log, held acks),
`faults` (fencing, local I/O errors), `admin` (invalidate, resize, adjust,
verify, pause-sync), `report` (status, /proc/drbd).
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

from binome.storage.replica.core import states
from binome.storage.replica.core.activity_log import ActivityLog
from binome.storage.replica.core.bitmap import Bitmap
from binome.storage.replica.core.config import (
    VolumeConfig,
)
from binome.storage.replica.core.states import ConnState, DiskState, Fencing, MetaFlags, Role, State
from binome.storage.replica.core.uuids import GenerationIds
from binome.storage.replica.engine import handlers
from binome.storage.replica.engine.completion import Pending
from binome.storage.replica.engine.disk import LocalDisk
from binome.storage.replica.engine.meta import MetaError, MetaFile, Superblock
from binome.storage.replica.engine.nbd_server import NbdServer
from binome.storage.replica.engine.peer.link import PeerLink
from binome.storage.replica.engine.volume import admin, faults, io_path, report
from binome.storage.replica.engine.volume.errors import VolumeError

log = logging.getLogger("binome.replica")

BITMAP_WRITEBACK_INTERVAL = 5.0
# DRBD's fencing policies whose fence-peer handler the engine runs (quorum: the daemon).
HANDLER_FENCING = (Fencing.RESOURCE_ONLY, Fencing.RESOURCE_AND_STONITH)


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
        self.link: PeerLink | None = None
        self.rand64 = rand64
        self._al_shift = config.al_extent_size.bit_length() - 1
        self.bm_shift = config.bm_block_size.bit_length() - 1
        self._meta_lock = asyncio.Lock()
        self._al_wanted: set[int] = set()
        self._al_waiters: list[asyncio.Future] = []
        self._al_writer: asyncio.Task | None = None
        self._al_starved: asyncio.Event | None = None
        self._writeback: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._helpers: set[asyncio.Future] = set()
        self.conf_path = str(Path(config.meta).parent / "volume.json")   # the engine's file
        self._mirror = False          # writes go to the peer (states.should_do_remote)
        self._oos_notice = False      # writes are announced with P_OUT_OF_SYNC (WFBitMapS)
        # Quorum fencing (states.needs_fencing): while `state.susp`, new writes wait for
        # `_resumed` and the completions of writes the link lost wait in `_held`.
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._held: list[Pending] = []
        self.deferred_generation = False   # new current UUID once the peer is fenced
        self.fenced_by: str | None = None  # who recorded the peer Outdated (for status)
        self.user_paused = False           # pause-sync
        self.verify_result: dict[str, Any] | None = None   # the last online verify's outcome
        # the last split brain a handshake found (handshake.split_brain_record)
        self.split_brain: dict[str, Any] | None = None
        # the last local I/O error that detached the disk (faults.local_io_error): it
        # outlives the transient Failed state, so a subscriber that missed that event
        # (its stream reconnecting) still learns of the failure from the status
        self.io_error: dict[str, Any] | None = None
        self.on_change: Callable[[Volume], None] | None = None   # the engine's event hook
        # The engine's hook for handler calls and their exit codes (events "call"/"response").
        self.on_helper: Callable[[Volume, str, int | None], None] | None = None
        self._closing = False
        self._fence_task: asyncio.Future | None = None     # fence-peer handler running
        # on-io-error detach: the local disk failed; I/O is served by the peer.
        self._diskless_io = False

    # --- state --------------------------------------------------------------------------

    def set_state(self, **changes: Any) -> None:
        """Change the state; log it DRBD-style ("conn( WFConnection -> Connected )").

        `susp` is derived, never set by callers: it follows `states.needs_fencing`.
        Leaving it releases the held writes and completions.
        """
        old = self.state
        new = old.with_(**changes)
        new = new.with_(susp=states.needs_fencing(new, Fencing(self.config.fencing)))
        if new == old:
            return
        self.state = new
        self._mirror = self.link is not None and states.should_do_remote(new)
        self._oos_notice = self.link is not None and states.should_send_out_of_sync(new)
        parts = []
        for field, label in (("role", "role"), ("peer", "peer"), ("conn", "conn"),
                             ("disk", "disk"), ("pdsk", "pdsk"), ("susp", "susp")):
            a, b = getattr(old, field), getattr(new, field)
            if a != b:
                parts.append(f"{label}( {a} -> {b} )")
        log.info("%s: %s", self.name, " ".join(parts))
        if new.susp and not old.susp:
            self._resumed.clear()
            log.warning("%s: suspending I/O: the peer's disk is unknown; writes wait until the "
                        "peer is back or is recorded Outdated by a quorate node (fence-peer)",
                        self.name)
        elif old.susp and not new.susp:
            io_path.release_held(self, None)
            self._resumed.set()
            log.info("%s: resuming I/O", self.name)
        if (new.role == Role.Primary and new.pdsk == DiskState.DUnknown
                and old.pdsk != DiskState.DUnknown and new.conn < ConnState.Connected
                and Fencing(self.config.fencing) in HANDLER_FENCING
                and (self._fence_task is None or self._fence_task.done())):
            # DRBD's conn_try_outdate_peer_async: a Primary lost its peer.
            self._fence_task = self._spawn_detached(faults.fence_peer(self))
        if self.on_change is not None:
            self.on_change(self)

    # --- handlers (handlers.py) -----------------------------------------------------------

    async def run_handler(self, name: str) -> handlers.HandlerResult:
        """Run the configured command of handler `name` and wait for it (drbd_khelper)."""
        cfg = self.config
        env = handlers.handler_env(
            volume=self.name, backing=cfg.backing, meta=cfg.meta,
            conf=self.conf_path, node=cfg.node,
            peer_node=cfg.peer_node, address=cfg.address, peer_address=cfg.peer_address,
            handler=name)
        if self.on_helper is not None:
            self.on_helper(self, name, None)
        result = await handlers.run(name, cfg.handlers.get(name), env, volume=self.name,
                                    timeout=cfg.handler_timeout)
        if self.on_helper is not None:
            self.on_helper(self, name, result.exit_code)
        return result

    def call_handler(self, name: str) -> asyncio.Future:
        """Run a handler in the background (the caller does not wait for its exit code)."""
        return self._spawn_detached(self.run_handler(name))

    def _spawn_detached(self, coro: Awaitable[Any]) -> asyncio.Future:
        # Not in `_tasks`: a detach waits for I/O in flight, not for administrators' scripts.
        task = asyncio.ensure_future(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)
        return task

    # --- implemented in the modules of their concern -------------------------------------

    # the Export interface (the NBD server) and the write path the link calls
    hold_completions = io_path.hold_completions
    mark_out_of_sync = io_path.mark_out_of_sync
    disk_flush = io_path.disk_flush
    read_into = io_path.read_into
    write = io_path.write
    trim = io_path.trim
    write_zeroes = io_path.write_zeroes
    flush = io_path.flush
    block_status = io_path.block_status

    # fencing and local I/O errors
    peer_outdated = faults.peer_outdated
    outdated_by_peer = faults.outdated_by_peer
    fence_peer = faults.fence_peer
    set_fencing = faults.set_fencing
    local_io_error = faults.local_io_error
    reattach = faults.reattach

    # administration (resync, resize, adjust, verify)
    invalidate = admin.invalidate
    resize = admin.resize
    adjust = admin.adjust
    grow = admin.grow
    invalidate_remote = admin.invalidate_remote
    verify = admin.verify
    verify_stop = admin.verify_stop
    pause_sync = admin.pause_sync

    # status
    out_of_sync_kib = report.out_of_sync_kib
    status = report.status
    proc_drbd = report.proc_drbd

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
        self.set_state(disk=DiskState.Attaching)
        try:
            meta = await asyncio.to_thread(MetaFile.open, Path(cfg.meta))
        except (MetaError, OSError) as e:
            self.state = self.state.with_(disk=DiskState.Diskless)
            raise VolumeError("EIO", f"{self.name}: {e}") from e
        sb = meta.sb
        if sb.bm_block_size == cfg.bm_block_size and sb.size < cfg.size:
            # A resize recorded the new size in volume.json, then stopped before the
            # metadata's commit point: finish it (the backing file was grown first).
            log.warning("%s: finishing an interrupted resize (%d -> %d bytes)", self.name,
                        sb.size, cfg.size)
            sb = await asyncio.to_thread(meta.grow, cfg.size)
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
        self.set_state(role=Role.Secondary, peer=Role.Unknown, conn=ConnState.StandAlone,
                       disk=disk_state, pdsk=pdsk)
        await self.persist(flags=flags)
        self._writeback = asyncio.get_running_loop().create_task(self._writeback_loop())
        log.info("%s: attached: disk %s, %s, gi %s, %d KiB out of sync", self.name, disk_state,
                 "crashed primary" if self.crashed_primary else "clean", meta.sb.gi,
                 report.out_of_sync_kib(self))

    def _apply_al(self) -> int:
        assert self.al is not None and self.bitmap is not None
        bits_per_extent = 1 << (self.al.extent_shift - self.bm_shift)
        hot = self.al.hot()
        for ext in hot:
            first = ext * bits_per_extent
            if first < self.bitmap.nbits:
                self.bitmap.set_range(first, min(first + bits_per_extent, self.bitmap.nbits) - 1)
        return len(hot)

    async def start_export(self) -> None:
        self.nbd = NbdServer(self._lookup, lambda: [self])
        self.nbd.after_batch = self._flush_link
        await self.nbd.start_unix(self.config.socket)

    def _flush_link(self) -> None:
        # The P_DATA packets of a batch of NBD writes leave together, at once.
        if self.link is not None:
            self.link.flush()

    def _lookup(self, name: str) -> Volume | None:
        return self if name in ("", self.name) else None

    async def connect(self, *, discard_my_data: bool = False, dry_run: bool = False) -> None:
        """Start the peer link (WFConnection); no-op when it runs already."""
        if not self.config.has_net:
            raise VolumeError("EINVAL", f"{self.name}: no network configuration")
        if self.state.disk == DiskState.Diskless:
            raise VolumeError("ESTATE", f"{self.name}: not attached")
        if self.link is not None and not self.link.stopped:
            return
        if self.link is not None:
            await self.link.stop()
        self.link = PeerLink(self, discard_my_data=discard_my_data, dry_run=dry_run)
        await self.link.start()

    async def disconnect(self) -> None:
        if self.link is not None:
            link, self.link = self.link, None
            await link.stop()
            # A peer recorded Outdated (fencing) stays so (DRBD's sanitize_state keeps it);
            # anything else is unknown once disconnected.
            pdsk = DiskState.Outdated if self.state.pdsk == DiskState.Outdated \
                else DiskState.DUnknown
            self.set_state(conn=ConnState.StandAlone, peer=Role.Unknown, pdsk=pdsk)
            if self.meta is not None:
                await self.persist()

    async def detach(self) -> None:
        """Stop serving and detach cleanly: data and bitmap durable, activity log clean."""
        self._closing = True
        io_path.release_held(self, OSError(errno.EIO, f"volume {self.name} is going down"))
        self._resumed.set()            # suspended writers wake up and fail
        await self.disconnect()
        if self.nbd is not None:
            await self.nbd.close(abort=True)
            self.nbd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.socket)
        if self.state.disk == DiskState.Diskless and not self._diskless_io:
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
        if not self._diskless_io:           # a failed disk is not flushed (or closed already)
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
        self.set_state(disk=DiskState.Diskless, role=Role.Secondary)
        log.info("%s: detached", self.name)

    async def change_state(self, *, gi: GenerationIds | None = None, **changes: Any) -> None:
        """Persist the flags of the new state (and new GIs) first, then enter the state.

        Whoever sees the new state (status, the peer) can rely on the metadata
        saying the same after a crash.
        """
        await self.persist(gi=gi, state=self.state.with_(**changes))
        self.set_state(**changes)

    async def persist(self, *, flags: MetaFlags | None = None,
                      gi: GenerationIds | None = None, state: State | None = None) -> None:
        """Write the superblock for the current (or given) state: flags from state, GIs."""
        assert self.meta is not None
        base = self.meta.sb.flags if flags is None else flags
        new_flags = states.flags_from_state(state or self.state, base,
                                            crashed_primary=self.crashed_primary)
        sb = self.meta.sb.with_(flags=new_flags, gi=self.meta.sb.gi if gi is None else gi)
        async with self._meta_lock:
            await asyncio.to_thread(self.meta.write_superblock, sb)

    # --- role changes -------------------------------------------------------------------

    async def promote(self, *, force: bool = False) -> None:
        assert self.meta is not None
        s = self.state
        if (not force and Fencing(self.config.fencing) in HANDLER_FENCING
                and s.conn < ConnState.Connected and s.pdsk == DiskState.DUnknown
                and s.disk in (DiskState.Consistent, DiskState.UpToDate)):
            # drbd_set_role: the peer's disk is unknown, fence it before going Primary.
            await faults.fence_peer(self)
        gi = self.meta.sb.gi
        pr = states.promote(self.state, force=force,
                            allow_two_primaries=self.config.allow_two_primaries,
                            fencing=Fencing(self.config.fencing), bitmap_uuid=gi.bitmap)
        if pr.new_generation:
            gi = gi.new_current(self.rand64, primary=True)
            log.info("%s: new current UUID %016X (bitmap %016X)", self.name, gi.current, gi.bitmap)
        old = self.state
        await self.change_state(gi=gi.with_role(True), role=Role.Primary, disk=pr.state.disk)
        if self.link is not None:
            # A forced promotion changed the data's generation: the peer must resync from us.
            self.link.state_changed(renegotiate=pr.state.disk != old.disk or force)

    async def demote(self) -> None:
        assert self.meta is not None
        new = states.demote(self.state, open_count=self.open_count)
        if new == self.state:
            return
        await self.change_state(gi=self.meta.sb.gi.with_role(False), role=new.role)
        if self.link is not None:
            self.link.state_changed()

    async def outdate(self) -> None:
        new = states.outdate(self.state)
        if new != self.state:
            await self.change_state(disk=new.disk)

    # --- the Export interface (called by the NBD server) --------------------------------

    def description(self) -> str:
        return f"binome replicated volume {self.name}"

    def refuse_reason(self) -> str | None:
        if self.state.disk == DiskState.Diskless and not (self._diskless_io
                                                          and io_path.peer_serves(self)):
            return f"volume {self.name} has no disk attached"
        if self.state.role != Role.Primary:
            return f"volume {self.name} is {self.state.role}: only a Primary serves I/O"
        return None

    def opened(self) -> None:
        self.open_count += 1
        if self.on_change is not None:
            self.on_change(self)

    def closed(self) -> None:
        self.open_count -= 1
        if self.on_change is not None:
            self.on_change(self)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- bitmap writeback -----------------------------------------------------------------

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
