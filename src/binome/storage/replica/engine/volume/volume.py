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

from binome.storage.replica.core import format as fmt
from binome.storage.replica.core import states
from binome.storage.replica.core.activity_log import ActivityLog
from binome.storage.replica.core.bitmap import Bitmap
from binome.storage.replica.core.config import (
    ADJUSTABLE,
    LOCAL_OPTIONS,
    SHARED_OPTIONS,
    ConfigError,
    VolumeConfig,
)
from binome.storage.replica.core.states import ConnState, DiskState, Fencing, MetaFlags, Role, State
from binome.storage.replica.core.uuids import GenerationIds
from binome.storage.replica.core.wire import DP_DISCARD, DP_FUA, DP_ZERO_KEEP
from binome.storage.replica.engine import handlers
from binome.storage.replica.engine.completion import Pending
from binome.storage.replica.engine.config_file import save_config
from binome.storage.replica.engine.disk import LocalDisk
from binome.storage.replica.engine.meta import MetaError, MetaFile, Superblock
from binome.storage.replica.engine.nbd_server import NbdServer
from binome.storage.replica.engine.peer.link import PeerLink

log = logging.getLogger("binome.replica")

BITMAP_WRITEBACK_INTERVAL = 5.0
# DRBD's fencing policies whose fence-peer handler the engine runs (quorum: the daemon).
HANDLER_FENCING = (Fencing.RESOURCE_ONLY, Fencing.RESOURCE_AND_STONITH)
FENCE_PEER_CODES = {3: "peer is inconsistent", 4: "peer was fenced",
                    5: "peer is unreachable, assumed to be dead",
                    6: "peer is primary, will outdate myself", 7: "peer was stonithed"}
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


def _both(a: Pending | None, b: Pending | None) -> Pending | None:
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
            self._release_held(None)
            self._resumed.set()
            log.info("%s: resuming I/O", self.name)
        if (new.role == Role.Primary and new.pdsk == DiskState.DUnknown
                and old.pdsk != DiskState.DUnknown and new.conn < ConnState.Connected
                and Fencing(self.config.fencing) in HANDLER_FENCING
                and (self._fence_task is None or self._fence_task.done())):
            # DRBD's conn_try_outdate_peer_async: a Primary lost its peer.
            self._fence_task = self._spawn_detached(self.fence_peer())
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

    def hold_completions(self, futures: list[Pending]) -> None:
        """Complete `futures` (writes whose mirroring the link lost) once I/O may resume.

        While suspended they wait: the peer may lack these writes, so they are not
        acknowledged until the peer is back or known Outdated.
        """
        if self._diskless_io:
            # No local copy (the disk failed): what the peer did not acknowledge is lost.
            for fut in futures:
                if not fut.done():
                    fut.set_exception(OSError(errno.EIO, f"volume {self.name}: no local disk "
                                                         f"and the link to the peer was lost"))
            return
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

    def disk_flush(self) -> Pending:
        """fdatasync for the link (barriers, FUA and resync ends on this side).

        A failure detaches the disk (`local_io_error`) and then counts as done:
        the metadata says FULL_SYNC, so whatever the flush lost is resynced
        when a disk is attached again, and the peer learns we are Diskless.
        """
        assert self.disk is not None
        fut = self._local_flush()
        if fut is None:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return fut

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
            await self.fence_peer()
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

    async def fence_peer(self) -> int:
        """Run the fence-peer handler and apply its exit code (DRBD's conn_try_outdate_peer).

        3: the peer's disk is Inconsistent; 4 (fenced), 7 (stonithed), and 5
        (unreachable, only with an UpToDate disk here): the peer is Outdated,
        I/O resumes; 6: the peer is Primary, this copy outdates itself; anything
        else: the handler is broken and nothing changes (resource-and-stonith
        stays suspended; `peer-outdated` is the administrator's way out).
        """
        result = await self.run_handler("fence-peer")
        code = result.exit_code if result.configured else -1
        s = self.state
        if s.conn >= ConnState.Connected or self.meta is None:
            return code               # the peer came back meanwhile: nothing to fence
        what = FENCE_PEER_CODES.get(code)
        if what is None or (code == 5 and s.disk != DiskState.UpToDate):
            log.error("%s: fence-peer helper broken, returned %d", self.name, code)
            return code
        log.info("%s: fence-peer helper returned %d (%s)", self.name, code, what)
        if code == 6:
            await self.outdated_by_peer("the fence-peer handler (the peer is Primary)")
        elif code == 3:
            await self.peer_outdated("the fence-peer handler")
            await self.change_state(pdsk=DiskState.Inconsistent)
        else:
            await self.peer_outdated("the fence-peer handler")
        return code

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

    async def resize(self, size: int, *, assume_peer_has_space: bool = False) -> None:
        """Grow the volume (drbdadm resize): the peer's copy first, then this one.

        Connected: the peer grows its copy and answers; this side grows when
        the answer arrives (in the packet handler: no peer write beyond the old
        end can be handled before). Without a connection only with
        `assume_peer_has_space` (DRBD's flag): each side is then grown alone
        and the next handshake checks the sizes. Shrinking is refused.
        """
        s = self.state
        if self.disk is None or self.meta is None:
            raise VolumeError("ESTATE", f"{self.name}: not attached")
        if size < self.size:
            raise VolumeError("EINVAL", f"{self.name}: shrinking a volume is not supported "
                                        f"({self.size} -> {size} bytes)")
        if size % 4096:
            raise VolumeError("EINVAL", "size must be a multiple of 4096 bytes")
        if size == self.size:
            return
        if self.disk.is_block:
            raise VolumeError("EINVAL", f"{self.name}: the backing store is a block device; "
                                        f"growing it is not supported here")
        if self.link is not None and not assume_peer_has_space:
            if s.conn != ConnState.Connected:
                raise VolumeError("ESTATE", f"{self.name}: resize needs a Connected peer (now "
                                            f"{s.conn}) or assume_peer_has_space")
            try:
                await self.link.request_resize(size)
            except (ValueError, ConnectionError, TimeoutError) as e:
                raise VolumeError("EIO", f"{self.name}: resize failed: {e}") from None
            return
        if self.link is not None and s.conn >= ConnState.Connected:
            raise VolumeError("ESTATE", f"{self.name}: Connected: the peer grows too; "
                                        f"resize without assume_peer_has_space")
        await self.grow(size)

    # --- adjust (drbdadm adjust of the disk/net options) ---------------------------------

    def _check_adjust(self, new: VolumeConfig, diff: dict[str, list[Any]]) -> None:
        """DRBD's rules for what may change now (drbd_nl.c `_check_net_options`); raises
        VolumeError("ESTATE", "<setting>: reason") naming the refused setting."""
        s = self.state
        link = self.link
        both_primary = s.role == Role.Primary and s.peer == Role.Primary
        if "allow_two_primaries" in diff and not new.allow_two_primaries and both_primary:
            raise VolumeError("ESTATE", "allow_two_primaries: State change failed: Can not "
                                        "clear allow_two_primaries as long as there are "
                                        "primaries on both sides")
        if "protocol" in diff and both_primary:
            raise VolumeError("ESTATE", "protocol: State change failed: can not change the "
                                        "protocol while both sides are Primary")
        if "verify_alg" in diff and s.conn in (ConnState.VerifyS, ConnState.VerifyT):
            raise VolumeError("ESTATE", "verify_alg: State change failed: Can not change "
                                        "verify-alg while online verify runs")
        if "csums_alg" in diff and s.conn in (
                ConnState.SyncSource, ConnState.SyncTarget, ConnState.PausedSyncS,
                ConnState.PausedSyncT, ConnState.WFBitMapS, ConnState.WFBitMapT,
                ConnState.WFSyncUUID):
            raise VolumeError("ESTATE", "csums_alg: State change failed: Can not change "
                                        "csums-alg while resync is in progress")
        shared = [k for k in diff if k in SHARED_OPTIONS]
        if shared and link is not None and not link.stopped and s.conn == ConnState.WFReportParams:
            # P_PROTOCOL is being exchanged with the old values: the peer would compare
            # the wrong ones. The handshake takes a moment; ask again after it.
            raise VolumeError("ESTATE", f"{shared[0]}: State change failed: the connection "
                                        f"handshake is in progress (WFReportParams); retry")

    async def adjust(self, changes: dict[str, Any], *, dry_run: bool = False,
                     from_peer: bool = False) -> dict[str, list[Any]]:
        """Change settings of the running volume (DRBD's `adjust`); {setting: [old, new]}.

        LOCAL_OPTIONS (the resync controller) take effect at the next controller step,
        also during a running resync. SHARED_OPTIONS, while connected, are first
        applied by the peer (P_STATE `adjust`, DRBD's P_PROTOCOL_UPDATE) and then here;
        a refusal by either side changes nothing. Disconnected, they change here only
        and the next handshake compares them (the daemon adjusts both nodes); a link
        that gave up on "incompatible ... settings" connects again after an adjust.
        Persisted in volume.json.
        """
        old = self.config
        try:
            new = old.adjusted(changes)
        except ConfigError as e:
            raise VolumeError("EINVAL", str(e)) from None
        diff = {k: [getattr(old, k), getattr(new, k)] for k in ADJUSTABLE
                if getattr(old, k) != getattr(new, k)}
        if not diff:
            return {}
        self._check_adjust(new, diff)
        if dry_run:
            return diff
        link = self.link
        shared = {k: getattr(new, k) for k in diff if k in SHARED_OPTIONS}
        if (shared and not from_peer and link is not None and not link.stopped
                and self.state.conn >= ConnState.Connected):
            try:
                await link.request_adjust(shared)
            except (ValueError, ConnectionError, TimeoutError) as e:
                raise VolumeError("ESTATE", f"{next(iter(shared))}: the peer refused the "
                                            f"change: {e}") from None
            # The peer applied it; ours must follow whatever changed here meanwhile.
            new = replace(self.config, **shared, **{k: getattr(new, k) for k in diff
                                                     if k in LOCAL_OPTIONS})
        else:
            new = replace(self.config, **{k: getattr(new, k) for k in diff})
        self.config = new
        if self.link is not None:
            self.link.apply_config(new)
        await asyncio.to_thread(save_config, new, Path(self.conf_path))
        log.info("%s: adjusted%s: %s", self.name, " by the peer" if from_peer else "",
                 ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
        link = self.link
        if (shared and not from_peer and link is not None and link.stopped
                and "incompatible" in (link.last_error or "")):
            await self.connect()
        if self.on_change is not None:
            self.on_change(self)
        return diff

    async def grow(self, size: int) -> None:
        """Grow this copy: backing file, then volume.json, then the metadata (commit point).

        The new area reads as zeroes on both copies (sparse files), so it is in
        sync: no bits are set. NBD clients connecting from now on see the new
        size; connected ones keep the size they negotiated.
        """
        assert self.disk is not None and self.meta is not None
        old = self.size
        if size <= old:
            return
        os.ftruncate(self.disk.fd, size)
        await asyncio.to_thread(os.fsync, self.disk.fd)
        self.config = replace(self.config, size=size)
        await asyncio.to_thread(save_config, self.config, Path(self.conf_path))
        async with self._meta_lock:
            # Inline: the bitmap grows in place while no other code can touch it.
            self.meta.grow(size)
        self.disk.size = size
        self.size = size
        log.info("%s: size changed from %d to %d bytes", self.name, old, size)
        if self.on_change is not None:
            self.on_change(self)

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

    def verify(self, start: int = 0) -> None:
        """Online verify (drbdadm verify): compare every block with the peer's copy."""
        if self.link is None:
            raise VolumeError("ESTATE", f"{self.name}: online verify needs a connected peer")
        try:
            self.link.start_verify(start)
        except ValueError as e:
            raise VolumeError("ESTATE", f"{self.name}: {e}") from None

    def verify_stop(self) -> None:
        if self.link is None:
            raise VolumeError("ESTATE", f"{self.name}: no online verify is running")
        try:
            self.link.stop_verify()
        except ValueError as e:
            raise VolumeError("ESTATE", f"{self.name}: {e}") from None

    def pause_sync(self, paused: bool) -> None:
        """pause-sync / resume-sync: the user flag; the link maps it onto the states."""
        self.user_paused = paused
        if self.link is not None:
            self.link.pause_changed()

    # --- the Export interface (called by the NBD server) --------------------------------

    def description(self) -> str:
        return f"binome replicated volume {self.name}"

    def refuse_reason(self) -> str | None:
        if self.state.disk == DiskState.Diskless and not (self._diskless_io
                                                          and self._peer_serves()):
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
        if self._diskless_io:
            if not self._peer_serves():
                raise OSError(errno.EIO, f"volume {self.name}: no local disk (detached after "
                                         f"an I/O error) and no UpToDate peer")
            return
        if self.state.disk != DiskState.UpToDate:
            # A Primary without UpToDate data (outdated by a quorate peer): I/O errors.
            raise OSError(errno.EIO, f"volume {self.name}: the local disk is "
                                     f"{self.state.disk}" + (f" (outdated by {self.fenced_by})"
                                                             if self.fenced_by else ""))

    async def _after_resume(self, fn: Callable[..., Pending | None],
                            *args: Any) -> None:
        """Run an I/O call once writes may resume (quorum fencing), then wait for it."""
        while self.state.susp and not self._closing:
            await self._resumed.wait()
        pending = fn(*args)
        if pending is not None:
            await pending

    def read_into(self, offset: int, view: memoryview) -> Pending | None:
        self._check_io()
        if self._diskless_io:
            return self._read_remote(offset, view)
        assert self.disk is not None
        try:
            self.disk.read_into(offset, view)
        except OSError as e:
            if not self.local_io_error("read", e):
                raise
            return self._read_remote(offset, view)     # DRBD retries a failed read remotely
        self.counters.dr += len(view)
        return None

    def write(self, offset: int, data: memoryview, fua: bool) -> Pending | None:
        self._check_io()
        if self.state.susp:
            # The data must outlive this call: the receive buffer will be reused.
            return self._spawn(self._after_resume(self.write, offset, bytes(data), fua))
        length = len(data)
        if self._diskless_io:
            return self._write_remote_only(offset, data, length, DP_FUA if fua else 0)
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
        return _both(self._local_flush() if fua else None, remote)

    def _submit(self, offset: int, data: memoryview | bytes | None, length: int,
                flags: int) -> Pending | None:
        """Mark or mirror, then apply locally (data None: discard per flags)."""
        assert self.disk is not None
        if self._diskless_io:
            return self._write_remote_only(offset, data, length, flags)
        mirror = self._mirror
        if not mirror:
            self._mark(offset, length)
            if self._oos_notice and self.link is not None:
                self.link.send_out_of_sync(offset, length)
        try:
            if data is None:
                self.disk.discard(offset, length, keep_allocated=bool(flags & DP_ZERO_KEEP),
                                  fast=False)
            else:
                self.disk.write(offset, data)
                self.counters.dw += length
        except OSError as e:
            # Completed by the peer alone when it has the data (DRBD: on-io-error detach).
            if not (mirror and self.local_io_error("write", e)):
                raise
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
        both = _both(self._local_flush() if fua else None, remote)
        if both is not None:
            await both

    def trim(self, offset: int, length: int, fua: bool) -> Pending | None:
        return self.write_zeroes(offset, length, fua, no_hole=False, fast=False)

    def write_zeroes(self, offset: int, length: int, fua: bool, no_hole: bool,
                     fast: bool) -> Pending | None:
        self._check_io()
        if length == 0:
            return None
        if self.state.susp:
            return self._spawn(self._after_resume(self.write_zeroes, offset, length, fua,
                                                  no_hole, fast))
        assert self.al is not None and self.disk is not None
        flags = (DP_ZERO_KEEP if no_hole else DP_DISCARD) | (DP_FUA if fua else 0)
        if self._diskless_io:
            return self._write_remote_only(offset, None, length, flags)
        e0, e1 = self.al.extents_of(offset, length)
        if fast and not (self.disk.zero_range_ok if no_hole else self.disk.punch_hole_ok):
            raise OSError(errno.ENOTSUP, "zeroing this range is not fast")
        if length > BIG_DISCARD or not self.al.begin(e0, e1):
            return self._spawn(self._discard_async(offset, length, flags, e0, e1))
        try:
            remote = self._submit(offset, None, length, flags)
        finally:
            self._al_end(e0, e1)
        return _both(self._local_flush() if fua else None, remote)

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
        if self._diskless_io:            # the disk failed while this waited
            self._al_end(e0, e1)
            pending = self._write_remote_only(offset, None, length, flags)
            if pending is not None:
                await pending
            return
        try:
            mirror = self._mirror
            if not mirror:
                self._mark(offset, length)
                if self._oos_notice and self.link is not None:
                    self.link.send_out_of_sync(offset, length)
            if self.config.allow_two_primaries:
                # Two primaries: the local part and the P_DATA must not be separated by a
                # peer write to the same range (peer.replication.unsuperseded's premise).
                self.disk.discard(offset, length, keep_allocated=bool(flags & DP_ZERO_KEEP),
                                  fast=False)
            else:
                await asyncio.to_thread(self.disk.discard, offset, length,
                                        keep_allocated=bool(flags & DP_ZERO_KEEP), fast=False)
            remote = None
            if mirror and self.link is not None and self._mirror:
                remote = self.link.send_write(offset, None, length, flags)
        finally:
            self._al_end(e0, e1)
        both = _both(self._local_flush() if flags & DP_FUA else None, remote)
        if both is not None:
            await both

    def flush(self) -> Pending | None:
        self._check_io()
        if self.state.susp:
            return self._spawn(self._after_resume(self.flush))
        assert self.disk is not None
        remote = self.link.send_barrier() if self._mirror and self.link is not None else None
        return _both(self._local_flush(), remote)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._check_io()
        assert self.disk is not None
        if self._diskless_io:
            # No local disk to ask: everything is reported allocated (always correct).
            left, out = min(length, self.size - offset), []
            while left > 0:
                out.append((min(left, 0x80000000), 0))
                left -= out[-1][0]
            return out
        return self.disk.block_status(offset, length)

    # --- local I/O errors (DRBD's on-io-error detach) ----------------------------------

    def _peer_serves(self) -> bool:
        """The peer can take this Primary's I/O alone: connected, with UpToDate data."""
        s = self.state
        return (self.link is not None and self.link.is_connected
                and s.conn >= ConnState.Connected and s.pdsk == DiskState.UpToDate
                and self._mirror)

    def local_io_error(self, what: str, exc: OSError) -> bool:
        """The backing store failed (`what`: read, write, flush): detach it.

        With `on_io_error detach` (the default) the disk goes Failed, then
        Diskless (`_detach_failed`), and every later request is served by the
        peer. Returns whether the failed request may be completed by the peer.
        Errors that say the request was wrong, not the disk, are not I/O errors.
        """
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        if self.config.on_io_error != "detach":
            return False
        if self._diskless_io:
            return self._peer_serves()
        if self._closing or self.disk is None or self.state.disk <= DiskState.Failed:
            return False            # going down, or not attached: not a disk failure
        self._diskless_io = True
        log.error("%s: Local IO failed in %s: %s. Detaching...", self.name, what, exc)
        self.set_state(disk=DiskState.Failed)
        self._spawn_detached(self._detach_failed())
        return self._peer_serves()

    async def _detach_failed(self) -> None:
        """Failed -> Diskless: release the backing store, remember a full sync is due."""
        self.call_handler("local-io-error")
        disk = self.disk
        assert disk is not None and self.meta is not None
        # fdatasyncs running in threads still hold the descriptor.
        for _ in range(3000):
            if not disk.flushing:
                break
            await asyncio.sleep(0.01)
        disk.close()
        # Whatever the old disk held may be stale or lost: when a disk is attached
        # again (`attach`), everything is resynced from the peer (departure: DRBD
        # keeps a bitmap of the writes done while Diskless and resyncs those).
        try:
            await self.persist(flags=self.meta.sb.flags | MetaFlags.FULL_SYNC,
                               state=self.state.with_(disk=DiskState.Diskless))
        except (OSError, MetaError) as e:
            log.error("%s: could not record the failed disk in the metadata: %s", self.name, e)
        self.set_state(disk=DiskState.Diskless)
        if self.link is not None:
            self.link.state_changed()

    async def reattach(self) -> None:
        """drbdadm attach after a failed disk was detached: a full sync from the peer.

        The backing store named in the config is opened again (the replaced disk);
        every block is out of sync and the disk Inconsistent, and the handshake
        is re-run so this side becomes the SyncTarget. Only a Secondary: a
        Primary cannot be a SyncTarget here.
        """
        assert self.meta is not None and self.bitmap is not None
        if not self._diskless_io:
            raise VolumeError("EBUSY", f"{self.name}: a disk is attached already")
        if self.state.disk != DiskState.Diskless:
            raise VolumeError("EBUSY", f"{self.name}: the failed disk is still being detached")
        if self.state.role == Role.Primary:
            raise VolumeError("ESTATE", f"State change failed: (-15) {self.name} is Primary: a "
                                        f"Primary cannot become SyncTarget here (demote first)")
        disk = LocalDisk(self.config.backing, self.config.size)
        try:
            await asyncio.to_thread(disk.open)
        except OSError as e:
            raise VolumeError("EIO", f"{self.name}: backing store: {e}") from e
        self.disk = disk
        self._diskless_io = False
        self.bitmap.set_all()
        await self.write_bitmap()
        await self.change_state(disk=DiskState.Inconsistent)
        # FULL_SYNC has done its job: every bit is set and on disk.
        await self.persist(flags=self.meta.sb.flags & ~MetaFlags.FULL_SYNC)
        log.info("%s: attached %s again: %d KiB out of sync", self.name, self.config.backing,
                 self.out_of_sync_kib())
        if self.link is not None and self.state.conn >= ConnState.Connected:
            self.link.state_changed(renegotiate=True)

    def _read_remote(self, offset: int, view: memoryview) -> Pending:
        if not self._peer_serves():
            raise OSError(errno.EIO, f"volume {self.name}: no local disk and no UpToDate peer")
        assert self.link is not None
        return self.link.read_remote(offset, view)

    def _write_remote_only(self, offset: int, data: memoryview | bytes | None, length: int,
                           flags: int) -> Pending | None:
        """Diskless: the write (or discard) goes to the peer only."""
        if not self._peer_serves():
            raise OSError(errno.EIO, f"volume {self.name}: no local disk and no UpToDate peer")
        assert self.link is not None
        done = self.link.send_write(offset, data, length, flags)
        if done is None and not self.link.is_connected:
            raise OSError(errno.EIO, f"volume {self.name}: the link to the peer was lost")
        return done

    def _local_flush(self) -> Pending | None:
        """fdatasync of the backing store; a failure detaches it (the peer has the data)."""
        if self._diskless_io or self.disk is None:
            return None
        inner = self.disk.flush()
        out = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future) -> None:
            if out.done():
                return
            exc = f.exception()
            if exc is None:
                out.set_result(None)
            elif isinstance(exc, OSError) and self.local_io_error("flush", exc):
                out.set_result(None)
            else:
                out.set_exception(exc)

        inner.add_done_callback(done)
        return out

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
            "verify": self.verify_result,
            "protocol": cfg.protocol if cfg.has_net else "C",
            "settings": cfg.settings(),
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
                               "peer_gi": str(link.peer_gi), "conflicts": link.conflicts,
                               "last_resync": link.last_resync}
        rs = link.resync or link.verify
        if rs is not None and self.bitmap is not None:
            # "sync" is also an online verify's progress ("verify": true), as in /proc/drbd.
            out["sync"] = rs.progress(self.bitmap.weight, self.config.bm_block_size,
                                      self.config.resync_rate)
        return out

    def proc_drbd(self, minor: int) -> str:
        """The /proc/drbd lines of this volume (`format.proc_volume`)."""
        return fmt.proc_volume(self.status(), minor)
