"""A volume's I/O path: the NBD export's calls, the write path, the activity log, held acks.

Owns steps 1-3 of `volume`'s write path (activity-log transactions, marking or
mirroring, local write plus the peer's completion), reads (local, or served by
the peer when Diskless), discards and flushes, the quorum-fencing waits
(`after_resume`) and the completions held while suspended (`hold_completions`).
Functions of the `Volume` they serve; `Volume` exposes the public ones as its
methods (the NBD `Export` interface and what the peer link calls).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core.states import ConnState, DiskState, Role
from binome.storage.replica.core.wire import DP_DISCARD, DP_FUA, DP_ZERO_KEEP
from binome.storage.replica.engine.completion import Pending

if TYPE_CHECKING:
    from binome.storage.replica.engine.volume.volume import Volume

log = logging.getLogger("binome.replica")

BIG_DISCARD = 1 << 20            # discards larger than this run in a thread


def _both(a: Pending | None, b: Pending | None) -> Pending | None:
    """A future done when both parts are (either may be absent)."""
    if a is None:
        return b
    if b is None:
        return a
    return asyncio.gather(a, b)


def hold_completions(vol: Volume, futures: list[Pending]) -> None:
    """Complete `futures` (writes whose mirroring the link lost) once I/O may resume.

    While suspended they wait: the peer may lack these writes, so they are not
    acknowledged until the peer is back or known Outdated.
    """
    if vol._diskless_io:
        # No local copy (the disk failed): what the peer did not acknowledge is lost.
        for fut in futures:
            if not fut.done():
                fut.set_exception(OSError(errno.EIO, f"volume {vol.name}: no local disk "
                                                     f"and the link to the peer was lost"))
        return
    if vol.state.susp:
        vol._held.extend(f for f in futures if not f.done())
        return
    for fut in futures:
        if not fut.done():
            fut.set_result(None)


def release_held(vol: Volume, exc: BaseException | None) -> None:
    held, vol._held = vol._held, []
    for fut in held:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


def mark_out_of_sync(vol: Volume, offset: int, length: int) -> None:
    if vol.bitmap is not None and length > 0:
        mark(vol, offset, length)


def disk_flush(vol: Volume) -> Pending:
    """fdatasync for the link (barriers, FUA and resync ends on this side).

    A failure detaches the disk (`local_io_error`) and then counts as done:
    the metadata says FULL_SYNC, so whatever the flush lost is resynced
    when a disk is attached again, and the peer learns we are Diskless.
    """
    assert vol.disk is not None
    fut = local_flush(vol)
    if fut is None:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done
    return fut


def check_io(vol: Volume) -> None:
    # A Secondary refuses all local I/O (DRBD), including reads.
    if vol.state.role != Role.Primary or vol.disk is None or vol._closing:
        raise OSError(errno.EPERM, f"volume {vol.name} is not Primary")
    if vol._diskless_io:
        if not peer_serves(vol):
            raise OSError(errno.EIO, f"volume {vol.name}: no local disk (detached after "
                                     f"an I/O error) and no UpToDate peer")
        return
    if vol.state.disk != DiskState.UpToDate:
        # A Primary without UpToDate data (outdated by a quorate peer): I/O errors.
        raise OSError(errno.EIO, f"volume {vol.name}: the local disk is "
                                 f"{vol.state.disk}" + (f" (outdated by {vol.fenced_by})"
                                                         if vol.fenced_by else ""))


async def after_resume(vol: Volume, fn: Callable[..., Pending | None],
                        *args: Any) -> None:
    """Run an I/O call once writes may resume (quorum fencing), then wait for it."""
    while vol.state.susp and not vol._closing:
        await vol._resumed.wait()
    pending = fn(*args)
    if pending is not None:
        await pending


def read_into(vol: Volume, offset: int, view: memoryview) -> Pending | None:
    check_io(vol)
    if vol._diskless_io:
        return read_remote(vol, offset, view)
    assert vol.disk is not None
    try:
        vol.disk.read_into(offset, view)
    except OSError as e:
        if not vol.local_io_error("read", e):
            raise
        return read_remote(vol, offset, view)     # DRBD retries a failed read remotely
    vol.counters.dr += len(view)
    return None


def write(vol: Volume, offset: int, data: memoryview, fua: bool) -> Pending | None:
    check_io(vol)
    if vol.state.susp:
        # The data must outlive this call: the receive buffer will be reused.
        return vol._spawn(after_resume(vol, vol.write, offset, bytes(data), fua))
    length = len(data)
    if vol._diskless_io:
        return write_remote_only(vol, offset, data, length, DP_FUA if fua else 0)
    shift = vol._al_shift
    e0, e1 = offset >> shift, (offset + length - 1) >> shift
    al = vol.al
    assert al is not None and vol.disk is not None
    if not al.begin(e0, e1):
        # The data must outlive this call: the receive buffer will be reused.
        return vol._spawn(write_cold(vol, offset, bytes(data), fua, e0, e1))
    try:
        remote = submit(vol, offset, data, length, DP_FUA if fua else 0)
    finally:
        al_end(vol, e0, e1)
    return _both(local_flush(vol) if fua else None, remote)


def submit(vol: Volume, offset: int, data: memoryview | bytes | None, length: int,
            flags: int) -> Pending | None:
    """Mark or mirror, then apply locally (data None: discard per flags)."""
    assert vol.disk is not None
    if vol._diskless_io:
        return write_remote_only(vol, offset, data, length, flags)
    mirror = vol._mirror
    if not mirror:
        mark(vol, offset, length)
        if vol._oos_notice and vol.link is not None:
            vol.link.send_out_of_sync(offset, length)
    try:
        if data is None:
            vol.disk.discard(offset, length, keep_allocated=bool(flags & DP_ZERO_KEEP),
                              fast=False)
        else:
            vol.disk.write(offset, data)
            vol.counters.dw += length
    except OSError as e:
        # Completed by the peer alone when it has the data (DRBD: on-io-error detach).
        if not (mirror and vol.local_io_error("write", e)):
            raise
    if mirror:
        assert vol.link is not None
        return vol.link.send_write(offset, data, length, flags)
    return None


def mark(vol: Volume, offset: int, length: int) -> None:
    assert vol.bitmap is not None
    shift = vol.bm_shift
    first, last = offset >> shift, (offset + length - 1) >> shift
    if first == last:
        vol.bitmap.set_bit(first)
    else:
        vol.bitmap.set_range(first, last)


async def write_cold(vol: Volume, offset: int, data: bytes, fua: bool, e0: int, e1: int) -> None:
    await al_begin(vol, e0, e1)
    if vol.state.susp or vol._closing:
        # Suspended while waiting for the activity log: start over once resumed.
        al_end(vol, e0, e1)
        await after_resume(vol, vol.write, offset, data, fua)
        return
    check_io(vol)
    assert vol.disk is not None
    try:
        remote = submit(vol, offset, data, len(data), DP_FUA if fua else 0)
    finally:
        al_end(vol, e0, e1)
    both = _both(local_flush(vol) if fua else None, remote)
    if both is not None:
        await both


def trim(vol: Volume, offset: int, length: int, fua: bool) -> Pending | None:
    return write_zeroes(vol, offset, length, fua, no_hole=False, fast=False)


def write_zeroes(vol: Volume, offset: int, length: int, fua: bool, no_hole: bool,
                 fast: bool) -> Pending | None:
    check_io(vol)
    if length == 0:
        return None
    if vol.state.susp:
        return vol._spawn(after_resume(vol, vol.write_zeroes, offset, length, fua,
                                              no_hole, fast))
    assert vol.al is not None and vol.disk is not None
    flags = (DP_ZERO_KEEP if no_hole else DP_DISCARD) | (DP_FUA if fua else 0)
    if vol._diskless_io:
        return write_remote_only(vol, offset, None, length, flags)
    e0, e1 = vol.al.extents_of(offset, length)
    if fast and not (vol.disk.zero_range_ok if no_hole else vol.disk.punch_hole_ok):
        raise OSError(errno.ENOTSUP, "zeroing this range is not fast")
    if length > BIG_DISCARD or not vol.al.begin(e0, e1):
        return vol._spawn(discard_async(vol, offset, length, flags, e0, e1))
    try:
        remote = submit(vol, offset, None, length, flags)
    finally:
        al_end(vol, e0, e1)
    return _both(local_flush(vol) if fua else None, remote)


async def discard_async(vol: Volume, offset: int, length: int, flags: int, e0: int,
                         e1: int) -> None:
    await al_begin(vol, e0, e1)
    if vol.state.susp or vol._closing:
        al_end(vol, e0, e1)
        await after_resume(vol, vol.write_zeroes, offset, length, bool(flags & DP_FUA),
                                 bool(flags & DP_ZERO_KEEP), False)
        return
    check_io(vol)
    assert vol.disk is not None
    if vol._diskless_io:            # the disk failed while this waited
        al_end(vol, e0, e1)
        pending = write_remote_only(vol, offset, None, length, flags)
        if pending is not None:
            await pending
        return
    try:
        mirror = vol._mirror
        if not mirror:
            mark(vol, offset, length)
            if vol._oos_notice and vol.link is not None:
                vol.link.send_out_of_sync(offset, length)
        if vol.config.allow_two_primaries:
            # Two primaries: the local part and the P_DATA must not be separated by a
            # peer write to the same range (peer.replication.unsuperseded's premise).
            vol.disk.discard(offset, length, keep_allocated=bool(flags & DP_ZERO_KEEP),
                              fast=False)
        else:
            await asyncio.to_thread(vol.disk.discard, offset, length,
                                    keep_allocated=bool(flags & DP_ZERO_KEEP), fast=False)
        remote = None
        if mirror and vol.link is not None and vol._mirror:
            remote = vol.link.send_write(offset, None, length, flags)
    finally:
        al_end(vol, e0, e1)
    both = _both(local_flush(vol) if flags & DP_FUA else None, remote)
    if both is not None:
        await both


def flush(vol: Volume) -> Pending | None:
    check_io(vol)
    if vol.state.susp:
        return vol._spawn(after_resume(vol, vol.flush))
    assert vol.disk is not None
    remote = vol.link.send_barrier() if vol._mirror and vol.link is not None else None
    return _both(local_flush(vol), remote)


def block_status(vol: Volume, offset: int, length: int) -> list[tuple[int, int]]:
    check_io(vol)
    assert vol.disk is not None
    if vol._diskless_io:
        # No local disk to ask: everything is reported allocated (always correct).
        left, out = min(length, vol.size - offset), []
        while left > 0:
            out.append((min(left, 0x80000000), 0))
            left -= out[-1][0]
        return out
    return vol.disk.block_status(offset, length)


def read_remote(vol: Volume, offset: int, view: memoryview) -> Pending:
    if not peer_serves(vol):
        raise OSError(errno.EIO, f"volume {vol.name}: no local disk and no UpToDate peer")
    assert vol.link is not None
    return vol.link.read_remote(offset, view)


def write_remote_only(vol: Volume, offset: int, data: memoryview | bytes | None, length: int,
                       flags: int) -> Pending | None:
    """Diskless: the write (or discard) goes to the peer only."""
    if not peer_serves(vol):
        raise OSError(errno.EIO, f"volume {vol.name}: no local disk and no UpToDate peer")
    assert vol.link is not None
    done = vol.link.send_write(offset, data, length, flags)
    if done is None and not vol.link.is_connected:
        raise OSError(errno.EIO, f"volume {vol.name}: the link to the peer was lost")
    return done


def local_flush(vol: Volume) -> Pending | None:
    """fdatasync of the backing store; a failure detaches it (the peer has the data)."""
    if vol._diskless_io or vol.disk is None:
        return None
    inner = vol.disk.flush()
    out = asyncio.get_running_loop().create_future()

    def done(f: asyncio.Future) -> None:
        if out.done():
            return
        exc = f.exception()
        if exc is None:
            out.set_result(None)
        elif isinstance(exc, OSError) and vol.local_io_error("flush", exc):
            out.set_result(None)
        else:
            out.set_exception(exc)

    inner.add_done_callback(done)
    return out


async def al_begin(vol: Volume, e0: int, e1: int) -> None:
    """Wait until extents e0..e1 are hot on disk, then hold them for one I/O."""
    al = vol.al
    assert al is not None
    while not al.begin(e0, e1):
        vol._al_wanted.update(e for e in range(e0, e1 + 1) if not al.is_hot(e))
        fut = asyncio.get_running_loop().create_future()
        vol._al_waiters.append(fut)
        if vol._al_writer is None or vol._al_writer.done():
            vol._al_writer = asyncio.get_running_loop().create_task(al_commit(vol))
        await fut


def al_end(vol: Volume, e0: int, e1: int) -> None:
    assert vol.al is not None
    vol.al.end(e0, e1)
    if vol._al_starved is not None:
        vol._al_starved.set()


async def al_commit(vol: Volume) -> None:
    """Write AL transactions until no write waits for a cold extent (group commit)."""
    al, meta, bitmap = vol.al, vol.meta, vol.bitmap
    assert al is not None and meta is not None and bitmap is not None
    try:
        while vol._al_wanted:
            wanted = set(vol._al_wanted)
            tx = al.prepare(wanted)
            if tx is None:
                # Every slot holds an extent with I/O in flight: wait for one to end.
                vol._al_starved = asyncio.Event()
                await vol._al_starved.wait()
                vol._al_starved = None
                continue
            async with vol._meta_lock:
                if tx.evicted:
                    # Bits of evicted extents must be on disk before they leave the log.
                    pages = bitmap.take_dirty_pages()
                    await asyncio.to_thread(meta.write_bitmap_pages, pages)
                    vol.counters.bm = meta.writes_bm
                await asyncio.to_thread(meta.write_al, tx.table)
            al.commit(tx)
            vol.counters.al = meta.writes_al
            vol._al_wanted -= tx.added
            waiters, vol._al_waiters = vol._al_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
    except BaseException as e:
        waiters, vol._al_waiters = vol._al_waiters, []
        vol._al_wanted.clear()
        for fut in waiters:
            if not fut.done():
                fut.set_exception(OSError(errno.EIO, f"activity log write failed: {e}"))
        if not isinstance(e, Exception):
            raise
        log.error("%s: activity log write failed: %s", vol.name, e)


def peer_serves(vol: Volume) -> bool:
    """The peer can take this Primary's I/O alone: connected, with UpToDate data."""
    s = vol.state
    return (vol.link is not None and vol.link.is_connected
            and s.conn >= ConnState.Connected and s.pdsk == DiskState.UpToDate
            and vol._mirror)
