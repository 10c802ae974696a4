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

This module owns the connection (connect/accept, keepalive, packet I/O, the
receive loop's dispatch, connection loss) and the link's state. Each concern
is a module of functions taking the `PeerLink`: `session` (steps 2-4 and
P_STATE), `replication` (5, and remote reads), `resync` (6, pause-sync),
`verify` (7); `common` holds their shared limits. The volume sees only the
public methods below (each an alias of its concern's function).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core import auth, wire
from binome.storage.replica.core.config import split_address
from binome.storage.replica.core.handshake import (
    NetSettings,
)
from binome.storage.replica.core.splitbrain import AfterSb, parse_policy
from binome.storage.replica.core.states import ConnState, DiskState, Role
from binome.storage.replica.core.uuids import GenerationIds, UuidFlags
from binome.storage.replica.core.wire import P
from binome.storage.replica.engine.completion import Completion, Pending
from binome.storage.replica.engine.peer import replication, resync, session, verify
from binome.storage.replica.engine.peer.common import Fatal
from binome.storage.replica.engine.peer.resync import Resync
from binome.storage.replica.engine.peer.transport import PeerProtocol

if TYPE_CHECKING:
    from binome.storage.replica.engine.volume.volume import Volume

log = logging.getLogger("binome.replica.peer")

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
        self.peer_discard = False          # the peer's discard-my-data setting (P_PROTOCOL)
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
                await session.run_session(self)
                reason = ConnState.TearDown
            except Fatal as e:
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

    # --- what every concern tells the peer: our UUIDs and our state --------------------

    def uuid_flags(self) -> UuidFlags:
        f = UuidFlags(0)
        if self.discard_my_data:
            f |= UuidFlags.DISCARD_MY_DATA
        if self.vol.crashed_primary:
            f |= UuidFlags.CRASHED_PRIMARY
        if self.vol.state.disk == DiskState.Inconsistent:
            f |= UuidFlags.INCONSISTENT
        return f


    def send_uuids(self) -> None:
        assert self.vol.meta is not None and self.vol.bitmap is not None
        self._send(wire.json_packet(P.UUIDS, {
            "gi": self.vol.meta.sb.gi.to_list(), "bits": self.vol.bitmap.weight,
            "flags": int(self.uuid_flags())}))


    def send_state(self, **extra: Any) -> None:
        s = self.vol.state
        self._send(wire.json_packet(P.STATE, {"role": s.role.name, "disk": s.disk.name,
                                              "paused": self.vol.user_paused, **extra}))

    # --- the interface the volume uses; each is implemented in the module of its concern --

    request_resize = session.request_resize
    apply_config = session.apply_config
    request_adjust = session.request_adjust
    start_verify = verify.start_verify
    stop_verify = verify.stop_verify
    send_out_of_sync = replication.send_out_of_sync
    send_write = replication.send_write
    send_barrier = replication.send_barrier
    read_remote = replication.read_remote
    pause_changed = resync.pause_changed
    request_peer_invalidate = resync.request_peer_invalidate

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

        def bind(fn: Callable[..., Any]) -> Any:
            return functools.partial(fn, self)
        sync_handlers: dict[P, Callable[[memoryview], None]] = {
            P.DATA: bind(replication.on_data),
            P.WRITE_ACK: bind(replication.on_ack), P.RECV_ACK: bind(replication.on_ack),
            P.NEG_ACK: bind(replication.on_neg_ack),
            P.BARRIER_ACK: bind(replication.on_barrier_ack),
            P.BARRIER: bind(replication.on_barrier),
            P.RS_DATA_REQUEST: bind(resync.on_rs_request),
            P.RS_DATA_REPLY: bind(resync.on_rs_reply),
            P.RS_WRITE_ACK: bind(resync.on_rs_ack), P.UUIDS: bind(session.on_uuids),
            P.PING: lambda _: self._send(wire.packet(P.PING_ACK)), P.PING_ACK: lambda _: None,
            P.OUT_OF_SYNC: bind(replication.on_out_of_sync),
            P.CSUM_RS_REQUEST: bind(resync.on_csum_rs_request),
            P.RS_CSUM_REPLY: bind(resync.on_rs_csum_reply),
            P.OV_REQUEST: bind(verify.on_ov_request), P.OV_REPLY: bind(verify.on_ov_reply),
            P.DATA_REQUEST: bind(replication.on_data_request),
            P.DATA_REPLY: bind(replication.on_data_reply),
        }
        # These change states and metadata: the packets after them wait until they are done.
        async_handlers: dict[P, Callable[[bytes], Awaitable[None]]] = {
            P.BITMAP: bind(session.on_bitmap), P.SYNC_UUID: bind(resync.on_sync_uuid),
            P.STATE: bind(session.on_state_change)}

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

    @property
    def is_connected(self) -> bool:
        """A session with the peer is up now (what a Diskless Primary's I/O needs)."""
        return self._proto is not None

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
        self.send_uuids()
        self.send_state(renegotiate=renegotiate)
        if renegotiate:
            self._spawn(session.decide_or_drop(self))


    # --- connection loss ----------------------------------------------------------------

    async def _connection_lost(self, reason: ConnState) -> None:
        vol = self.vol
        replication.fail_remote_reads(self)
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
        verify.end_verify(self, stopped=False, lost=True)
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

