"""The link's resync: `Resync` figures, the pull by the SyncTarget, the source's replies.

Owns step 6 of `link`'s docstring: the SyncTarget requests runs of set bits
(plain or checksum-based), paced by `rsctl`'s controllers (`throttle`); the
SyncSource answers; both finish by rotating UUIDs; pause-sync/resume-sync.
Functions of the `PeerLink` whose resync they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core import csum, rsctl, wire
from binome.storage.replica.core.states import ConnState, DiskState, Role
from binome.storage.replica.core.wire import P
from binome.storage.replica.engine.peer.common import (
    BIG_PACKET,
    RS_CHUNK_BITS,
    RS_WINDOW,
    RS_WINDOW_BYTES,
    Fatal,
)

if TYPE_CHECKING:
    from binome.storage.replica.engine.peer.link import PeerLink

log = logging.getLogger("binome.replica.peer")

SPEED_WINDOW = 3.0          # seconds of history behind the "current" resync speed
STALLED_AFTER = 180.0       # DRBD appends "(stalled)" after this long without progress


@dataclass
class Resync:
    """A running resync (or online verify: `verify`), on either side, with its controller."""

    source: bool
    total_bits: int
    started: float
    bytes: int = 0               # bytes covered (arrived, verified, or found equal)
    inflight: int = 0
    inflight_bytes: int = 0
    last_progress: float = 0.0
    paused: float = 0.0          # seconds spent paused (the rate controller skips them)
    marks: list[tuple[float, int]] = field(default_factory=list)
    verify: bool = False
    done_bits: int = 0           # verify: blocks compared
    found: int = 0               # verify: blocks found out of sync
    requested: int = 0           # bytes asked for (the fixed controller paces these)
    equal: int = 0               # csums: bytes found equal, not transferred
    own_io: int = 0              # bytes this resync added to the I/O counters (not the app's)
    # the dynamic controller (rsctl) and the c-min-rate throttle
    plan: rsctl.Plan | None = None
    plan_for: Any = None          # the RateSettings the plan was made with (adjust resets it)
    budget: int = 0
    next_step: float = 0.0
    step_bytes: int = 0
    step_io: int = 0
    slowed: bool = False         # this step's budget is c-min-rate's
    app_busy_until: float = 0.0  # c-min-rate: the application counts as busy until then
    throttled: float = 0.0       # seconds held back by c-min-rate

    def moved(self, nbytes: int) -> None:
        """Account resync bytes; keep a sample every 0.5 s for the current speed."""
        self.bytes += nbytes
        now = time.monotonic()
        self.last_progress = now
        if not self.marks or now - self.marks[-1][0] >= 0.5:
            self.marks.append((now, self.bytes))
            while len(self.marks) > 2 and now - self.marks[1][0] >= SPEED_WINDOW:
                del self.marks[0]

    def progress(self, left_bits: int, block: int, rate: int = 0) -> dict[str, Any]:
        if self.verify:
            left_bits = self.total_bits - self.done_bits
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-6)
        done = self.total_bits - left_bits
        avg = self.bytes / elapsed
        speed = avg
        if self.marks and now - self.marks[0][0] > 0.2:
            speed = (self.bytes - self.marks[0][1]) / (now - self.marks[0][0])
        base = speed if speed > 0 else avg
        return {"source": self.source, "total_kib": self.total_bits * block // 1024,
                "left_kib": left_bits * block // 1024,
                "done": 100.0 * done / self.total_bits if self.total_bits else 100.0,
                "speed_kib": int(speed // 1024), "avg_kib": int(avg // 1024),
                "want_kib": rate // 1024,
                "stalled": now - max(self.last_progress, self.started) > STALLED_AFTER,
                "eta_s": int(left_bits * block / base) if base > 0 else None,
                "verify": self.verify, "found": self.found,
                "equal_kib": self.equal // 1024, "throttled_s": round(self.throttled, 1)}


async def start_sync_source(link: PeerLink) -> None:
    vol = link.vol
    assert vol.meta is not None and vol.bitmap is not None
    gi, sync_uuid = vol.meta.sb.gi.start_resync_as_source(vol.rand64)
    await vol.change_state(gi=gi, conn=ConnState.SyncSource, pdsk=DiskState.Inconsistent)
    link.resync = Resync(source=True, total_bits=vol.bitmap.weight,
                         started=time.monotonic())
    link.send_uuids()
    link._send(wire.packet(P.SYNC_UUID, wire.SYNC_UUID.pack(sync_uuid)))
    log.info("%s: Began resync as SyncSource (will sync %d KB [%d bits set]).", vol.name,
             vol.out_of_sync_kib(), vol.bitmap.weight)
    pause_changed(link, notify=False)


async def on_sync_uuid(link: PeerLink, payload: bytes) -> None:
    vol = link.vol
    assert vol.meta is not None and vol.bitmap is not None
    (uuid,) = wire.SYNC_UUID.unpack(payload)
    # DRBD's before-resync-target: our data is still unmodified; a failing handler
    # (exit code != 0) drops the connection before it becomes Inconsistent.
    hr = await vol.run_handler("before-resync-target")
    if hr.exit_code != 0:
        raise Fatal(f"before-resync-target handler returned {hr.exit_code}, "
                     f"dropping connection.")
    gi = vol.meta.sb.gi.adopt_sync_uuid(uuid, primary=vol.state.role == Role.Primary)
    await vol.change_state(gi=gi, conn=ConnState.SyncTarget, disk=DiskState.Inconsistent)
    link.resync = Resync(source=False, total_bits=vol.bitmap.weight,
                         started=time.monotonic())
    log.info("%s: Began resync as SyncTarget (will sync %d KB [%d bits set]).", vol.name,
             vol.out_of_sync_kib(), vol.bitmap.weight)
    pause_changed(link, notify=False)
    link._rs_task = link._spawn(pull_resync(link))


async def pull_resync(link: PeerLink) -> None:
    """SyncTarget: request every run of set bits, in disk order, RS_WINDOW at a time."""
    vol = link.vol
    bm = vol.bitmap
    rs = link.resync
    assert bm is not None and rs is not None
    block = vol.config.bm_block_size
    while True:
        runs = list(bm.runs())
        if not runs:
            break
        await pull_runs(link, runs, rs, block)
        while rs.inflight:
            link._rs_slot.clear()
            await link._rs_slot.wait()
    await finish_sync_target(link)


async def pull_runs(link: PeerLink, runs: list[tuple[int, int]], rs: Resync, block: int) -> None:
    vol = link.vol
    csums = link.cfg.csums_alg
    for first, count in runs:
        bit = first
        while bit < first + count:
            await wait_slot(link, rs)
            n = min(RS_CHUNK_BITS, first + count - bit)
            n = await throttle(link, rs, n, block)
            offset = bit * block
            length = min(n * block, vol.size - offset)
            rs.inflight += 1
            rs.inflight_bytes += length
            rs.requested += length
            if csums:
                # Checksum-based resync: send what we have; the source sends back
                # only the blocks that differ.
                assert vol.disk is not None
                buf = bytearray(length)
                vol.disk.read_into(offset, memoryview(buf))
                digests = csum.block_digests(csums, buf, block)
                link._send(wire.packet(P.CSUM_RS_REQUEST,
                                       wire.CSUM_REQUEST.pack(offset, length) + digests))
            else:
                link._send(wire.packet(P.RS_DATA_REQUEST,
                                       wire.RS_REQUEST.pack(offset, length)))
            bit += n


async def wait_slot(link: PeerLink, rs: Resync) -> None:
    """Wait for room in the request window, and while the resync is paused."""
    while (rs.inflight >= RS_WINDOW or rs.inflight_bytes >= RS_WINDOW_BYTES
           or sync_paused(link)):
        paused_at = time.monotonic() if sync_paused(link) else None
        link._rs_slot.clear()
        await link._rs_slot.wait()
        if paused_at is not None:
            rs.paused += time.monotonic() - paused_at


def app_io(link: PeerLink) -> int:
    """Bytes of I/O on this volume so far that were not this resync's (c-min-rate)."""
    c = link.vol.counters
    rs = link.resync if link.resync is not None else link.verify
    return c.dw + c.dr + c.nr - (rs.own_io if rs is not None else 0)


async def throttle(link: PeerLink, rs: Resync, nbits: int, block: int) -> int:
    """Pace the next request of up to `nbits` blocks (rsctl); return how many to ask for.

    Every STEP s a controller step sets this step's budget: the dynamic
    controller's answer, capped at `c_min_rate` while the application is
    busy (`rsctl.step_budget`); a request takes what the budget allows (at
    least one block), then waits for the next step. The fixed controller
    also never asks ahead of `resync_rate`.
    """
    while True:
        s = link.rate              # re-read: `adjust` may change it during a wait
        now = time.monotonic()
        if rs.plan_for is not s:
            # `adjust` changed the settings mid-resync: plan afresh from the next step.
            rs.plan, rs.plan_for, rs.next_step = None, s, min(rs.next_step, now)
        if now >= rs.next_step:
            io = app_io(link)
            app = io - rs.step_io
            if rs.plan is None:
                rs.plan = rsctl.Plan.empty(s.steps)
                rs.step_bytes = rs.bytes
                # Nothing measured yet: assume the application busy for the first step.
                app = rsctl.APP_ACTIVE_BYTES + 1
            received = rs.bytes - rs.step_bytes
            rs.step_bytes, rs.step_io = rs.bytes, io
            rs.next_step = now + rsctl.STEP
            if app > rsctl.APP_ACTIVE_BYTES:
                rs.app_busy_until = now + rsctl.APP_QUIET
            elif now < rs.app_busy_until:
                app = rsctl.APP_ACTIVE_BYTES + 1     # busy a moment ago: still busy
            req = None
            if s.dynamic:
                req, rs.plan = rsctl.controller_step(s, rs.plan, received,
                                                     rs.inflight_bytes)
            budget = rsctl.step_budget(s, req, app)
            rs.slowed = budget is not None and budget != req
            rs.budget = -1 if budget is None else budget
        if rs.budget >= 0:
            if rs.budget < block:
                wait = rs.next_step - now
                if rs.slowed:
                    rs.throttled += wait
                await asyncio.sleep(wait)
                continue
            nbits = max(1, min(nbits, rs.budget // block))
            rs.budget -= nbits * block
        if s.resync_rate and not s.dynamic:
            nbits = max(1, min(nbits, int(s.resync_rate * rsctl.STEP) // block))
            delay = rsctl.fixed_delay(s.resync_rate, rs.requested,
                                      now - rs.started - rs.paused)
            if delay > 0:
                await asyncio.sleep(delay)
        return nbits


def on_rs_request(link: PeerLink, payload: memoryview) -> None:
    vol = link.vol
    assert vol.disk is not None
    offset, length = wire.RS_REQUEST.unpack(payload)
    if offset + length > vol.size:
        raise wire.WireError("resync request beyond the end of the volume")
    buf = bytearray(wire.HEADER.size + wire.RS_REPLY_HDR.size + length)
    view = memoryview(buf)
    vol.disk.read_into(offset, view[wire.HEADER.size + wire.RS_REPLY_HDR.size:])
    wire.HEADER.pack_into(buf, 0, wire.MAGIC, P.RS_DATA_REPLY,
                          wire.RS_REPLY_HDR.size + length)
    wire.RS_REPLY_HDR.pack_into(buf, wire.HEADER.size, offset)
    send_reply(link, buf, length)
    vol.counters.ns += length
    vol.counters.dr += length
    if link.resync is not None:
        link.resync.own_io += length
        link.resync.moved(length)


def send_reply(link: PeerLink, buf: bytearray, length: int) -> None:
    if length < BIG_PACKET:
        link._send(buf)                     # joined with the batch's other replies
    else:
        if link._proto is None:
            raise ConnectionError("not connected")
        link._proto.send_big(b"", buf)      # a fresh buffer each time: no copy needed


def on_csum_rs_request(link: PeerLink, payload: memoryview) -> None:
    """SyncSource, checksum-based: send back only the blocks whose digests differ."""
    vol = link.vol
    assert vol.disk is not None
    offset, length = wire.CSUM_REQUEST.unpack_from(payload)
    if offset + length > vol.size:
        raise wire.WireError("resync request beyond the end of the volume")
    block = link.cfg.bm_block_size
    data = bytearray(length)
    vol.disk.read_into(offset, memoryview(data))
    vol.counters.dr += length
    try:
        diff = csum.differing_blocks(link.cfg.csums_alg, data, block,
                                     memoryview(payload)[wire.CSUM_REQUEST.size:])
    except ValueError as e:
        raise wire.WireError(f"bad P_CSUM_RS_REQUEST: {e}") from None
    n = (length + block - 1) // block
    view = memoryview(data)
    body: bytes | memoryview
    if len(diff) == n:
        body = view                          # everything differs: no copy of the pieces
    else:
        body = b"".join(view[i * block:(i + 1) * block] for i in diff)
    head = wire.CSUM_REPLY.pack(offset, length) + csum.mask_of(diff, n)
    sent = len(body)
    buf = bytearray(wire.HEADER.size + len(head) + sent)
    wire.HEADER.pack_into(buf, 0, wire.MAGIC, P.RS_CSUM_REPLY, len(head) + sent)
    buf[wire.HEADER.size:wire.HEADER.size + len(head)] = head
    buf[wire.HEADER.size + len(head):] = body
    send_reply(link, buf, sent)
    vol.counters.ns += sent
    rs = link.resync
    if rs is not None:
        rs.own_io += length
        rs.equal += length - sent
        rs.moved(length)


def on_rs_csum_reply(link: PeerLink, payload: memoryview) -> None:
    """SyncTarget: write the differing blocks; the equal ones are in sync as they are."""
    vol = link.vol
    assert vol.disk is not None and vol.bitmap is not None
    offset, length = wire.CSUM_REPLY.unpack_from(payload)
    block = link.cfg.bm_block_size
    n = (length + block - 1) // block
    pos = wire.CSUM_REPLY.size + (n + 7) // 8
    view = memoryview(payload)
    try:
        diff = csum.mask_indexes(view[wire.CSUM_REPLY.size:pos], n)
    except ValueError as e:
        raise wire.WireError(f"bad P_RS_CSUM_REPLY: {e}") from None
    written = 0
    i = 0
    while i < len(diff):
        j = i                                # a run of consecutive differing blocks
        while j + 1 < len(diff) and diff[j + 1] == diff[j] + 1:
            j += 1
        o = offset + diff[i] * block
        size = min((diff[j] + 1) * block, length) - diff[i] * block
        vol.disk.write(o, view[pos:pos + size])
        pos += size
        written += size
        i = j + 1
    if pos != len(payload):
        raise wire.WireError("bad P_RS_CSUM_REPLY: data length")
    rs_written(link, offset, length, written)
    if link.resync is not None:
        link.resync.equal += length - written


def on_rs_reply(link: PeerLink, payload: memoryview) -> None:
    vol = link.vol
    assert vol.disk is not None and vol.bitmap is not None
    (offset,) = wire.RS_REPLY_HDR.unpack_from(payload)
    data = memoryview(payload)[wire.RS_REPLY_HDR.size:]
    length = len(data)
    vol.disk.write(offset, data)
    rs_written(link, offset, length, length)


def rs_written(link: PeerLink, offset: int, length: int, written: int) -> None:
    """A resync reply is applied: clear the bits, acknowledge, account, wake the puller."""
    vol = link.vol
    assert vol.bitmap is not None
    vol.bitmap.clear_range(offset >> vol.bm_shift, (offset + length - 1) >> vol.bm_shift)
    vol.counters.nr += written
    vol.counters.dw += written
    link._send(wire.packet(P.RS_WRITE_ACK, wire.RS_ACK.pack(offset, length)))
    rs = link.resync
    if rs is not None:
        rs.own_io += 2 * written
        rs.moved(length)
        rs.inflight -= 1
        rs.inflight_bytes -= length
        link._rs_slot.set()


def on_rs_ack(link: PeerLink, payload: memoryview) -> None:
    vol = link.vol
    assert vol.bitmap is not None
    offset, length = wire.RS_ACK.unpack(payload)
    vol.bitmap.clear_range(offset >> vol.bm_shift, (offset + length - 1) >> vol.bm_shift)


async def finish_sync_target(link: PeerLink) -> None:
    vol = link.vol
    assert vol.meta is not None and vol.bitmap is not None
    rs = link.resync
    gi = vol.meta.sb.gi.finish_resync_as_target(link.peer_gi,
                                                primary=vol.state.role == Role.Primary)
    # Data and bitmap durable before the metadata says UpToDate.
    await vol.disk_flush()
    await vol.write_bitmap()
    await vol.change_state(gi=gi, conn=ConnState.Connected, disk=DiskState.UpToDate,
                           pdsk=DiskState.UpToDate)
    link.send_state(resync_finished=True)
    log_done(link, rs)
    link.resync = None
    vol.call_handler("after-resync-target")


async def finish_sync_source(link: PeerLink) -> None:
    vol = link.vol
    assert vol.meta is not None
    rs = link.resync
    vol.crashed_primary = False
    await vol.write_bitmap()
    # The copies are equal now. A source whose own disk was Consistent (a crashed
    # primary under quorum fencing, which resyncs its activity log to the peer) is
    # UpToDate, as drbd_resync_finished makes it; left Consistent it was never
    # promotable again ("Need access to UpToDate data"). An Outdated source stays
    # Outdated: equal to its target says nothing about a newer copy elsewhere.
    disk = vol.state.disk
    if disk == DiskState.Consistent:
        disk = DiskState.UpToDate
    await vol.change_state(gi=vol.meta.sb.gi.finish_resync_as_source(),
                           conn=ConnState.Connected, disk=disk, pdsk=DiskState.UpToDate)
    log_done(link, rs)
    link.resync = None


def log_done(link: PeerLink, rs: Resync | None) -> None:
    if rs is None:
        return
    secs = max(time.monotonic() - rs.started, 1e-6)
    log.info("%s: Resync done (total %d sec; paused %d sec; %d K/sec)", link.vol.name,
             round(secs), round(rs.paused), int(rs.bytes / secs / 1024))
    total = rs.bytes
    if link.cfg.csums_alg and total:
        # DRBD's line for checksum-based resync.
        log.info("%s: %d %% had equal checksums, eliminated: %dK; transferred %dK total %dK",
                 link.vol.name, 100 * rs.equal // total, rs.equal // 1024,
                 (total - rs.equal) // 1024, total // 1024)
    link.last_resync = {"source": rs.source, "seconds": round(secs, 3),
                        "total_kib": total // 1024, "equal_kib": rs.equal // 1024,
                        "transferred_kib": (total - rs.equal) // 1024,
                        "paused_s": round(rs.paused, 1),
                        "throttled_s": round(rs.throttled, 1)}


def sync_paused(link: PeerLink) -> bool:
    return link.vol.user_paused or link.peer_paused


def pause_changed(link: PeerLink, *, notify: bool = True) -> None:
    """Map the pause flags onto the connection state and wake the resync puller."""
    vol = link.vol
    conn = vol.state.conn
    paused = sync_paused(link)
    if paused and conn in (ConnState.SyncSource, ConnState.SyncTarget):
        vol.set_state(conn=ConnState.PausedSyncS if conn == ConnState.SyncSource
                      else ConnState.PausedSyncT)
    elif not paused and conn in (ConnState.PausedSyncS, ConnState.PausedSyncT):
        vol.set_state(conn=ConnState.SyncSource if conn == ConnState.PausedSyncS
                      else ConnState.SyncTarget)
    link._rs_slot.set()
    if notify and link._proto is not None and conn >= ConnState.Connected:
        with contextlib.suppress(ConnectionError):
            link.send_state()


def request_peer_invalidate(link: PeerLink) -> None:
    """invalidate-remote: ask the peer to invalidate itself (it becomes SyncTarget)."""
    link.send_state(invalidate_request=True)
