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
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from binome.storage.replica import format as fmt
from binome.storage.replica import states
from binome.storage.replica.activity_log import ActivityLog
from binome.storage.replica.bitmap import Bitmap
from binome.storage.replica.config import VolumeConfig
from binome.storage.replica.disk import LocalDisk
from binome.storage.replica.meta import MetaError, MetaFile, Superblock
from binome.storage.replica.nbd.server import NbdServer
from binome.storage.replica.peer import PeerLink
from binome.storage.replica.states import ConnState, DiskState, Fencing, MetaFlags, Role, State
from binome.storage.replica.uuids import GenerationIds
from binome.storage.replica.wire import DP_DISCARD, DP_FUA, DP_ZERO_KEEP

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


def _both(a: asyncio.Future | None, b: asyncio.Future | None) -> asyncio.Future | None:
    """A future done when both parts are (either may be absent)."""
    if a is None:
        return b
    if b is None:
        return a
    return asyncio.gather(a, b)


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
        self._mirror = False          # writes go to the peer (states.should_do_remote)
        self._oos_notice = False      # writes are announced with P_OUT_OF_SYNC (WFBitMapS)
        # Quorum fencing (states.needs_fencing): while `state.susp`, new writes wait for
        # `_resumed` and the completions of writes the link lost wait in `_held`.
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._held: list[asyncio.Future] = []
        self.deferred_generation = False   # new current UUID once the peer is fenced
        self.fenced_by: str | None = None  # who recorded the peer Outdated (for status)
        self.user_paused = False           # pause-sync
        self.on_change: Callable[[Volume], None] | None = None   # the engine's event hook
        self._closing = False

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
            self._release_held(None)
            self._resumed.set()
            log.info("%s: resuming I/O", self.name)
        if self.on_change is not None:
            self.on_change(self)

    def hold_completions(self, futures: list[asyncio.Future]) -> None:
        """Complete `futures` (writes whose mirroring the link lost) once I/O may resume.

        While suspended they wait: the peer may lack these writes, so they are not
        acknowledged until the peer is back or known Outdated.
        """
        if self.state.susp:
            self._held.extend(f for f in futures if not f.done())
            return
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

    def _release_held(self, exc: BaseException | None) -> None:
        held, self._held = self._held, []
        for fut in held:
            if fut.done():
                continue
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

    def mark_out_of_sync(self, offset: int, length: int) -> None:
        if self.bitmap is not None and length > 0:
            self._mark(offset, length)

    def disk_flush(self) -> asyncio.Future:
        assert self.disk is not None
        return self.disk.flush()

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
                 self.out_of_sync_kib())

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
        self._release_held(OSError(errno.EIO, f"volume {self.name} is going down"))
        self._resumed.set()            # suspended writers wake up and fail
        await self.disconnect()
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

    # --- fencing (the daemon is the fence-peer handler) ---------------------------------

    async def peer_outdated(self, by: str = "") -> bool:
        """The peer's copy is recorded Outdated (fence-peer exit code 4): resume I/O.

        A no-op while connected (the peer's disk is known then). A Consistent
        local disk becomes UpToDate (DRBD: Consistent is trusted once the peer is
        known outdated), and a Primary that deferred its new generation at the
        link loss starts it now, before any write goes on without the peer.
        Returns whether anything changed.
        """
        s = self.state
        if s.conn >= ConnState.Connected or self.meta is None:
            return False
        gi = None
        if self.deferred_generation and s.role == Role.Primary and self.meta.sb.gi.bitmap == 0:
            gi = self.meta.sb.gi.new_current(self.rand64, primary=True)
            log.info("%s: new current UUID %016X (peer fenced)", self.name, gi.current)
        self.deferred_generation = False
        disk = DiskState.UpToDate if s.disk == DiskState.Consistent else s.disk
        pdsk = s.pdsk if s.pdsk == DiskState.Inconsistent else DiskState.Outdated
        self.fenced_by = by or None
        log.info("%s: fence-peer: the peer's disk was recorded Outdated%s", self.name,
                 f" by {by}" if by else "")
        await self.change_state(gi=gi, disk=disk, pdsk=pdsk)
        return True

    async def outdated_by_peer(self, by: str = "") -> None:
        """This copy was recorded Outdated by the peer (it fenced us first): stale from now.

        Writes held by the suspension fail with EIO, and so does any further
        I/O: a Primary without UpToDate data must not serve.
        """
        if self.state.conn >= ConnState.Connected:
            raise states.refuse(states.SS_CONNECTED_OUTDATES)
        self.fenced_by = by or None
        self.deferred_generation = False
        self._release_held(OSError(errno.EIO, f"volume {self.name}: this copy was outdated "
                                              f"by {by or 'the peer'}"))
        log.warning("%s: this copy was recorded Outdated%s", self.name,
                    f" by {by}" if by else "")
        if self.state.disk in (DiskState.Consistent, DiskState.UpToDate):
            await self.change_state(disk=DiskState.Outdated)

    async def set_fencing(self, fencing: str) -> None:
        """Change the fencing policy at run time (standalone mode: `dont-care`)."""
        Fencing(fencing)
        self.config = replace(self.config, fencing=fencing)
        self.set_state()

    # --- resync control -----------------------------------------------------------------

    async def invalidate(self) -> None:
        """Full sync from the peer (drbdadm invalidate): every block becomes out of sync.

        Connected: this side turns Inconsistent and the handshake is re-run, so
        it becomes the SyncTarget of a resync covering every block. Disconnected:
        only a Secondary may, and the resync happens at the next connection.
        """
        assert self.bitmap is not None
        s = self.state
        connected = s.conn >= ConnState.Connected
        if s.role == Role.Primary:
            raise VolumeError("ESTATE", f"State change failed: (-15) {self.name} is Primary: a "
                                        f"Primary cannot become SyncTarget here")
        if connected and s.conn != ConnState.Connected:
            raise VolumeError("ESTATE", f"{self.name}: a resync is already running ({s.conn})")
        if connected and s.pdsk != DiskState.UpToDate:
            raise VolumeError("ESTATE", "State change failed: (-2) Need access to UpToDate data")
        self.bitmap.set_all()
        await self.write_bitmap()
        await self.change_state(disk=DiskState.Inconsistent)
        log.info("%s: invalidated: %d KiB out of sync", self.name, self.out_of_sync_kib())
        if connected and self.link is not None:
            self.link.state_changed(renegotiate=True)

    async def invalidate_remote(self) -> None:
        """Full sync to the peer (drbdadm invalidate-remote); needs a connected peer."""
        s = self.state
        if self.link is None or s.conn != ConnState.Connected:
            raise VolumeError("ESTATE", f"{self.name}: invalidate-remote needs a Connected "
                                        f"peer (now {s.conn})")
        if s.disk != DiskState.UpToDate:
            raise VolumeError("ESTATE", "State change failed: (-2) Need access to UpToDate data")
        if s.peer == Role.Primary:
            raise VolumeError("ESTATE", f"State change failed: (-15) the peer of {self.name} "
                                        f"is Primary")
        self.link.request_peer_invalidate()

    def pause_sync(self, paused: bool) -> None:
        """pause-sync / resume-sync: the user flag; the link maps it onto the states."""
        self.user_paused = paused
        if self.link is not None:
            self.link.pause_changed()

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
        if self.on_change is not None:
            self.on_change(self)

    def closed(self) -> None:
        self.open_count -= 1
        if self.on_change is not None:
            self.on_change(self)

    def _check_io(self) -> None:
        # A Secondary refuses all local I/O (DRBD), including reads.
        if self.state.role != Role.Primary or self.disk is None or self._closing:
            raise OSError(errno.EPERM, f"volume {self.name} is not Primary")
        if self.state.disk != DiskState.UpToDate:
            # A Primary without UpToDate data (outdated by a quorate peer): I/O errors.
            raise OSError(errno.EIO, f"volume {self.name}: the local disk is "
                                     f"{self.state.disk}" + (f" (outdated by {self.fenced_by})"
                                                             if self.fenced_by else ""))

    async def _after_resume(self, fn: Callable[..., asyncio.Future | None],
                            *args: Any) -> None:
        """Run an I/O call once writes may resume (quorum fencing), then wait for it."""
        while self.state.susp and not self._closing:
            await self._resumed.wait()
        pending = fn(*args)
        if pending is not None:
            await pending

    def read_into(self, offset: int, view: memoryview) -> None:
        self._check_io()
        assert self.disk is not None
        self.disk.read_into(offset, view)
        self.counters.dr += len(view)

    def write(self, offset: int, data: memoryview, fua: bool) -> asyncio.Future | None:
        self._check_io()
        if self.state.susp:
            # The data must outlive this call: the receive buffer will be reused.
            return self._spawn(self._after_resume(self.write, offset, bytes(data), fua))
        length = len(data)
        shift = self._al_shift
        e0, e1 = offset >> shift, (offset + length - 1) >> shift
        al = self.al
        assert al is not None and self.disk is not None
        if not al.begin(e0, e1):
            # The data must outlive this call: the receive buffer will be reused.
            return self._spawn(self._write_cold(offset, bytes(data), fua, e0, e1))
        try:
            remote = self._submit(offset, data, length, DP_FUA if fua else 0)
        finally:
            self._al_end(e0, e1)
        return _both(self.disk.flush() if fua else None, remote)

    def _submit(self, offset: int, data: memoryview | bytes | None, length: int,
                flags: int) -> asyncio.Future | None:
        """Mark or mirror, then apply locally (data None: discard per flags)."""
        assert self.disk is not None
        mirror = self._mirror
        if not mirror:
            self._mark(offset, length)
            if self._oos_notice and self.link is not None:
                self.link.send_out_of_sync(offset, length)
        if data is None:
            self.disk.discard(offset, length, keep_allocated=bool(flags & DP_ZERO_KEEP),
                              fast=False)
        else:
            self.disk.write(offset, data)
            self.counters.dw += length
        if mirror:
            assert self.link is not None
            return self.link.send_write(offset, data, length, flags)
        return None

    def _mark(self, offset: int, length: int) -> None:
        assert self.bitmap is not None
        shift = self.bm_shift
        first, last = offset >> shift, (offset + length - 1) >> shift
        if first == last:
            self.bitmap.set_bit(first)
        else:
            self.bitmap.set_range(first, last)

    async def _write_cold(self, offset: int, data: bytes, fua: bool, e0: int, e1: int) -> None:
        await self._al_begin(e0, e1)
        if self.state.susp or self._closing:
            # Suspended while waiting for the activity log: start over once resumed.
            self._al_end(e0, e1)
            await self._after_resume(self.write, offset, data, fua)
            return
        self._check_io()
        assert self.disk is not None
        try:
            remote = self._submit(offset, data, len(data), DP_FUA if fua else 0)
        finally:
            self._al_end(e0, e1)
        both = _both(self.disk.flush() if fua else None, remote)
        if both is not None:
            await both

    def trim(self, offset: int, length: int, fua: bool) -> asyncio.Future | None:
        return self.write_zeroes(offset, length, fua, no_hole=False, fast=False)

    def write_zeroes(self, offset: int, length: int, fua: bool, no_hole: bool,
                     fast: bool) -> asyncio.Future | None:
        self._check_io()
        if length == 0:
            return None
        if self.state.susp:
            return self._spawn(self._after_resume(self.write_zeroes, offset, length, fua,
                                                  no_hole, fast))
        assert self.al is not None and self.disk is not None
        flags = (DP_ZERO_KEEP if no_hole else DP_DISCARD) | (DP_FUA if fua else 0)
        e0, e1 = self.al.extents_of(offset, length)
        if fast and not (self.disk.zero_range_ok if no_hole else self.disk.punch_hole_ok):
            raise OSError(errno.ENOTSUP, "zeroing this range is not fast")
        if length > BIG_DISCARD or not self.al.begin(e0, e1):
            return self._spawn(self._discard_async(offset, length, flags, e0, e1))
        try:
            remote = self._submit(offset, None, length, flags)
        finally:
            self._al_end(e0, e1)
        return _both(self.disk.flush() if fua else None, remote)

    async def _discard_async(self, offset: int, length: int, flags: int, e0: int,
                             e1: int) -> None:
        await self._al_begin(e0, e1)
        if self.state.susp or self._closing:
            self._al_end(e0, e1)
            await self._after_resume(self.write_zeroes, offset, length, bool(flags & DP_FUA),
                                     bool(flags & DP_ZERO_KEEP), False)
            return
        self._check_io()
        assert self.disk is not None
        try:
            mirror = self._mirror
            if not mirror:
                self._mark(offset, length)
                if self._oos_notice and self.link is not None:
                    self.link.send_out_of_sync(offset, length)
            await asyncio.to_thread(self.disk.discard, offset, length,
                                    keep_allocated=bool(flags & DP_ZERO_KEEP), fast=False)
            remote = None
            if mirror and self.link is not None and self._mirror:
                remote = self.link.send_write(offset, None, length, flags)
        finally:
            self._al_end(e0, e1)
        both = _both(self.disk.flush() if flags & DP_FUA else None, remote)
        if both is not None:
            await both

    def flush(self) -> asyncio.Future:
        self._check_io()
        if self.state.susp:
            return self._spawn(self._after_resume(self.flush))
        assert self.disk is not None
        remote = self.link.send_barrier() if self._mirror and self.link is not None else None
        return _both(self.disk.flush(), remote)

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
        link = self.link
        pe = ep = 0
        if link is not None:
            pe = link.pending_count()
            ep = link.epochs_in_flight()
        ap = self.nbd.inflight() if self.nbd is not None else 0
        cfg = self.config
        return {
            "name": self.name,
            "size": self.size,
            "role": str(s.role),
            "peer_role": str(s.peer),
            "cstate": str(s.conn),
            "disk": str(s.disk),
            "peer_disk": str(s.pdsk),
            "suspended": s.susp,
            "fencing": cfg.fencing,
            "fence": "needed" if s.susp else None,
            "fenced_by": self.fenced_by,
            "paused": {"user": self.user_paused,
                       "peer": bool(link is not None and link.peer_paused)},
            "protocol": cfg.protocol if cfg.has_net else "C",
            "has_net": cfg.has_net,
            "node": cfg.node,
            "peer_node": cfg.peer_node,
            "gi": str(meta.sb.gi) if meta else None,
            "flags": int(meta.sb.flags) if meta else None,
            "crashed_primary": self.crashed_primary,
            "out_of_sync_kib": self.out_of_sync_kib(),
            "bitmap_bits": self.bitmap.weight if self.bitmap else 0,
            "al_hot": len(self.al.hot()) if self.al else 0,
            "open_count": self.open_count,
            "socket": cfg.socket,
            "backing": cfg.backing,
            "peer": self._peer_status(),
            "counters": {"ns": c.ns // 1024, "nr": c.nr // 1024, "dw": c.dw // 1024,
                         "dr": c.dr // 1024, "al": c.al, "bm": c.bm, "lo": c.lo,
                         "pe": pe, "ua": c.ua, "ap": ap, "ep": ep},
        }

    def _peer_status(self) -> dict[str, Any] | None:
        link = self.link
        if link is None:
            return None
        out: dict[str, Any] = {"address": self.config.peer_address, "node": self.config.peer_node,
                               "protocol": self.config.protocol, "last_error": link.last_error,
                               "peer_gi": str(link.peer_gi)}
        if link.resync is not None and self.bitmap is not None:
            out["sync"] = link.resync.progress(self.bitmap.weight, self.config.bm_block_size,
                                               self.config.resync_rate)
        return out

    def proc_drbd(self, minor: int) -> str:
        """The /proc/drbd lines of this volume (`format.proc_volume`)."""
        return fmt.proc_volume(self.status(), minor)
