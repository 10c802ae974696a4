"""The link to the peer engine: connect, authenticate, handshake, replicate, resync.

One `PeerLink` per replicated volume, owned by its `Volume`. One TCP
connection on the replication network carries everything, in order:

1. **Connect.** The side whose `address` sorts lower connects to the other,
   which listens (both sides agree without a race; the connector retries every
   `connect_int` seconds). The acceptor holds DRBD's tie flag
   (RESOLVE_CONFLICTS). States: WFConnection, then WFReportParams.
2. **Features, then authentication** (`auth`: HMAC-SHA256 challenge and
   response in both directions). A wrong secret goes StandAlone on both
   sides: nothing else is exchanged. Another protocol version: the link is
   dropped and retried (packet layouts differ).
3. **Settings** (`P_PROTOCOL`: protocol, after-sb policies, two-primaries,
   discard-my-data, verify-alg, csums-alg; any mismatch is "incompatible ...
   settings", StandAlone; once connected, `adjust` changes them on both sides
   through P_STATE `adjust`/`adjusted`/`adjust_failed`, see `request_adjust`),
   then sizes (they must be equal), UUIDs with bitmap weight and flags, state.
4. **Decision**: `handshake.sync_handshake` on both sides (they agree: the
   inputs are mirrored and the tie flag is opposite). Connected, or a bitmap
   exchange (zlib-compressed, OR-merged) and a resync in the decided
   direction, or StandAlone (split brain unresolved, unrelated data, ...).
5. **Replication** (Connected, SyncSource, SyncTarget): each application
   write goes to the peer as P_DATA; protocol A completes it once handed to
   the socket, B on P_RECV_ACK, C on P_WRITE_ACK (sent after the peer's
   write); the P_DATA says which ack it wants (DP_SEND_*_ACK), so a protocol
   changed by `adjust` never strands a write in flight. Writes stay in the
   transfer log until their epoch's P_BARRIER_ACK (a barrier closes an epoch
   on every flush and every `max_epoch_size` writes; the peer acks it after
   fdatasync). When the link breaks, every write still in the transfer log is
   marked out of sync.
   With two primaries both sides send P_DATA; each carries `applied`, the
   last peer write its sender had applied, and the side with the tie flag
   skips the bytes of a peer write that its own concurrent writes overlap
   (`_unsuperseded`), so concurrent writes end the same on both copies.
6. **Resync**, pulled by the SyncTarget (`P_RS_DATA_REQUEST` for runs of set
   bits, up to 1 MiB each, a window of requests in flight, paced by the rate
   controllers of `rsctl` in `_throttle`), in disk order; with `csums_alg`
   the target sends digests instead (P_CSUM_RS_REQUEST) and the source only
   the blocks that differ. Application writes keep flowing on the same
   stream, so a resync reply can never overtake a newer write of the same
   block. At the end the target adopts the source's UUIDs and both rotate the
   bitmap UUID out.
7. **Online verify** (VerifyS/VerifyT): per-block digests of a chunk go to the
   peer (P_OV_REQUEST), which marks and reports the blocks that differ
   (P_OV_REPLY); paced like a resync. **Resize**: P_STATE asks the peer to
   grow its copy first.

Single event loop: a write's local part, its P_DATA and the reading of a
resync reply each happen without yielding, which is what keeps the ordering
arguments above true. The bytes move through `link.PeerProtocol` (packets
framed in place and handled inline, sends batched; see its docstring). Under
quorum fencing a link loss does not complete the waiting writes: they are
handed to the volume, which holds them until the peer is back or fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core import auth, csum, rsctl, wire
from binome.storage.replica.core.config import split_address
from binome.storage.replica.core.handshake import (
    HandshakeInput,
    NetSettings,
    Policies,
    RrConflict,
    incompatible,
    sync_handshake,
)
from binome.storage.replica.core.splitbrain import AfterSb, parse_policy
from binome.storage.replica.core.states import ConnState, DiskState, Role
from binome.storage.replica.core.uuids import GenerationIds, Side, UuidFlags
from binome.storage.replica.core.wire import P
from binome.storage.replica.engine.completion import Completion, Pending
from binome.storage.replica.engine.peer.transport import PeerProtocol

if TYPE_CHECKING:
    from binome.storage.replica.engine.volume.volume import Volume

log = logging.getLogger("binome.replica.peer")

RS_CHUNK_BITS = 256          # resync request size: 256 blocks (1 MiB at 4 KiB)
RS_WINDOW = 128              # resync requests in flight (scattered blocks: many small ones)
RS_WINDOW_BYTES = 8 << 20    # ... and at most this many bytes
BITMAP_CHUNK = 1 << 20       # bitmap bytes per P_BITMAP packet (before compression)
HANDSHAKE_TIMEOUT = 30.0
BIG_PACKET = 65536           # payloads from this size are sent without joining (no copy)


class _Fatal(Exception):
    """Drop the connection and go StandAlone (no automatic reconnect)."""


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


class PeerLink:
    def __init__(self, vol: Volume, *, discard_my_data: bool = False,
                 dry_run: bool = False) -> None:
        self.vol = vol
        self.cfg = cfg = vol.config
        self.initiator = cfg.address < cfg.peer_address
        self.resolve_conflicts = not self.initiator
        self.discard_my_data = discard_my_data
        self.dry_run = dry_run
        self.settings = NetSettings(
            protocol=cfg.protocol,
            after_sb_0pri=self._policy(0), after_sb_1pri=self._policy(1),
            after_sb_2pri=self._policy(2), allow_two_primaries=cfg.allow_two_primaries,
            discard_my_data=discard_my_data, verify_alg=cfg.verify_alg,
            csums_alg=cfg.csums_alg)
        self.rate = cfg.rate_settings()
        self.stopped = False
        self.last_error: str | None = None
        self._last_rx = 0.0
        self._task: asyncio.Task | None = None
        self._server: asyncio.base_events.Server | None = None
        self._accepted: asyncio.Queue[PeerProtocol] = asyncio.Queue()
        self._proto: PeerProtocol | None = None
        self._bg: set[asyncio.Task] = set()
        # peer's view
        self.peer_gi = GenerationIds()
        self.peer_bits = 0
        self.peer_flags = UuidFlags(0)
        self.peer_role = Role.Unknown
        self.peer_disk = DiskState.DUnknown
        # replication
        self._seq = itertools.count(1)
        self._acks: dict[int, Completion] = {}
        self._tl: dict[int, tuple[int, int, int]] = {}     # seq -> (offset, length, epoch)
        # Reads served by the peer while our disk is Diskless (on-io-error detach).
        self._read_ids = itertools.count(1)
        self._reads: dict[int, tuple[memoryview, asyncio.Future]] = {}
        self._epoch = 1
        self._epoch_writes = 0
        self._barriers: dict[int, list[asyncio.Future]] = {}
        # Two primaries: the seq of the last peer write applied here (sent with ours), and
        # how many peer writes lost bytes to a concurrent local write (`_on_data`).
        self._peer_applied = 0
        self.conflicts = 0
        # bitmap exchange and resync
        self._bm_received = False
        self._bm_sent = False
        self._deciding = False
        self._early_bitmap: list[bytes] = []
        self.resync: Resync | None = None
        self._rs_slot = asyncio.Event()
        self._rs_task: asyncio.Task | None = None
        self.peer_paused = False          # the peer's user paused the resync (flag `p`)
        self.last_resync: dict[str, Any] | None = None   # figures of the last finished one
        # online verify (VerifyS runs `_verify_task`; both sides keep `self.verify`)
        self.verify: Resync | None = None
        self._verify_task: asyncio.Task | None = None
        self._verify_runs: list[list[int]] = []          # [first block, count], coalesced
        self._resize_wait: asyncio.Future | None = None  # our resize, until the peer grew
        self._adjust_wait: asyncio.Future | None = None  # our adjust, until the peer applied

    def _policy(self, n: int) -> AfterSb:
        return parse_policy(getattr(self.cfg, f"after_sb_{n}pri"), n, my_name=self.cfg.node,
                            peer_name=self.cfg.peer_node)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.vol.set_state(conn=ConnState.Unconnected)
        if not self.initiator:
            host, port = split_address(self.cfg.address)
            self._server = await asyncio.get_running_loop().create_server(
                lambda: PeerProtocol(on_made=self._on_accept), host, port, reuse_address=True)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """disconnect: drop the link, go StandAlone."""
        self.stopped = True
        if self.vol.state.conn > ConnState.StandAlone:
            self.vol.set_state(conn=ConnState.Disconnecting)
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._proto is not None:
            self._proto.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        while not self._accepted.empty():
            self._accepted.get_nowait().abort()
        self.vol.set_state(conn=ConnState.StandAlone)

    @property
    def connected(self) -> bool:
        return self._proto is not None and self.vol.state.conn >= ConnState.Connected

    def _on_accept(self, proto: PeerProtocol) -> None:
        if self.stopped or self._proto is not None or not self._accepted.empty():
            proto.abort()           # one connection at a time
            return
        self._accepted.put_nowait(proto)

    async def _get_connection(self) -> PeerProtocol:
        if not self.initiator:
            return await self._accepted.get()
        host, port = split_address(self.cfg.peer_address)
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(max(self.cfg.connect_int, 1.0)):
                    _, proto = await loop.create_connection(PeerProtocol, host, port)
                    return proto
            except (OSError, TimeoutError):
                await asyncio.sleep(self.cfg.connect_int)

    async def _run(self) -> None:
        name = self.vol.name
        while not self.stopped:
            self.vol.set_state(conn=ConnState.WFConnection)
            proto = await self._get_connection()
            self._proto = proto
            keepalive = asyncio.get_running_loop().create_task(self._keepalive(proto))
            reason = ConnState.NetworkFailure
            try:
                await self._session()
                reason = ConnState.TearDown
            except _Fatal as e:
                self.last_error = str(e)
                log.error("%s: %s", name, e)
                self.stopped = True
            except auth.AuthError as e:
                self.last_error = str(e)
                log.error("%s: %s", name, e)
                self.stopped = True
            except wire.WireError as e:
                self.last_error = str(e)
                log.error("%s: protocol error: %s", name, e)
                reason = ConnState.ProtocolError
            except (ConnectionError, TimeoutError, OSError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("%s: connection lost: %s", name, self.last_error)
            finally:
                proto.close()               # what is queued still leaves (e.g. our auth reply)
                self._proto = None
                keepalive.cancel()
                await self._connection_lost(ConnState.Disconnecting if self.stopped else reason)
            if self.stopped:
                self.vol.set_state(conn=ConnState.StandAlone)
                if self._server is not None:
                    self._server.close()
                    self._server = None
                return
            self.vol.set_state(conn=ConnState.Unconnected)

    async def _keepalive(self, proto: PeerProtocol) -> None:
        """P_PING every ping_int; a peer silent for ping_int + ping_timeout is gone."""
        cfg = self.cfg
        while True:
            await asyncio.sleep(cfg.ping_int)
            if time.monotonic() - proto.last_rx > cfg.ping_int + cfg.ping_timeout:
                log.warning("%s: PingAck did not arrive in time.", self.vol.name)
                proto.fail(ConnectionError("PingAck did not arrive in time"))
                return
            with contextlib.suppress(ConnectionError):
                proto.send(wire.packet(P.PING))

    # --- packet I/O ---------------------------------------------------------------------

    def _send(self, data: bytes | bytearray) -> None:
        if self._proto is None:
            raise ConnectionError("not connected")
        self._proto.send(data)

    def flush(self) -> None:
        """Send what the current batch queued (the NBD server calls this after a batch)."""
        if self._proto is not None:
            self._proto.flush()

    async def _read(self) -> tuple[P, bytes]:
        assert self._proto is not None
        return await self._proto.read()

    async def _expect(self, cmd: P) -> bytes:
        got, payload = await self._read()
        if got != cmd:
            raise wire.WireError(f"expected {cmd.name}, got {got.name}")
        return payload

    # --- handshake ----------------------------------------------------------------------

    async def _session(self) -> None:
        vol, cfg = self.vol, self.cfg
        self._peer_applied = 0
        vol.set_state(conn=ConnState.WFReportParams)
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            self._send(wire.json_packet(P.CONNECTION_FEATURES, {
                "version": wire.PROTOCOL_VERSION, "volume": vol.name, "node": cfg.node}))
            feats = wire.parse_json(await self._expect(P.CONNECTION_FEATURES))
            if feats.get("volume") != vol.name:
                raise _Fatal(f"peer serves volume {feats.get('volume')!r}, not {vol.name!r}")
            if feats.get("version") != wire.PROTOCOL_VERSION:
                # Packet layouts differ between versions (P_DATA grew in 2): never mix
                # them. A protocol error, not StandAlone: the link retries, and connects
                # once both engines run the same version (a rolling upgrade).
                raise wire.WireError(f"incompatible protocol version: peer "
                                     f"{feats.get('version')}, mine {wire.PROTOCOL_VERSION}")
            mine = auth.challenge()
            self._send(wire.packet(P.AUTH_CHALLENGE, mine))
            theirs = await self._expect(P.AUTH_CHALLENGE)
            self._send(wire.packet(P.AUTH_RESPONSE, auth.response(cfg.secret, theirs, mine)))
            auth.verify(cfg.secret, mine, await self._expect(P.AUTH_RESPONSE))
            log.info("%s: Peer authenticated using %d bytes HMAC", vol.name, len(mine))
            self._send(wire.json_packet(P.PROTOCOL, {
                "protocol": cfg.protocol, "after_sb_0pri": self.settings.after_sb_0pri.value,
                "after_sb_1pri": self.settings.after_sb_1pri.value,
                "after_sb_2pri": self.settings.after_sb_2pri.value,
                "allow_two_primaries": cfg.allow_two_primaries,
                "discard_my_data": self.discard_my_data, "verify_alg": cfg.verify_alg,
                "csums_alg": cfg.csums_alg}))
            peer_settings = self._parse_settings(await self._expect(P.PROTOCOL))
            problem = incompatible(self.settings, peer_settings)
            if problem:
                raise _Fatal(problem)
            self.peer_discard = peer_settings.discard_my_data
            self._send(wire.json_packet(P.SIZES, {"size": vol.size}))
            self._send_uuids()
            self._send_state()
            size = wire.parse_json(await self._expect(P.SIZES)).get("size")
            self._on_uuids(await self._expect(P.UUIDS))
            self._on_state(await self._expect(P.STATE), during_handshake=True)
            if size != vol.size:
                raise _Fatal(f"The peer's disk size differs (peer {size} bytes, "
                             f"mine {vol.size} bytes)")
        log.info("%s: Handshake successful: Agreed network protocol version %d", vol.name,
                 wire.PROTOCOL_VERSION)
        await self._decide()
        self.discard_my_data = False       # one connect only, as drbdadm's flag
        await self._receive_loop()

    @staticmethod
    def _parse_settings(payload: bytes) -> NetSettings:
        d = wire.parse_json(payload)
        try:
            return NetSettings(protocol=d["protocol"],
                               after_sb_0pri=AfterSb(d["after_sb_0pri"]),
                               after_sb_1pri=AfterSb(d["after_sb_1pri"]),
                               after_sb_2pri=AfterSb(d["after_sb_2pri"]),
                               allow_two_primaries=bool(d["allow_two_primaries"]),
                               discard_my_data=bool(d["discard_my_data"]),
                               verify_alg=str(d.get("verify_alg", "")),
                               csums_alg=str(d.get("csums_alg", "")))
        except (KeyError, ValueError) as e:
            raise wire.WireError(f"bad P_PROTOCOL: {e}") from None

    def _uuid_flags(self) -> UuidFlags:
        f = UuidFlags(0)
        if self.discard_my_data:
            f |= UuidFlags.DISCARD_MY_DATA
        if self.vol.crashed_primary:
            f |= UuidFlags.CRASHED_PRIMARY
        if self.vol.state.disk == DiskState.Inconsistent:
            f |= UuidFlags.INCONSISTENT
        return f

    def _send_uuids(self) -> None:
        assert self.vol.meta is not None and self.vol.bitmap is not None
        self._send(wire.json_packet(P.UUIDS, {
            "gi": self.vol.meta.sb.gi.to_list(), "bits": self.vol.bitmap.weight,
            "flags": int(self._uuid_flags())}))

    def _send_state(self, **extra: Any) -> None:
        s = self.vol.state
        self._send(wire.json_packet(P.STATE, {"role": s.role.name, "disk": s.disk.name,
                                              "paused": self.vol.user_paused, **extra}))

    def _on_uuids(self, payload: bytes | memoryview) -> None:
        d = wire.parse_json(payload)
        try:
            self.peer_gi = GenerationIds.from_list([int(x) for x in d["gi"]])
            self.peer_bits = int(d["bits"])
            self.peer_flags = UuidFlags(int(d["flags"]))
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise wire.WireError(f"bad P_UUIDS: {e}") from None

    def _on_state(self, payload: bytes, *, during_handshake: bool = False) -> dict[str, Any]:
        d = wire.parse_json(payload)
        try:
            self.peer_role = Role[d["role"]]
            self.peer_disk = DiskState[d["disk"]]
        except KeyError as e:
            raise wire.WireError(f"bad P_STATE: {e}") from None
        self.peer_paused = bool(d.get("paused"))
        if not during_handshake:
            self.vol.set_state(peer=self.peer_role,
                               pdsk=self.peer_disk if self.vol.state.conn >= ConnState.Connected
                               else self.vol.state.pdsk)
        return d

    async def _decide(self) -> None:
        """Run the sync handshake and enter its outcome (drbd_sync_handshake + after)."""
        self._deciding = True
        try:
            await self._decide_now()
        finally:
            self._deciding = False
        early, self._early_bitmap = self._early_bitmap, []
        for payload in early:
            await self._on_bitmap(payload)

    async def _decide_now(self) -> None:
        vol = self.vol
        assert vol.meta is not None and vol.bitmap is not None
        cfg = self.cfg
        me = Side(vol.meta.sb.gi, vol.state.role == Role.Primary, vol.crashed_primary)
        peer = Side(self.peer_gi, self.peer_role == Role.Primary,
                    bool(self.peer_flags & UuidFlags.CRASHED_PRIMARY))
        log.info("%s: drbd_sync_handshake:", vol.name)
        log.info("%s: self %s bits:%d flags:0", vol.name, me.gi, vol.bitmap.weight)
        log.info("%s: peer %s bits:%d flags:%X", vol.name, peer.gi, self.peer_bits,
                 int(self.peer_flags))
        out = sync_handshake(HandshakeInput(
            me=me, peer=peer, my_disk=vol.state.disk, peer_disk=self.peer_disk,
            my_changes=vol.bitmap.weight, peer_changes=self.peer_bits,
            resolve_conflicts=self.resolve_conflicts, discard_my_data=self.discard_my_data,
            peer_discard_my_data=bool(self.peer_flags & UuidFlags.DISCARD_MY_DATA),
            policies=Policies(self.settings.after_sb_0pri, self.settings.after_sb_1pri,
                              self.settings.after_sb_2pri, cfg.always_asbp,
                              RrConflict(cfg.rr_conflict)),
            can_demote=vol.open_count == 0, dry_run=self.dry_run))
        for line in out.log:
            log.info("%s: %s", vol.name, line)
        for handler in out.handlers:
            vol.call_handler(handler)       # handlers.py; nobody waits for these
        if out.comparison.self_gi != me.gi:
            await vol.persist(gi=out.comparison.self_gi)
        if out.comparison.peer_gi != peer.gi:
            self.peer_gi = out.comparison.peer_gi
        if out.demote:
            await vol.demote()
        if out.conn is None:
            raise _Fatal(out.log[-1] if out.log else "handshake failed")
        vol.deferred_generation = False    # the peer is back: nothing to fence
        if out.conn == ConnState.Connected:
            # Connected without resync: Consistent/Outdated disks are UpToDate now.
            disk = vol.state.disk
            if disk in (DiskState.Consistent, DiskState.Outdated):
                disk = DiskState.UpToDate
            pdsk = self.peer_disk
            if pdsk in (DiskState.Consistent, DiskState.Outdated):
                pdsk = DiskState.UpToDate
            await vol.change_state(conn=ConnState.Connected, disk=disk, pdsk=pdsk,
                                   peer=self.peer_role)
            return
        if out.full_sync:
            vol.bitmap.set_all()
        source = out.conn == ConnState.WFBitMapS
        await vol.change_state(conn=out.conn, peer=self.peer_role,
                               disk=vol.state.disk if source else DiskState.Inconsistent,
                               pdsk=DiskState.Inconsistent if source else self.peer_disk)
        self._bm_sent = self._bm_received = False
        self._send_bitmap()

    def _send_bitmap(self) -> None:
        bm = self.vol.bitmap
        assert bm is not None
        raw = bm.to_bytes()
        offsets = range(0, max(len(raw), 1), BITMAP_CHUNK)
        for i, off in enumerate(offsets):
            chunk = zlib.compress(raw[off:off + BITMAP_CHUNK], 1)
            last = i == len(offsets) - 1
            self._send(wire.packet(P.BITMAP, wire.BITMAP_HDR.pack(off, int(last)) + chunk))
            self.vol.counters.ns += len(chunk)
        self._bm_sent = True

    async def _on_bitmap(self, payload: bytes) -> None:
        vol = self.vol
        assert vol.bitmap is not None and vol.meta is not None
        if vol.state.conn not in (ConnState.WFBitMapS, ConnState.WFBitMapT):
            if self._deciding:
                # The peer decided first (renegotiation): keep its bitmap for a moment.
                self._early_bitmap.append(payload)
                return
            raise wire.WireError("P_BITMAP outside WFBitMapS/T")
        off, last = wire.BITMAP_HDR.unpack_from(payload)
        try:
            data = zlib.decompress(payload[wire.BITMAP_HDR.size:])
        except zlib.error as e:
            raise wire.WireError(f"bad bitmap chunk: {e}") from None
        vol.counters.nr += len(payload)
        vol.bitmap.merge(off, data)
        if not last:
            return
        self._bm_received = True
        await vol.write_bitmap()
        if vol.state.conn == ConnState.WFBitMapS:
            await self._start_sync_source()
        else:
            vol.set_state(conn=ConnState.WFSyncUUID)

    # --- resync -------------------------------------------------------------------------

    async def _start_sync_source(self) -> None:
        vol = self.vol
        assert vol.meta is not None and vol.bitmap is not None
        gi, sync_uuid = vol.meta.sb.gi.start_resync_as_source(vol.rand64)
        await vol.change_state(gi=gi, conn=ConnState.SyncSource, pdsk=DiskState.Inconsistent)
        self.resync = Resync(source=True, total_bits=vol.bitmap.weight,
                             started=time.monotonic())
        self._send_uuids()
        self._send(wire.packet(P.SYNC_UUID, wire.SYNC_UUID.pack(sync_uuid)))
        log.info("%s: Began resync as SyncSource (will sync %d KB [%d bits set]).", vol.name,
                 vol.out_of_sync_kib(), vol.bitmap.weight)
        self.pause_changed(notify=False)

    async def _on_sync_uuid(self, payload: bytes) -> None:
        vol = self.vol
        assert vol.meta is not None and vol.bitmap is not None
        (uuid,) = wire.SYNC_UUID.unpack(payload)
        # DRBD's before-resync-target: our data is still unmodified; a failing handler
        # (exit code != 0) drops the connection before it becomes Inconsistent.
        hr = await vol.run_handler("before-resync-target")
        if hr.exit_code != 0:
            raise _Fatal(f"before-resync-target handler returned {hr.exit_code}, "
                         f"dropping connection.")
        gi = vol.meta.sb.gi.adopt_sync_uuid(uuid, primary=vol.state.role == Role.Primary)
        await vol.change_state(gi=gi, conn=ConnState.SyncTarget, disk=DiskState.Inconsistent)
        self.resync = Resync(source=False, total_bits=vol.bitmap.weight,
                             started=time.monotonic())
        log.info("%s: Began resync as SyncTarget (will sync %d KB [%d bits set]).", vol.name,
                 vol.out_of_sync_kib(), vol.bitmap.weight)
        self.pause_changed(notify=False)
        self._rs_task = self._spawn(self._pull_resync())

    async def _pull_resync(self) -> None:
        """SyncTarget: request every run of set bits, in disk order, RS_WINDOW at a time."""
        vol = self.vol
        bm = vol.bitmap
        rs = self.resync
        assert bm is not None and rs is not None
        block = vol.config.bm_block_size
        while True:
            runs = list(bm.runs())
            if not runs:
                break
            await self._pull_runs(runs, rs, block)
            while rs.inflight:
                self._rs_slot.clear()
                await self._rs_slot.wait()
        await self._finish_sync_target()

    async def _pull_runs(self, runs: list[tuple[int, int]], rs: Resync, block: int) -> None:
        vol = self.vol
        csums = self.cfg.csums_alg
        for first, count in runs:
            bit = first
            while bit < first + count:
                await self._wait_slot(rs)
                n = min(RS_CHUNK_BITS, first + count - bit)
                n = await self._throttle(rs, n, block)
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
                    self._send(wire.packet(P.CSUM_RS_REQUEST,
                                           wire.CSUM_REQUEST.pack(offset, length) + digests))
                else:
                    self._send(wire.packet(P.RS_DATA_REQUEST,
                                           wire.RS_REQUEST.pack(offset, length)))
                bit += n

    async def _wait_slot(self, rs: Resync) -> None:
        """Wait for room in the request window, and while the resync is paused."""
        while (rs.inflight >= RS_WINDOW or rs.inflight_bytes >= RS_WINDOW_BYTES
               or self.sync_paused):
            paused_at = time.monotonic() if self.sync_paused else None
            self._rs_slot.clear()
            await self._rs_slot.wait()
            if paused_at is not None:
                rs.paused += time.monotonic() - paused_at

    def _app_io(self) -> int:
        """Bytes of I/O on this volume so far that were not this resync's (c-min-rate)."""
        c = self.vol.counters
        rs = self.resync if self.resync is not None else self.verify
        return c.dw + c.dr + c.nr - (rs.own_io if rs is not None else 0)

    async def _throttle(self, rs: Resync, nbits: int, block: int) -> int:
        """Pace the next request of up to `nbits` blocks (rsctl); return how many to ask for.

        Every STEP s a controller step sets this step's budget: the dynamic
        controller's answer, capped at `c_min_rate` while the application is
        busy (`rsctl.step_budget`); a request takes what the budget allows (at
        least one block), then waits for the next step. The fixed controller
        also never asks ahead of `resync_rate`.
        """
        while True:
            s = self.rate              # re-read: `adjust` may change it during a wait
            now = time.monotonic()
            if rs.plan_for is not s:
                # `adjust` changed the settings mid-resync: plan afresh from the next step.
                rs.plan, rs.plan_for, rs.next_step = None, s, min(rs.next_step, now)
            if now >= rs.next_step:
                io = self._app_io()
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

    def _on_rs_request(self, payload: memoryview) -> None:
        vol = self.vol
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
        self._send_reply(buf, length)
        vol.counters.ns += length
        vol.counters.dr += length
        if self.resync is not None:
            self.resync.own_io += length
            self.resync.moved(length)

    def _send_reply(self, buf: bytearray, length: int) -> None:
        if length < BIG_PACKET:
            self._send(buf)                     # joined with the batch's other replies
        else:
            if self._proto is None:
                raise ConnectionError("not connected")
            self._proto.send_big(b"", buf)      # a fresh buffer each time: no copy needed

    def _on_csum_rs_request(self, payload: memoryview) -> None:
        """SyncSource, checksum-based: send back only the blocks whose digests differ."""
        vol = self.vol
        assert vol.disk is not None
        offset, length = wire.CSUM_REQUEST.unpack_from(payload)
        if offset + length > vol.size:
            raise wire.WireError("resync request beyond the end of the volume")
        block = self.cfg.bm_block_size
        data = bytearray(length)
        vol.disk.read_into(offset, memoryview(data))
        vol.counters.dr += length
        try:
            diff = csum.differing_blocks(self.cfg.csums_alg, data, block,
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
        self._send_reply(buf, sent)
        vol.counters.ns += sent
        rs = self.resync
        if rs is not None:
            rs.own_io += length
            rs.equal += length - sent
            rs.moved(length)

    def _on_rs_csum_reply(self, payload: memoryview) -> None:
        """SyncTarget: write the differing blocks; the equal ones are in sync as they are."""
        vol = self.vol
        assert vol.disk is not None and vol.bitmap is not None
        offset, length = wire.CSUM_REPLY.unpack_from(payload)
        block = self.cfg.bm_block_size
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
        self._rs_written(offset, length, written)
        if self.resync is not None:
            self.resync.equal += length - written

    def _on_rs_reply(self, payload: memoryview) -> None:
        vol = self.vol
        assert vol.disk is not None and vol.bitmap is not None
        (offset,) = wire.RS_REPLY_HDR.unpack_from(payload)
        data = memoryview(payload)[wire.RS_REPLY_HDR.size:]
        length = len(data)
        vol.disk.write(offset, data)
        self._rs_written(offset, length, length)

    def _rs_written(self, offset: int, length: int, written: int) -> None:
        """A resync reply is applied: clear the bits, acknowledge, account, wake the puller."""
        vol = self.vol
        assert vol.bitmap is not None
        vol.bitmap.clear_range(offset >> vol.bm_shift, (offset + length - 1) >> vol.bm_shift)
        vol.counters.nr += written
        vol.counters.dw += written
        self._send(wire.packet(P.RS_WRITE_ACK, wire.RS_ACK.pack(offset, length)))
        rs = self.resync
        if rs is not None:
            rs.own_io += 2 * written
            rs.moved(length)
            rs.inflight -= 1
            rs.inflight_bytes -= length
            self._rs_slot.set()

    def _on_rs_ack(self, payload: memoryview) -> None:
        vol = self.vol
        assert vol.bitmap is not None
        offset, length = wire.RS_ACK.unpack(payload)
        vol.bitmap.clear_range(offset >> vol.bm_shift, (offset + length - 1) >> vol.bm_shift)

    async def _finish_sync_target(self) -> None:
        vol = self.vol
        assert vol.meta is not None and vol.bitmap is not None
        rs = self.resync
        gi = vol.meta.sb.gi.finish_resync_as_target(self.peer_gi,
                                                    primary=vol.state.role == Role.Primary)
        # Data and bitmap durable before the metadata says UpToDate.
        await vol.disk_flush()
        await vol.write_bitmap()
        await vol.change_state(gi=gi, conn=ConnState.Connected, disk=DiskState.UpToDate,
                               pdsk=DiskState.UpToDate)
        self._send_state(resync_finished=True)
        self._log_done(rs)
        self.resync = None
        vol.call_handler("after-resync-target")

    async def _finish_sync_source(self) -> None:
        vol = self.vol
        assert vol.meta is not None
        rs = self.resync
        vol.crashed_primary = False
        await vol.write_bitmap()
        await vol.change_state(gi=vol.meta.sb.gi.finish_resync_as_source(),
                               conn=ConnState.Connected, pdsk=DiskState.UpToDate)
        self._log_done(rs)
        self.resync = None

    def _log_done(self, rs: Resync | None) -> None:
        if rs is None:
            return
        secs = max(time.monotonic() - rs.started, 1e-6)
        log.info("%s: Resync done (total %d sec; paused %d sec; %d K/sec)", self.vol.name,
                 round(secs), round(rs.paused), int(rs.bytes / secs / 1024))
        total = rs.bytes
        if self.cfg.csums_alg and total:
            # DRBD's line for checksum-based resync.
            log.info("%s: %d %% had equal checksums, eliminated: %dK; transferred %dK total %dK",
                     self.vol.name, 100 * rs.equal // total, rs.equal // 1024,
                     (total - rs.equal) // 1024, total // 1024)
        self.last_resync = {"source": rs.source, "seconds": round(secs, 3),
                            "total_kib": total // 1024, "equal_kib": rs.equal // 1024,
                            "transferred_kib": (total - rs.equal) // 1024,
                            "paused_s": round(rs.paused, 1),
                            "throttled_s": round(rs.throttled, 1)}

    # --- resize -------------------------------------------------------------------------

    async def request_resize(self, size: int) -> None:
        """Ask the peer to grow its copy; ours grows when it answers (`_on_state_change`)."""
        if self._resize_wait is not None:
            raise ValueError("a resize is already running")
        fut = asyncio.get_running_loop().create_future()
        self._resize_wait = fut
        try:
            self._send_state(resize=size)
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await fut
        finally:
            if self._resize_wait is fut:
                self._resize_wait = None

    # --- adjust -------------------------------------------------------------------------

    def apply_config(self, cfg: Any) -> None:
        """Settings changed by `adjust` (Volume.adjust): used from the next write, request
        or handshake on. The protocol travels with each write (DP_SEND_*_ACK)."""
        self.cfg = cfg
        self.settings = dataclasses.replace(
            self.settings, protocol=cfg.protocol, allow_two_primaries=cfg.allow_two_primaries,
            verify_alg=cfg.verify_alg, csums_alg=cfg.csums_alg)
        self.rate = cfg.rate_settings()

    @property
    def adjusting(self) -> bool:
        return self._adjust_wait is not None

    async def request_adjust(self, shared: dict[str, Any]) -> None:
        """Ask the peer to apply the settings both sides must agree on; raises ValueError
        with the peer's reason when it refuses. Ours are applied by the caller after."""
        if self._adjust_wait is not None:
            raise ValueError("an adjust is already running")
        fut = asyncio.get_running_loop().create_future()
        self._adjust_wait = fut
        try:
            self._send_state(adjust=shared)
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await fut
        finally:
            if self._adjust_wait is fut:
                self._adjust_wait = None

    # --- online verify ------------------------------------------------------------------

    def start_verify(self, start: int = 0) -> None:
        """`verify`: become VerifyS and compare every block from `start` with the peer.

        This side reads a chunk and sends its per-block digests (P_OV_REQUEST,
        with `applied`, as P_DATA); the VerifyT side reads its own copy, marks
        the blocks that differ out of sync and answers which (P_OV_REPLY); this
        side marks them too. A later resync (disconnect/connect) repairs them.
        """
        vol = self.vol
        s = vol.state
        if self._proto is None or s.conn != ConnState.Connected:
            raise ValueError(f"online verify needs a Connected peer (now {s.conn})")
        if s.disk != DiskState.UpToDate or s.pdsk != DiskState.UpToDate:
            raise ValueError("online verify needs UpToDate data on both sides")
        if not self.cfg.verify_alg:
            raise ValueError("no verify-alg configured")
        block = self.cfg.bm_block_size
        if start < 0 or start >= vol.size or start % block:
            raise ValueError(f"start must be a multiple of {block} below the volume size")
        first = start // block
        total = (vol.size + block - 1) // block - first
        self._begin_verify(source=True, total=total, start=start)
        self._send_state(verify="start", start=start)
        self._verify_task = self._spawn(self._run_verify(first))

    def _begin_verify(self, *, source: bool, total: int, start: int) -> None:
        self.verify = Resync(source=source, total_bits=total, started=time.monotonic(),
                             verify=True)
        self._verify_runs = []
        self.vol.set_state(conn=ConnState.VerifyS if source else ConnState.VerifyT)
        log.info("%s: Online Verify start sector: %d (%d blocks)", self.vol.name, start // 512,
                 total)

    async def _run_verify(self, first: int) -> None:
        vol = self.vol
        rs = self.verify
        assert rs is not None and vol.disk is not None
        block = self.cfg.bm_block_size
        nblocks = (vol.size + block - 1) // block
        bit = first
        while bit < nblocks:
            await self._wait_slot(rs)
            n = await self._throttle(rs, min(RS_CHUNK_BITS, nblocks - bit), block)
            offset = bit * block
            length = min(n * block, vol.size - offset)
            buf = bytearray(length)
            # Read and send without yielding: our later writes reach the peer after this.
            vol.disk.read_into(offset, memoryview(buf))
            digests = csum.block_digests(self.cfg.verify_alg, buf, block)
            rs.inflight += 1
            rs.inflight_bytes += length
            rs.requested += length
            self._send(wire.packet(P.OV_REQUEST, wire.OV_REQUEST.pack(
                offset, length, self._peer_applied) + digests))
            bit += n
        while rs.inflight:
            self._rs_slot.clear()
            await self._rs_slot.wait()
        self._send_state(verify="done")
        self._end_verify(stopped=False)

    def _on_ov_request(self, payload: memoryview) -> None:
        """VerifyT: compare the peer's digests with our copy; mark and report what differs."""
        vol = self.vol
        assert vol.disk is not None
        offset, length, applied = wire.OV_REQUEST.unpack_from(payload)
        if offset + length > vol.size:
            raise wire.WireError("verify request beyond the end of the volume")
        block = self.cfg.bm_block_size
        data = bytearray(length)
        vol.disk.read_into(offset, memoryview(data))
        try:
            diff = csum.differing_blocks(self.cfg.verify_alg, data, block,
                                         memoryview(payload)[wire.OV_REQUEST.size:])
        except ValueError as e:
            raise wire.WireError(f"bad P_OV_REQUEST: {e}") from None
        if diff and self._tl and next(reversed(self._tl)) > applied:
            # Our writes the peer had not applied when it read its copy differ legitimately:
            # they are on their way to it (see _unsuperseded).
            skip: set[int] = set()
            for a, b in self._unsuperseded(offset, length, applied, count=False) or []:
                skip.update(range((a - offset) // block, (b - 1 - offset) // block + 1))
            diff = [i for i in diff if i not in skip]
        n = (length + block - 1) // block
        self._verify_found(offset, diff)
        self._send(wire.packet(P.OV_REPLY, wire.OV_REPLY.pack(offset, length)
                               + csum.mask_of(diff, n)))
        rs = self.verify
        if rs is not None:
            rs.done_bits += n
            rs.moved(length)

    def _on_ov_reply(self, payload: memoryview) -> None:
        offset, length = wire.OV_REPLY.unpack_from(payload)
        block = self.cfg.bm_block_size
        n = (length + block - 1) // block
        try:
            diff = csum.mask_indexes(memoryview(payload)[wire.OV_REPLY.size:], n)
        except ValueError as e:
            raise wire.WireError(f"bad P_OV_REPLY: {e}") from None
        self._verify_found(offset, diff)
        rs = self.verify
        if rs is not None and rs.source:
            rs.done_bits += n
            rs.inflight -= 1
            rs.inflight_bytes -= length
            rs.moved(length)
            self._rs_slot.set()

    def _verify_found(self, offset: int, diff: list[int]) -> None:
        """Mark blocks found out of sync and remember them as coalesced runs."""
        if not diff:
            return
        vol = self.vol
        block = self.cfg.bm_block_size
        first = offset // block
        for i in diff:
            vol.mark_out_of_sync((first + i) * block, block)
            runs = self._verify_runs
            if runs and runs[-1][0] + runs[-1][1] == first + i:
                runs[-1][1] += 1
            else:
                runs.append([first + i, 1])
        if self.verify is not None:
            self.verify.found += len(diff)
        log.warning("%s: Out of sync: start=%d, size=%d (bytes)", vol.name,
                    (first + diff[0]) * block, (diff[-1] - diff[0] + 1) * block)

    def stop_verify(self) -> None:
        """`verify --stop`, on either side: both go back to Connected."""
        if self.verify is None:
            raise ValueError("no online verify is running")
        with contextlib.suppress(ConnectionError):
            self._send_state(verify="stop")
        self._end_verify(stopped=True)

    def _end_verify(self, *, stopped: bool, lost: bool = False) -> None:
        rs, self.verify = self.verify, None
        task, self._verify_task = self._verify_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if rs is None:
            return
        vol = self.vol
        block = self.cfg.bm_block_size
        secs = max(time.monotonic() - rs.started, 1e-6)
        runs = self._verify_runs
        vol.verify_result = {
            "role": "VerifyS" if rs.source else "VerifyT", "alg": self.cfg.verify_alg,
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

    # --- replication --------------------------------------------------------------------

    def send_out_of_sync(self, offset: int, length: int) -> None:
        """WFBitMapS: the bitmap already left; tell the peer about this block (P_OUT_OF_SYNC)."""
        with contextlib.suppress(ConnectionError):   # if the link drops, we keep the bit
            self._send(wire.packet(P.OUT_OF_SYNC, wire.RS_ACK.pack(offset, length)))

    def send_write(self, offset: int, data: memoryview | bytes | None, length: int,
                   flags: int) -> Completion | None:
        """Mirror one write (or discard: data None); the completion fires per protocol.

        The write enters the transfer log before it is sent: whatever happens to
        the link from now on, it is either acknowledged by a barrier or marked
        out of sync.
        """
        seq = next(self._seq)
        self._tl[seq] = (offset, length, self._epoch)
        protocol = self.cfg.protocol
        if protocol == "B":
            flags |= wire.DP_SEND_RECEIVE_ACK
        elif protocol == "C":
            flags |= wire.DP_SEND_WRITE_ACK
        hdr = wire.data_header(seq, offset, length, flags, self._peer_applied)
        try:
            if data is None:
                self._send(hdr)
            elif length < BIG_PACKET:
                self._send(hdr + bytes(data))
            else:
                # Large payloads live in a buffer of their own (NBD "direct" mode, never
                # reused): hand the view over, the transport copies only what the socket
                # does not take at once.
                if self._proto is None:
                    raise ConnectionError("not connected")
                self._proto.send_big(hdr, data)
        except ConnectionError:
            del self._tl[seq]
            self.vol.mark_out_of_sync(offset, length)
            return None
        self.vol.counters.ns += length if data is not None else 0
        self._epoch_writes += 1
        if self._epoch_writes >= self.cfg.max_epoch_size:
            self.send_barrier()         # nobody waits: it only lets the transfer log drain
        if protocol == "A":
            return None
        done = Completion()
        self._acks[seq] = done
        return done

    def send_barrier(self) -> asyncio.Future:
        """Close the current epoch; the future completes when the peer flushed it.

        An empty epoch is closed too: a FLUSH must make the writes the peer
        already acknowledged (in its page cache) durable there as well.
        """
        fut = asyncio.get_running_loop().create_future()
        epoch = self._epoch
        try:
            self._send(wire.packet(P.BARRIER, wire.BARRIER.pack(epoch)))
        except ConnectionError:
            fut.set_result(None)        # the link is gone: unflushed writes are marked
            return fut
        self._barriers.setdefault(epoch, []).append(fut)
        self._epoch += 1
        self._epoch_writes = 0
        return fut

    def _on_ack(self, payload: memoryview) -> None:
        (seq,) = wire.ACK.unpack(payload)
        fut = self._acks.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_neg_ack(self, payload: memoryview) -> None:
        (seq,) = wire.ACK.unpack(payload)
        entry = self._tl.get(seq)
        if entry is not None:
            self.vol.mark_out_of_sync(entry[0], entry[1])
        self._on_ack(payload)

    def _on_barrier_ack(self, payload: memoryview) -> None:
        epoch, _count = wire.BARRIER_ACK.unpack(payload)
        for seq in [s for s, (_, _, e) in self._tl.items() if e <= epoch]:
            del self._tl[seq]
        for e in [e for e in self._barriers if e <= epoch]:
            for fut in self._barriers.pop(e):
                if not fut.done():
                    fut.set_result(None)

    def _on_data(self, payload: memoryview) -> None:
        """The peer (Primary) writes: apply, then acknowledge per protocol (inline)."""
        vol = self.vol
        assert vol.disk is not None
        seq, offset, length, flags, applied = wire.DATA_HDR.unpack_from(payload)
        if offset + length > vol.size:
            raise wire.WireError("write beyond the end of the volume")
        # The ack the sender asked for (its protocol when it sent this write), not ours:
        # the two differ for writes crossing an `adjust` of the protocol.
        if flags & wire.DP_SEND_RECEIVE_ACK:
            self._send(wire.packet(P.RECV_ACK, wire.ACK.pack(seq)))
        self._peer_applied = seq
        pieces = None
        tl = self._tl
        if tl and self.resolve_conflicts and next(reversed(tl)) > applied:
            pieces = self._unsuperseded(offset, length, applied)
        try:
            if pieces is not None:
                self._apply_pieces(payload, offset, flags, pieces)
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
            self._send(wire.packet(P.NEG_ACK, wire.ACK.pack(seq)))
            return
        if not flags & wire.DP_SEND_WRITE_ACK:
            return
        if flags & wire.DP_FUA:
            async def ack_after_flush() -> None:
                await vol.disk_flush()
                self._send(wire.packet(P.WRITE_ACK, wire.ACK.pack(seq)))
            self._spawn(ack_after_flush())
        else:
            self._send(wire.packet(P.WRITE_ACK, wire.ACK.pack(seq)))

    def _unsuperseded(self, offset: int, length: int, applied: int, *,
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
        for seq, (o, n, _) in reversed(self._tl.items()):
            if seq <= applied:
                break                  # the transfer log is in seq order
            if o < end and offset < o + n:
                cut.append((max(o, offset), min(o + n, end)))
        if not cut:
            return None
        if not count:
            return cut                 # (for verify: the overlapped ranges themselves)
        self.conflicts += 1
        pieces = subtract_ranges(offset, end, cut)
        log.debug("%s: concurrent write at %d+%d: %d bytes superseded by local writes",
                  self.vol.name, offset, length, length - sum(n for _, n in pieces))
        return pieces

    def _apply_pieces(self, payload: memoryview, offset: int, flags: int,
                      pieces: list[tuple[int, int]]) -> None:
        vol = self.vol
        assert vol.disk is not None
        data = payload[wire.DATA_HDR.size:]
        for o, n in pieces:
            if flags & (wire.DP_DISCARD | wire.DP_ZERO_KEEP):
                vol.disk.discard(o, n, keep_allocated=bool(flags & wire.DP_ZERO_KEEP),
                                 fast=False)
            else:
                vol.disk.write(o, data[o - offset:o - offset + n])
                vol.counters.dw += n

    def _on_barrier(self, payload: memoryview) -> None:
        (epoch,) = wire.BARRIER.unpack(payload)

        async def flush_then_ack() -> None:
            await self.vol.disk_flush()
            if self._proto is not None:
                self._send(wire.packet(P.BARRIER_ACK, wire.BARRIER_ACK.pack(epoch, 0)))
        self._spawn(flush_then_ack())

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    # --- the receive loop ---------------------------------------------------------------

    async def _receive_loop(self) -> None:
        """Replication: packets are handled inline as they arrive (`link.PeerProtocol`)."""
        proto = self._proto
        assert proto is not None
        sync_handlers: dict[P, Callable[[memoryview], None]] = {
            P.DATA: self._on_data,
            P.WRITE_ACK: self._on_ack, P.RECV_ACK: self._on_ack, P.NEG_ACK: self._on_neg_ack,
            P.BARRIER_ACK: self._on_barrier_ack, P.BARRIER: self._on_barrier,
            P.RS_DATA_REQUEST: self._on_rs_request, P.RS_DATA_REPLY: self._on_rs_reply,
            P.RS_WRITE_ACK: self._on_rs_ack, P.UUIDS: self._on_uuids,
            P.PING: lambda _: self._send(wire.packet(P.PING_ACK)), P.PING_ACK: lambda _: None,
            P.OUT_OF_SYNC: self._on_out_of_sync,
            P.CSUM_RS_REQUEST: self._on_csum_rs_request, P.RS_CSUM_REPLY: self._on_rs_csum_reply,
            P.OV_REQUEST: self._on_ov_request, P.OV_REPLY: self._on_ov_reply,
            P.DATA_REQUEST: self._on_data_request, P.DATA_REPLY: self._on_data_reply,
        }
        # These change states and metadata: the packets after them wait until they are done.
        async_handlers: dict[P, Callable[[bytes], Awaitable[None]]] = {
            P.BITMAP: self._on_bitmap, P.SYNC_UUID: self._on_sync_uuid,
            P.STATE: self._on_state_change}

        def dispatch(cmd: P, payload: memoryview) -> Any:
            fn = sync_handlers.get(cmd)
            if fn is not None:
                fn(payload)
                return None
            afn = async_handlers.get(cmd)
            if afn is None:
                raise wire.WireError(f"unexpected {cmd.name} while {self.vol.state.conn}")
            return afn(bytes(payload))        # a copy: the receive buffer moves on

        nbd = self.vol.nbd
        if nbd is not None:
            # Replies completed by the acks of a batch leave in the same loop iteration.
            proto.on_batch_end = nbd.flush_pending
        proto.start(dispatch)
        await proto.closed

    # --- reads served by the peer (a Diskless Primary: on-io-error detach) -----------------

    @property
    def is_connected(self) -> bool:
        """A session with the peer is up now (what a Diskless Primary's I/O needs)."""
        return self._proto is not None

    def read_remote(self, offset: int, view: memoryview) -> asyncio.Future:
        """Read `view` from the peer's disk (P_DATA_REQUEST); the future fails with EIO
        when the link goes away first."""
        if self._proto is None:
            raise OSError(errno.EIO, f"volume {self.vol.name}: no local disk and no peer")
        rid = next(self._read_ids)
        fut = asyncio.get_running_loop().create_future()
        self._reads[rid] = (view, fut)
        self._send(wire.packet(P.DATA_REQUEST, wire.DATA_REQUEST.pack(rid, offset, len(view))))
        return fut

    def _on_data_request(self, payload: memoryview) -> None:
        vol = self.vol
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
            self._send(buf)
        else:
            if self._proto is None:
                raise ConnectionError("not connected")
            self._proto.send_big(b"", buf)
        if not err:
            vol.counters.ns += length
            vol.counters.dr += length

    def _on_data_reply(self, payload: memoryview) -> None:
        rid, err = wire.DATA_REPLY_HDR.unpack_from(payload)
        entry = self._reads.pop(rid, None)
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
        self.vol.counters.nr += len(data)
        fut.set_result(None)

    def _fail_remote_reads(self) -> None:
        reads, self._reads = self._reads, {}
        for _, fut in reads.values():
            if not fut.done():
                fut.set_exception(OSError(errno.EIO, f"volume {self.vol.name}: the link to the "
                                                     f"peer serving reads was lost"))

    def _on_out_of_sync(self, payload: memoryview) -> None:
        offset, length = wire.RS_ACK.unpack(payload)
        self.vol.mark_out_of_sync(offset, length)

    async def _on_state_change(self, payload: bytes) -> None:
        d = self._on_state(payload)
        self.pause_changed(notify=False)
        if d.get("resync_finished") and self.vol.state.conn in (ConnState.SyncSource,
                                                                ConnState.PausedSyncS):
            await self._finish_sync_source()
        elif d.get("renegotiate"):
            await self._decide()
        elif d.get("invalidate_request"):
            # invalidate-remote on the peer: become the target of a full sync, if we may.
            try:
                await self.vol.invalidate()
            except Exception as e:
                log.error("%s: invalidate requested by the peer refused: %s", self.vol.name, e)
        elif d.get("resize"):
            # The peer grows the volume: ours first, then we tell it (it grows then).
            size = int(d["resize"])
            try:
                if self.vol.state.conn != ConnState.Connected:
                    raise ValueError(f"not Connected ({self.vol.state.conn})")
                if self.vol.disk is not None and self.vol.disk.is_block:
                    raise ValueError("the backing store is a block device")
                await self.vol.grow(size)
            except Exception as e:
                log.error("%s: resize to %d bytes requested by the peer failed: %s",
                          self.vol.name, size, e)
                self._send_state(resize_failed=f"{self.cfg.node or 'peer'}: {e}")
            else:
                self._send_state(resized=size)
        elif d.get("resized") or d.get("resize_failed"):
            fut, self._resize_wait = self._resize_wait, None
            if fut is not None and not fut.done():
                if d.get("resized"):
                    await self.vol.grow(int(d["resized"]))
                    fut.set_result(None)
                else:
                    fut.set_exception(ValueError(str(d["resize_failed"])))
        elif d.get("adjust"):
            # The peer's `adjust` of a setting both sides must agree on: apply ours first,
            # then answer (it applies its own when the answer arrives). Refused while our
            # own adjust waits: both would end up with the other's values.
            try:
                if self._adjust_wait is not None:
                    raise ValueError("a concurrent adjust runs on this side")
                await self.vol.adjust(dict(d["adjust"]), from_peer=True)
            except Exception as e:
                log.error("%s: adjust requested by the peer refused: %s", self.vol.name, e)
                self._send_state(adjust_failed=f"{self.cfg.node or 'peer'}: {e}")
            else:
                self._send_state(adjusted=True)
        elif d.get("adjusted") or d.get("adjust_failed"):
            fut, self._adjust_wait = self._adjust_wait, None
            if fut is not None and not fut.done():
                if d.get("adjusted"):
                    fut.set_result(None)
                else:
                    fut.set_exception(ValueError(str(d["adjust_failed"])))
        elif d.get("verify") == "start" and self.vol.state.conn == ConnState.Connected:
            block = self.cfg.bm_block_size
            start = int(d.get("start", 0))
            self._begin_verify(source=False, start=start,
                               total=(self.vol.size + block - 1) // block - start // block)
        elif d.get("verify") in ("done", "stop") and self.verify is not None:
            self._end_verify(stopped=d["verify"] == "stop")

    # --- pause-sync / resume-sync ---------------------------------------------------------

    @property
    def sync_paused(self) -> bool:
        return self.vol.user_paused or self.peer_paused

    def pause_changed(self, *, notify: bool = True) -> None:
        """Map the pause flags onto the connection state and wake the resync puller."""
        vol = self.vol
        conn = vol.state.conn
        paused = self.sync_paused
        if paused and conn in (ConnState.SyncSource, ConnState.SyncTarget):
            vol.set_state(conn=ConnState.PausedSyncS if conn == ConnState.SyncSource
                          else ConnState.PausedSyncT)
        elif not paused and conn in (ConnState.PausedSyncS, ConnState.PausedSyncT):
            vol.set_state(conn=ConnState.SyncSource if conn == ConnState.PausedSyncS
                          else ConnState.SyncTarget)
        self._rs_slot.set()
        if notify and self._proto is not None and conn >= ConnState.Connected:
            with contextlib.suppress(ConnectionError):
                self._send_state()

    def request_peer_invalidate(self) -> None:
        """invalidate-remote: ask the peer to invalidate itself (it becomes SyncTarget)."""
        self._send_state(invalidate_request=True)

    # --- counters -------------------------------------------------------------------------

    def pending_count(self) -> int:
        """Requests sent to the peer and not answered yet (DRBD's `pe:`)."""
        return len(self._acks) + (self.resync.inflight if self.resync is not None else 0)

    def epochs_in_flight(self) -> int:
        """Epochs not yet barrier-acknowledged (DRBD's `ep:`)."""
        return len({e for _, _, e in self._tl.values()})

    def state_changed(self, *, renegotiate: bool = False) -> None:
        """Tell the peer about a local role/disk/UUID change (and maybe re-run the handshake)."""
        if self._proto is None or self.vol.state.conn < ConnState.Connected:
            return
        self._send_uuids()
        self._send_state(renegotiate=renegotiate)
        if renegotiate:
            self._spawn(self._decide_or_drop())

    async def _decide_or_drop(self) -> None:
        try:
            await self._decide()
        except _Fatal as e:
            log.error("%s: %s", self.vol.name, e)
            self.last_error = str(e)
            self.stopped = True
            if self._proto is not None:
                self._proto.close()

    # --- connection loss ----------------------------------------------------------------

    async def _connection_lost(self, reason: ConnState) -> None:
        vol = self.vol
        self._fail_remote_reads()
        if self._rs_task is not None:
            self._rs_task.cancel()
            self._rs_task = None
        for task in list(self._bg):
            task.cancel()
        # Everything not yet barrier-acked may be missing on the peer.
        for offset, length, _ in self._tl.values():
            vol.mark_out_of_sync(offset, length)
        lost = len(self._tl)
        self._tl.clear()
        # The local part of these writes succeeded: DRBD completes them successfully.
        # Under quorum fencing they wait for the peer to be back or fenced instead.
        waiting: list[Pending] = [f for f in self._acks.values() if not f.done()]
        waiting += [f for futs in self._barriers.values() for f in futs if not f.done()]
        self._acks.clear()
        self._barriers.clear()
        self._epoch_writes = 0
        self.resync = None
        self._end_verify(stopped=False, lost=True)
        if self._resize_wait is not None and not self._resize_wait.done():
            self._resize_wait.set_exception(ConnectionError("connection lost during resize"))
        if self._adjust_wait is not None and not self._adjust_wait.done():
            self._adjust_wait.set_exception(ConnectionError("connection lost during adjust"))
        self.peer_paused = False
        old = vol.state
        if old.disk == DiskState.Diskless:
            # no local data: nothing to mark or fence, but the link state must be true
            vol.set_state(conn=reason, peer=Role.Unknown, pdsk=DiskState.DUnknown)
            vol.hold_completions(waiting)
            return
        vol.set_state(conn=reason, peer=Role.Unknown, pdsk=DiskState.DUnknown)
        vol.hold_completions(waiting)
        if lost:
            log.info("%s: %d writes not acknowledged by a barrier marked out of sync",
                     vol.name, lost)
        assert vol.meta is not None
        if (old.role == Role.Primary and old.pdsk >= DiskState.Inconsistent
                and old.disk == DiskState.UpToDate and vol.meta.sb.gi.bitmap == 0):
            if vol.state.susp:
                # DRBD defers the new generation until fencing succeeded: if the peer
                # comes back instead, nothing diverged and no false split brain arises.
                vol.deferred_generation = True
                await vol.persist()
                return
            gi = vol.meta.sb.gi.new_current(vol.rand64, primary=True)
            log.info("%s: new current UUID %016X (peer lost)", vol.name, gi.current)
            await vol.persist(gi=gi)
        else:
            await vol.persist()

