"""The link's replication: P_DATA out and in, acks, barriers and the transfer log.

Owns step 5 of `link`'s docstring (each application write mirrored as P_DATA,
completed per protocol A/B/C, kept in the transfer log until its epoch's
P_BARRIER_ACK; two primaries' concurrent writes resolved by `unsuperseded`),
P_OUT_OF_SYNC notices, and the reads a Diskless Primary has the peer serve.
Functions of the `PeerLink` whose writes they mirror (called inline on the
data path: no task switch between a write's local part and its P_DATA).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from typing import TYPE_CHECKING

from binome.storage.replica.core import wire
from binome.storage.replica.core.states import DiskState
from binome.storage.replica.core.wire import P
from binome.storage.replica.engine.completion import Completion
from binome.storage.replica.engine.peer.common import (
    BIG_PACKET,
)

if TYPE_CHECKING:
    from binome.storage.replica.engine.peer.link import PeerLink

log = logging.getLogger("binome.replica.peer")


def subtract_ranges(start: int, end: int, cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) minus the [a, b) ranges in `cuts` (any order, may overlap), as
    (offset, length) pieces in order."""
    pieces: list[tuple[int, int]] = []
    pos = start
    for a, b in sorted(cuts):
        if a > pos:
            pieces.append((pos, min(a, end) - pos))
        pos = max(pos, b)
        if pos >= end:
            break
    if pos < end:
        pieces.append((pos, end - pos))
    return [(o, n) for o, n in pieces if n > 0]


def send_out_of_sync(link: PeerLink, offset: int, length: int) -> None:
    """WFBitMapS: the bitmap already left; tell the peer about this block (P_OUT_OF_SYNC)."""
    with contextlib.suppress(ConnectionError):   # if the link drops, we keep the bit
        link._send(wire.packet(P.OUT_OF_SYNC, wire.RS_ACK.pack(offset, length)))


def send_write(link: PeerLink, offset: int, data: memoryview | bytes | None, length: int,
               flags: int) -> Completion | None:
    """Mirror one write (or discard: data None); the completion fires per protocol.

    The write enters the transfer log before it is sent: whatever happens to
    the link from now on, it is either acknowledged by a barrier or marked
    out of sync.
    """
    seq = next(link._seq)
    link._tl[seq] = (offset, length, link._epoch)
    protocol = link.cfg.protocol
    if protocol == "B":
        flags |= wire.DP_SEND_RECEIVE_ACK
    elif protocol == "C":
        flags |= wire.DP_SEND_WRITE_ACK
    hdr = wire.data_header(seq, offset, length, flags, link._peer_applied)
    try:
        if data is None:
            link._send(hdr)
        elif length < BIG_PACKET:
            link._send(hdr + bytes(data))
        else:
            # Large payloads live in a buffer of their own (NBD "direct" mode, never
            # reused): hand the view over, the transport copies only what the socket
            # does not take at once.
            if link._proto is None:
                raise ConnectionError("not connected")
            link._proto.send_big(hdr, data)
    except ConnectionError:
        del link._tl[seq]
        link.vol.mark_out_of_sync(offset, length)
        return None
    link.vol.counters.ns += length if data is not None else 0
    link._epoch_writes += 1
    if link._epoch_writes >= link.cfg.max_epoch_size:
        send_barrier(link)         # nobody waits: it only lets the transfer log drain
    if protocol == "A":
        return None
    done = Completion()
    link._acks[seq] = done
    return done


def send_barrier(link: PeerLink) -> asyncio.Future:
    """Close the current epoch; the future completes when the peer flushed it.

    An empty epoch is closed too: a FLUSH must make the writes the peer
    already acknowledged (in its page cache) durable there as well.
    """
    fut = asyncio.get_running_loop().create_future()
    epoch = link._epoch
    try:
        link._send(wire.packet(P.BARRIER, wire.BARRIER.pack(epoch)))
    except ConnectionError:
        fut.set_result(None)        # the link is gone: unflushed writes are marked
        return fut
    link._barriers.setdefault(epoch, []).append(fut)
    link._epoch += 1
    link._epoch_writes = 0
    return fut


def on_ack(link: PeerLink, payload: memoryview) -> None:
    (seq,) = wire.ACK.unpack(payload)
    fut = link._acks.pop(seq, None)
    if fut is not None and not fut.done():
        fut.set_result(None)


def on_neg_ack(link: PeerLink, payload: memoryview) -> None:
    (seq,) = wire.ACK.unpack(payload)
    entry = link._tl.get(seq)
    if entry is not None:
        link.vol.mark_out_of_sync(entry[0], entry[1])
    on_ack(link, payload)


def on_barrier_ack(link: PeerLink, payload: memoryview) -> None:
    epoch, _count = wire.BARRIER_ACK.unpack(payload)
    for seq in [s for s, (_, _, e) in link._tl.items() if e <= epoch]:
        del link._tl[seq]
    for e in [e for e in link._barriers if e <= epoch]:
        for fut in link._barriers.pop(e):
            if not fut.done():
                fut.set_result(None)


def on_data(link: PeerLink, payload: memoryview) -> None:
    """The peer (Primary) writes: apply, then acknowledge per protocol (inline)."""
    vol = link.vol
    assert vol.disk is not None
    seq, offset, length, flags, applied = wire.DATA_HDR.unpack_from(payload)
    if offset + length > vol.size:
        raise wire.WireError("write beyond the end of the volume")
    # The ack the sender asked for (its protocol when it sent this write), not ours:
    # the two differ for writes crossing an `adjust` of the protocol.
    if flags & wire.DP_SEND_RECEIVE_ACK:
        link._send(wire.packet(P.RECV_ACK, wire.ACK.pack(seq)))
    link._peer_applied = seq
    pieces = None
    tl = link._tl
    if tl and link.resolve_conflicts and next(reversed(tl)) > applied:
        pieces = unsuperseded(link, offset, length, applied)
    try:
        if pieces is not None:
            apply_pieces(link, payload, offset, flags, pieces)
        elif flags & (wire.DP_DISCARD | wire.DP_ZERO_KEEP):
            vol.disk.discard(offset, length, keep_allocated=bool(flags & wire.DP_ZERO_KEEP),
                             fast=False)
        else:
            vol.disk.write(offset, payload[wire.DATA_HDR.size:])
            vol.counters.dw += length
        vol.counters.nr += length
    except OSError as e:
        log.error("%s: local write failed: %s", vol.name, e)
        vol.local_io_error("write", e)      # on-io-error detach (volume.py)
        link._send(wire.packet(P.NEG_ACK, wire.ACK.pack(seq)))
        return
    if not flags & wire.DP_SEND_WRITE_ACK:
        return
    if flags & wire.DP_FUA:
        async def ack_after_flush() -> None:
            await vol.disk_flush()
            link._send(wire.packet(P.WRITE_ACK, wire.ACK.pack(seq)))
        link._spawn(ack_after_flush())
    else:
        link._send(wire.packet(P.WRITE_ACK, wire.ACK.pack(seq)))


def unsuperseded(link: PeerLink, offset: int, length: int, applied: int, *,
                  count: bool = True) -> list[tuple[int, int]] | None:
    """Two primaries, this side resolving conflicts: what of a peer write to apply.

    Our writes the peer had not applied when it wrote this one (seq > `applied`)
    were concurrent with it. The peer applies them after its own write, so
    there they win; here they were applied first, so the overlapped parts of
    the peer's write are skipped and both replicas end up with our data. The
    peer, which does not resolve conflicts, applies our writes whole. This is
    DRBD's "discard concurrent write" rule, exact to the byte instead of
    retrying partially overlapping requests. None: no overlap, apply it all.
    """
    end = offset + length
    cut: list[tuple[int, int]] = []
    for seq, (o, n, _) in reversed(link._tl.items()):
        if seq <= applied:
            break                  # the transfer log is in seq order
        if o < end and offset < o + n:
            cut.append((max(o, offset), min(o + n, end)))
    if not cut:
        return None
    if not count:
        return cut                 # (for verify: the overlapped ranges themselves)
    link.conflicts += 1
    pieces = subtract_ranges(offset, end, cut)
    log.debug("%s: concurrent write at %d+%d: %d bytes superseded by local writes",
              link.vol.name, offset, length, length - sum(n for _, n in pieces))
    return pieces


def apply_pieces(link: PeerLink, payload: memoryview, offset: int, flags: int,
                  pieces: list[tuple[int, int]]) -> None:
    vol = link.vol
    assert vol.disk is not None
    data = payload[wire.DATA_HDR.size:]
    for o, n in pieces:
        if flags & (wire.DP_DISCARD | wire.DP_ZERO_KEEP):
            vol.disk.discard(o, n, keep_allocated=bool(flags & wire.DP_ZERO_KEEP),
                             fast=False)
        else:
            vol.disk.write(o, data[o - offset:o - offset + n])
            vol.counters.dw += n


def on_barrier(link: PeerLink, payload: memoryview) -> None:
    (epoch,) = wire.BARRIER.unpack(payload)

    async def flush_then_ack() -> None:
        await link.vol.disk_flush()
        if link._proto is not None:
            link._send(wire.packet(P.BARRIER_ACK, wire.BARRIER_ACK.pack(epoch, 0)))
    link._spawn(flush_then_ack())


def read_remote(link: PeerLink, offset: int, view: memoryview) -> asyncio.Future:
    """Read `view` from the peer's disk (P_DATA_REQUEST); the future fails with EIO
    when the link goes away first."""
    if link._proto is None:
        raise OSError(errno.EIO, f"volume {link.vol.name}: no local disk and no peer")
    rid = next(link._read_ids)
    fut = asyncio.get_running_loop().create_future()
    link._reads[rid] = (view, fut)
    link._send(wire.packet(P.DATA_REQUEST, wire.DATA_REQUEST.pack(rid, offset, len(view))))
    return fut


def on_data_request(link: PeerLink, payload: memoryview) -> None:
    vol = link.vol
    rid, offset, length = wire.DATA_REQUEST.unpack(payload)
    if offset + length > vol.size:
        raise wire.WireError("read request beyond the end of the volume")
    hdr = wire.HEADER.size + wire.DATA_REPLY_HDR.size
    buf = bytearray(hdr + length)
    err = 0
    try:
        if vol.disk is None or vol.state.disk != DiskState.UpToDate:
            raise OSError(errno.EIO, "the peer has no UpToDate disk")
        vol.disk.read_into(offset, memoryview(buf)[hdr:])
    except OSError as e:
        err = e.errno or errno.EIO
        buf = bytearray(hdr)
        log.error("%s: read for the peer at %d failed: %s", vol.name, offset, e)
    wire.HEADER.pack_into(buf, 0, wire.MAGIC, P.DATA_REPLY, len(buf) - wire.HEADER.size)
    wire.DATA_REPLY_HDR.pack_into(buf, wire.HEADER.size, rid, err)
    if len(buf) < BIG_PACKET:
        link._send(buf)
    else:
        if link._proto is None:
            raise ConnectionError("not connected")
        link._proto.send_big(b"", buf)
    if not err:
        vol.counters.ns += length
        vol.counters.dr += length


def on_data_reply(link: PeerLink, payload: memoryview) -> None:
    rid, err = wire.DATA_REPLY_HDR.unpack_from(payload)
    entry = link._reads.pop(rid, None)
    if entry is None:
        raise wire.WireError(f"P_DATA_REPLY for unknown read {rid}")
    view, fut = entry
    if fut.done():
        return
    if err:
        fut.set_exception(OSError(err, f"the peer's read failed: {os.strerror(err)}"))
        return
    data = memoryview(payload)[wire.DATA_REPLY_HDR.size:]
    if len(data) != len(view):
        raise wire.WireError("P_DATA_REPLY of the wrong size")
    view[:] = data
    link.vol.counters.nr += len(data)
    fut.set_result(None)


def fail_remote_reads(link: PeerLink) -> None:
    reads, link._reads = link._reads, {}
    for _, fut in reads.values():
        if not fut.done():
            fut.set_exception(OSError(errno.EIO, f"volume {link.vol.name}: the link to the "
                                                 f"peer serving reads was lost"))


def on_out_of_sync(link: PeerLink, payload: memoryview) -> None:
    offset, length = wire.RS_ACK.unpack(payload)
    link.vol.mark_out_of_sync(offset, length)
