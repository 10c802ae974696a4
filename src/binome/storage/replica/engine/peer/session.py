"""The link's session: handshake, decision, bitmap exchange, and P_STATE negotiation.

Owns steps 2-4 of `link`'s docstring (features, authentication, settings,
sizes, UUIDs, `handshake.sync_handshake`'s decision and the bitmap exchange
before a resync) and the state changes both sides negotiate once connected
(P_STATE: role/disk changes, resize, `adjust`, verify and pause notices).
Functions of the `PeerLink` whose session they run; the link's state stays
in the link.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import zlib
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core import auth, wire
from binome.storage.replica.core.handshake import (
    HandshakeInput,
    NetSettings,
    Policies,
    RrConflict,
    incompatible,
    split_brain_record,
    sync_handshake,
)
from binome.storage.replica.core.splitbrain import AfterSb
from binome.storage.replica.core.states import ConnState, DiskState, Role
from binome.storage.replica.core.uuids import GenerationIds, Side, UuidFlags
from binome.storage.replica.core.wire import P
from binome.storage.replica.engine.peer import resync, verify
from binome.storage.replica.engine.peer.common import (
    BITMAP_CHUNK,
    HANDSHAKE_TIMEOUT,
    Fatal,
)

if TYPE_CHECKING:
    from binome.storage.replica.engine.peer.link import PeerLink

log = logging.getLogger("binome.replica.peer")


async def run_session(link: PeerLink) -> None:
    vol, cfg = link.vol, link.cfg
    link._peer_applied = 0
    vol.set_state(conn=ConnState.WFReportParams)
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        link._send(wire.json_packet(P.CONNECTION_FEATURES, {
            "version": wire.PROTOCOL_VERSION, "volume": vol.name, "node": cfg.node}))
        feats = wire.parse_json(await link._expect(P.CONNECTION_FEATURES))
        if feats.get("volume") != vol.name:
            raise Fatal(f"peer serves volume {feats.get('volume')!r}, not {vol.name!r}")
        if feats.get("version") != wire.PROTOCOL_VERSION:
            # Packet layouts differ between versions (P_DATA grew in 2): never mix
            # them. A protocol error, not StandAlone: the link retries, and connects
            # once both engines run the same version (a rolling upgrade).
            raise wire.WireError(f"incompatible protocol version: peer "
                                 f"{feats.get('version')}, mine {wire.PROTOCOL_VERSION}")
        mine = auth.challenge()
        link._send(wire.packet(P.AUTH_CHALLENGE, mine))
        theirs = await link._expect(P.AUTH_CHALLENGE)
        link._send(wire.packet(P.AUTH_RESPONSE, auth.response(cfg.secret, theirs, mine)))
        auth.verify(cfg.secret, mine, await link._expect(P.AUTH_RESPONSE))
        log.info("%s: Peer authenticated using %d bytes HMAC", vol.name, len(mine))
        link._send(wire.json_packet(P.PROTOCOL, {
            "protocol": cfg.protocol, "after_sb_0pri": link.settings.after_sb_0pri.value,
            "after_sb_1pri": link.settings.after_sb_1pri.value,
            "after_sb_2pri": link.settings.after_sb_2pri.value,
            "allow_two_primaries": cfg.allow_two_primaries,
            "discard_my_data": link.discard_my_data, "verify_alg": cfg.verify_alg,
            "csums_alg": cfg.csums_alg}))
        peer_settings = parse_settings(await link._expect(P.PROTOCOL))
        problem = incompatible(link.settings, peer_settings)
        if problem:
            raise Fatal(problem)
        link.peer_discard = peer_settings.discard_my_data
        link._send(wire.json_packet(P.SIZES, {"size": vol.size}))
        link.send_uuids()
        link.send_state()
        size = wire.parse_json(await link._expect(P.SIZES)).get("size")
        on_uuids(link, await link._expect(P.UUIDS))
        on_state(link, await link._expect(P.STATE), during_handshake=True)
        if size != vol.size:
            raise Fatal(f"The peer's disk size differs (peer {size} bytes, "
                         f"mine {vol.size} bytes)")
    log.info("%s: Handshake successful: Agreed network protocol version %d", vol.name,
             wire.PROTOCOL_VERSION)
    await decide(link)
    link.discard_my_data = False       # one connect only, as drbdadm's flag
    await link._receive_loop()


def parse_settings(payload: bytes) -> NetSettings:
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


def on_uuids(link: PeerLink, payload: bytes | memoryview) -> None:
    d = wire.parse_json(payload)
    try:
        link.peer_gi = GenerationIds.from_list([int(x) for x in d["gi"]])
        link.peer_bits = int(d["bits"])
        link.peer_flags = UuidFlags(int(d["flags"]))
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise wire.WireError(f"bad P_UUIDS: {e}") from None


def on_state(link: PeerLink, payload: bytes, *, during_handshake: bool = False) -> dict[str, Any]:
    d = wire.parse_json(payload)
    try:
        link.peer_role = Role[d["role"]]
        link.peer_disk = DiskState[d["disk"]]
    except KeyError as e:
        raise wire.WireError(f"bad P_STATE: {e}") from None
    link.peer_paused = bool(d.get("paused"))
    if not during_handshake:
        link.vol.set_state(peer=link.peer_role,
                           pdsk=link.peer_disk if link.vol.state.conn >= ConnState.Connected
                           else link.vol.state.pdsk)
    return d


async def decide(link: PeerLink) -> None:
    """Run the sync handshake and enter its outcome (drbd_sync_handshake + after)."""
    link._deciding = True
    try:
        await decide_now(link)
    finally:
        link._deciding = False
    early, link._early_bitmap = link._early_bitmap, []
    for payload in early:
        await on_bitmap(link, payload)


async def decide_now(link: PeerLink) -> None:
    vol = link.vol
    assert vol.meta is not None and vol.bitmap is not None
    cfg = link.cfg
    me = Side(vol.meta.sb.gi, vol.state.role == Role.Primary, vol.crashed_primary)
    peer = Side(link.peer_gi, link.peer_role == Role.Primary,
                bool(link.peer_flags & UuidFlags.CRASHED_PRIMARY))
    log.info("%s: drbd_sync_handshake:", vol.name)
    log.info("%s: self %s bits:%d flags:0", vol.name, me.gi, vol.bitmap.weight)
    log.info("%s: peer %s bits:%d flags:%X", vol.name, peer.gi, link.peer_bits,
             int(link.peer_flags))
    out = sync_handshake(HandshakeInput(
        me=me, peer=peer, my_disk=vol.state.disk, peer_disk=link.peer_disk,
        my_changes=vol.bitmap.weight, peer_changes=link.peer_bits,
        resolve_conflicts=link.resolve_conflicts, discard_my_data=link.discard_my_data,
        peer_discard_my_data=bool(link.peer_flags & UuidFlags.DISCARD_MY_DATA),
        policies=Policies(link.settings.after_sb_0pri, link.settings.after_sb_1pri,
                          link.settings.after_sb_2pri, cfg.always_asbp,
                          RrConflict(cfg.rr_conflict)),
        can_demote=vol.open_count == 0, dry_run=link.dry_run))
    for line in out.log:
        log.info("%s: %s", vol.name, line)
    if not link.dry_run:
        vol.split_brain = split_brain_record(
            vol.split_brain, out, me=vol.config.node, peer=vol.config.peer_node,
            me_primary=me.primary, peer_primary=peer.primary, now=time.time())
    for handler in out.handlers:
        vol.call_handler(handler)       # handlers.py; nobody waits for these
    if out.comparison.self_gi != me.gi:
        await vol.persist(gi=out.comparison.self_gi)
    if out.comparison.peer_gi != peer.gi:
        link.peer_gi = out.comparison.peer_gi
    if out.demote:
        await vol.demote()
    if out.conn is None:
        raise Fatal(out.log[-1] if out.log else "handshake failed")
    vol.deferred_generation = False    # the peer is back: nothing to fence
    if out.conn == ConnState.Connected:
        # Connected without resync: Consistent/Outdated disks are UpToDate now.
        disk = vol.state.disk
        if disk in (DiskState.Consistent, DiskState.Outdated):
            disk = DiskState.UpToDate
        pdsk = link.peer_disk
        if pdsk in (DiskState.Consistent, DiskState.Outdated):
            pdsk = DiskState.UpToDate
        await vol.change_state(conn=ConnState.Connected, disk=disk, pdsk=pdsk,
                               peer=link.peer_role)
        return
    if out.full_sync:
        vol.bitmap.set_all()
    source = out.conn == ConnState.WFBitMapS
    await vol.change_state(conn=out.conn, peer=link.peer_role,
                           disk=vol.state.disk if source else DiskState.Inconsistent,
                           pdsk=DiskState.Inconsistent if source else link.peer_disk)
    link._bm_sent = link._bm_received = False
    send_bitmap(link)


def send_bitmap(link: PeerLink) -> None:
    bm = link.vol.bitmap
    assert bm is not None
    raw = bm.to_bytes()
    offsets = range(0, max(len(raw), 1), BITMAP_CHUNK)
    for i, off in enumerate(offsets):
        chunk = zlib.compress(raw[off:off + BITMAP_CHUNK], 1)
        last = i == len(offsets) - 1
        link._send(wire.packet(P.BITMAP, wire.BITMAP_HDR.pack(off, int(last)) + chunk))
        link.vol.counters.ns += len(chunk)
    link._bm_sent = True


async def on_bitmap(link: PeerLink, payload: bytes) -> None:
    vol = link.vol
    assert vol.bitmap is not None and vol.meta is not None
    if vol.state.conn not in (ConnState.WFBitMapS, ConnState.WFBitMapT):
        if link._deciding:
            # The peer decided first (renegotiation): keep its bitmap for a moment.
            link._early_bitmap.append(payload)
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
    link._bm_received = True
    await vol.write_bitmap()
    if vol.state.conn == ConnState.WFBitMapS:
        await resync.start_sync_source(link)
    else:
        vol.set_state(conn=ConnState.WFSyncUUID)


async def on_state_change(link: PeerLink, payload: bytes) -> None:
    d = on_state(link, payload)
    resync.pause_changed(link, notify=False)
    if d.get("resync_finished") and link.vol.state.conn in (ConnState.SyncSource,
                                                            ConnState.PausedSyncS):
        await resync.finish_sync_source(link)
    elif d.get("renegotiate"):
        await decide(link)
    elif d.get("invalidate_request"):
        # invalidate-remote on the peer: become the target of a full sync, if we may.
        try:
            await link.vol.invalidate()
        except Exception as e:
            log.error("%s: invalidate requested by the peer refused: %s", link.vol.name, e)
    elif d.get("resize"):
        # The peer grows the volume: ours first, then we tell it (it grows then).
        size = int(d["resize"])
        try:
            if link.vol.state.conn != ConnState.Connected:
                raise ValueError(f"not Connected ({link.vol.state.conn})")
            if link.vol.disk is not None and link.vol.disk.is_block:
                raise ValueError("the backing store is a block device")
            await link.vol.grow(size)
        except Exception as e:
            log.error("%s: resize to %d bytes requested by the peer failed: %s",
                      link.vol.name, size, e)
            link.send_state(resize_failed=f"{link.cfg.node or 'peer'}: {e}")
        else:
            link.send_state(resized=size)
    elif d.get("resized") or d.get("resize_failed"):
        fut, link._resize_wait = link._resize_wait, None
        if fut is not None and not fut.done():
            if d.get("resized"):
                await link.vol.grow(int(d["resized"]))
                fut.set_result(None)
            else:
                fut.set_exception(ValueError(str(d["resize_failed"])))
    elif d.get("adjust"):
        # The peer's `adjust` of a setting both sides must agree on: apply ours first,
        # then answer (it applies its own when the answer arrives). Refused while our
        # own adjust waits: both would end up with the other's values.
        try:
            if link._adjust_wait is not None:
                raise ValueError("a concurrent adjust runs on this side")
            await link.vol.adjust(dict(d["adjust"]), from_peer=True)
        except Exception as e:
            log.error("%s: adjust requested by the peer refused: %s", link.vol.name, e)
            link.send_state(adjust_failed=f"{link.cfg.node or 'peer'}: {e}")
        else:
            link.send_state(adjusted=True)
    elif d.get("adjusted") or d.get("adjust_failed"):
        fut, link._adjust_wait = link._adjust_wait, None
        if fut is not None and not fut.done():
            if d.get("adjusted"):
                fut.set_result(None)
            else:
                fut.set_exception(ValueError(str(d["adjust_failed"])))
    elif d.get("verify") == "start" and link.vol.state.conn == ConnState.Connected:
        block = link.cfg.bm_block_size
        start = int(d.get("start", 0))
        verify.begin_verify(link, source=False, start=start,
                           total=(link.vol.size + block - 1) // block - start // block)
    elif d.get("verify") in ("done", "stop") and link.verify is not None:
        verify.end_verify(link, stopped=d["verify"] == "stop")


async def request_resize(link: PeerLink, size: int) -> None:
    """Ask the peer to grow its copy; ours grows when it answers (`_on_state_change`)."""
    if link._resize_wait is not None:
        raise ValueError("a resize is already running")
    fut = asyncio.get_running_loop().create_future()
    link._resize_wait = fut
    try:
        link.send_state(resize=size)
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            await fut
    finally:
        if link._resize_wait is fut:
            link._resize_wait = None


def apply_config(link: PeerLink, cfg: Any) -> None:
    """Settings changed by `adjust` (Volume.adjust): used from the next write, request
    or handshake on. The protocol travels with each write (DP_SEND_*_ACK)."""
    link.cfg = cfg
    link.settings = dataclasses.replace(
        link.settings, protocol=cfg.protocol, allow_two_primaries=cfg.allow_two_primaries,
        verify_alg=cfg.verify_alg, csums_alg=cfg.csums_alg)
    link.rate = cfg.rate_settings()


def adjusting(link: PeerLink) -> bool:
    return link._adjust_wait is not None


async def request_adjust(link: PeerLink, shared: dict[str, Any]) -> None:
    """Ask the peer to apply the settings both sides must agree on; raises ValueError
    with the peer's reason when it refuses. Ours are applied by the caller after."""
    if link._adjust_wait is not None:
        raise ValueError("an adjust is already running")
    fut = asyncio.get_running_loop().create_future()
    link._adjust_wait = fut
    try:
        link.send_state(adjust=shared)
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            await fut
    finally:
        if link._adjust_wait is fut:
            link._adjust_wait = None


async def decide_or_drop(link: PeerLink) -> None:
    try:
        await decide(link)
    except Fatal as e:
        log.error("%s: %s", link.vol.name, e)
        link.last_error = str(e)
        link.stopped = True
        if link._proto is not None:
            link._proto.close()
