"""The link's online verify (VerifyS / VerifyT): digests out, differing blocks back.

Owns step 7 of `link`'s docstring: the verify source sends per-block digests
(P_OV_REQUEST) paced like a resync; the target marks and reports the blocks
that differ (P_OV_REPLY), except those its own unapplied writes explain.
Functions of the `PeerLink` whose verify they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from binome.storage.replica.core import csum, wire
from binome.storage.replica.core.states import ConnState, DiskState
from binome.storage.replica.core.wire import P
from binome.storage.replica.engine.peer import replication, resync
from binome.storage.replica.engine.peer.common import (
    RS_CHUNK_BITS,
)

if TYPE_CHECKING:
    from binome.storage.replica.engine.peer.link import PeerLink

log = logging.getLogger("binome.replica.peer")


def start_verify(link: PeerLink, start: int = 0) -> None:
    """`verify`: become VerifyS and compare every block from `start` with the peer.

    This side reads a chunk and sends its per-block digests (P_OV_REQUEST,
    with `applied`, as P_DATA); the VerifyT side reads its own copy, marks
    the blocks that differ out of sync and answers which (P_OV_REPLY); this
    side marks them too. A later resync (disconnect/connect) repairs them.
    """
    vol = link.vol
    s = vol.state
    if link._proto is None or s.conn != ConnState.Connected:
        raise ValueError(f"online verify needs a Connected peer (now {s.conn})")
    if s.disk != DiskState.UpToDate or s.pdsk != DiskState.UpToDate:
        raise ValueError("online verify needs UpToDate data on both sides")
    if not link.cfg.verify_alg:
        raise ValueError("no verify-alg configured")
    block = link.cfg.bm_block_size
    if start < 0 or start >= vol.size or start % block:
        raise ValueError(f"start must be a multiple of {block} below the volume size")
    first = start // block
    total = (vol.size + block - 1) // block - first
    begin_verify(link, source=True, total=total, start=start)
    link.send_state(verify="start", start=start)
    link._verify_task = link._spawn(run_verify(link, first))


def begin_verify(link: PeerLink, *, source: bool, total: int, start: int) -> None:
    link.verify = resync.Resync(source=source, total_bits=total, started=time.monotonic(),
                         verify=True)
    link._verify_runs = []
    link.vol.set_state(conn=ConnState.VerifyS if source else ConnState.VerifyT)
    log.info("%s: Online Verify start sector: %d (%d blocks)", link.vol.name, start // 512,
             total)


async def run_verify(link: PeerLink, first: int) -> None:
    vol = link.vol
    rs = link.verify
    assert rs is not None and vol.disk is not None
    block = link.cfg.bm_block_size
    nblocks = (vol.size + block - 1) // block
    bit = first
    while bit < nblocks:
        await resync.wait_slot(link, rs)
        n = await resync.throttle(link, rs, min(RS_CHUNK_BITS, nblocks - bit), block)
        offset = bit * block
        length = min(n * block, vol.size - offset)
        buf = bytearray(length)
        # Read and send without yielding: our later writes reach the peer after this.
        vol.disk.read_into(offset, memoryview(buf))
        digests = csum.block_digests(link.cfg.verify_alg, buf, block)
        rs.inflight += 1
        rs.inflight_bytes += length
        rs.requested += length
        link._send(wire.packet(P.OV_REQUEST, wire.OV_REQUEST.pack(
            offset, length, link._peer_applied) + digests))
        bit += n
    while rs.inflight:
        link._rs_slot.clear()
        await link._rs_slot.wait()
    link.send_state(verify="done")
    end_verify(link, stopped=False)


def on_ov_request(link: PeerLink, payload: memoryview) -> None:
    """VerifyT: compare the peer's digests with our copy; mark and report what differs."""
    vol = link.vol
    assert vol.disk is not None
    offset, length, applied = wire.OV_REQUEST.unpack_from(payload)
    if offset + length > vol.size:
        raise wire.WireError("verify request beyond the end of the volume")
    block = link.cfg.bm_block_size
    data = bytearray(length)
    vol.disk.read_into(offset, memoryview(data))
    try:
        diff = csum.differing_blocks(link.cfg.verify_alg, data, block,
                                     memoryview(payload)[wire.OV_REQUEST.size:])
    except ValueError as e:
        raise wire.WireError(f"bad P_OV_REQUEST: {e}") from None
    if diff and link._tl and next(reversed(link._tl)) > applied:
        # Our writes the peer had not applied when it read its copy differ legitimately:
        # they are on their way to it (see _unsuperseded).
        skip: set[int] = set()
        for a, b in replication.unsuperseded(link, offset, length, applied, count=False) or []:
            skip.update(range((a - offset) // block, (b - 1 - offset) // block + 1))
        diff = [i for i in diff if i not in skip]
    n = (length + block - 1) // block
    verify_found(link, offset, diff)
    link._send(wire.packet(P.OV_REPLY, wire.OV_REPLY.pack(offset, length)
                           + csum.mask_of(diff, n)))
    rs = link.verify
    if rs is not None:
        rs.done_bits += n
        rs.moved(length)


def on_ov_reply(link: PeerLink, payload: memoryview) -> None:
    offset, length = wire.OV_REPLY.unpack_from(payload)
    block = link.cfg.bm_block_size
    n = (length + block - 1) // block
    try:
        diff = csum.mask_indexes(memoryview(payload)[wire.OV_REPLY.size:], n)
    except ValueError as e:
        raise wire.WireError(f"bad P_OV_REPLY: {e}") from None
    verify_found(link, offset, diff)
    rs = link.verify
    if rs is not None and rs.source:
        rs.done_bits += n
        rs.inflight -= 1
        rs.inflight_bytes -= length
        rs.moved(length)
        link._rs_slot.set()


def verify_found(link: PeerLink, offset: int, diff: list[int]) -> None:
    """Mark blocks found out of sync and remember them as coalesced runs."""
    if not diff:
        return
    vol = link.vol
    block = link.cfg.bm_block_size
    first = offset // block
    for i in diff:
        vol.mark_out_of_sync((first + i) * block, block)
        runs = link._verify_runs
        if runs and runs[-1][0] + runs[-1][1] == first + i:
            runs[-1][1] += 1
        else:
            runs.append([first + i, 1])
    if link.verify is not None:
        link.verify.found += len(diff)
    log.warning("%s: Out of sync: start=%d, size=%d (bytes)", vol.name,
                (first + diff[0]) * block, (diff[-1] - diff[0] + 1) * block)


def stop_verify(link: PeerLink) -> None:
    """`verify --stop`, on either side: both go back to Connected."""
    if link.verify is None:
        raise ValueError("no online verify is running")
    with contextlib.suppress(ConnectionError):
        link.send_state(verify="stop")
    end_verify(link, stopped=True)


def end_verify(link: PeerLink, *, stopped: bool, lost: bool = False) -> None:
    rs, link.verify = link.verify, None
    task, link._verify_task = link._verify_task, None
    if task is not None and task is not asyncio.current_task():
        task.cancel()
    if rs is None:
        return
    vol = link.vol
    block = link.cfg.bm_block_size
    secs = max(time.monotonic() - rs.started, 1e-6)
    runs = link._verify_runs
    vol.verify_result = {
        "role": "VerifyS" if rs.source else "VerifyT", "alg": link.cfg.verify_alg,
        "finished": not stopped and not lost, "stopped": stopped, "lost": lost,
        "verified_kib": rs.done_bits * block // 1024,
        "seconds": round(secs, 3), "found_blocks": rs.found,
        "found_kib": rs.found * block // 1024, "block_size": block,
        "ranges": [[f * block, c * block] for f, c in runs[:100]],
        "more_ranges": max(0, len(runs) - 100), "time": time.time()}
    if stopped:
        log.info("%s: Online verify stopped after %d blocks", vol.name, rs.done_bits)
    else:
        log.info("%s: Online verify done (total %d sec; paused %d sec; %d K/sec)",
                 vol.name, round(secs), round(rs.paused), int(rs.bytes / secs / 1024))
    if rs.found:
        log.warning("%s: Online verify found %d %dk block out of sync!", vol.name,
                    rs.found, block // 1024)
        if not stopped and not lost:
            vol.call_handler("out-of-sync")      # DRBD: after a verify that found some
    if not lost and vol.state.conn in (ConnState.VerifyS, ConnState.VerifyT):
        vol.set_state(conn=ConnState.Connected)
