"""A volume's administrative operations: invalidate, resize/grow, adjust, verify, pause-sync.

What `drbdadm invalidate`, `invalidate-remote`, `resize`, `adjust`, `verify`
and `pause-sync` do to one volume: checks, state changes and the requests
they hand to the peer link. Functions of the `Volume` they act on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core.config import (
    ADJUSTABLE,
    LOCAL_OPTIONS,
    SHARED_OPTIONS,
    ConfigError,
    VolumeConfig,
)
from binome.storage.replica.core.states import ConnState, DiskState, Role
from binome.storage.replica.engine.config_file import save_config
from binome.storage.replica.engine.volume.errors import VolumeError

if TYPE_CHECKING:
    from binome.storage.replica.engine.volume.volume import Volume

log = logging.getLogger("binome.replica")

async def invalidate(vol: Volume) -> None:
    """Full sync from the peer (drbdadm invalidate): every block becomes out of sync.

    Connected: this side turns Inconsistent and the handshake is re-run, so
    it becomes the SyncTarget of a resync covering every block. Disconnected:
    only a Secondary may, and the resync happens at the next connection.
    """
    assert vol.bitmap is not None
    s = vol.state
    connected = s.conn >= ConnState.Connected
    if s.role == Role.Primary:
        raise VolumeError("ESTATE", f"State change failed: (-15) {vol.name} is Primary: a "
                                    f"Primary cannot become SyncTarget here")
    if connected and s.conn != ConnState.Connected:
        raise VolumeError("ESTATE", f"{vol.name}: a resync is already running ({s.conn})")
    if connected and s.pdsk != DiskState.UpToDate:
        raise VolumeError("ESTATE", "State change failed: (-2) Need access to UpToDate data")
    vol.bitmap.set_all()
    await vol.write_bitmap()
    await vol.change_state(disk=DiskState.Inconsistent)
    log.info("%s: invalidated: %d KiB out of sync", vol.name, vol.out_of_sync_kib())
    if connected and vol.link is not None:
        vol.link.state_changed(renegotiate=True)


async def resize(vol: Volume, size: int, *, assume_peer_has_space: bool = False) -> None:
    """Grow the volume (drbdadm resize): the peer's copy first, then this one.

    Connected: the peer grows its copy and answers; this side grows when
    the answer arrives (in the packet handler: no peer write beyond the old
    end can be handled before). Without a connection only with
    `assume_peer_has_space` (DRBD's flag): each side is then grown alone
    and the next handshake checks the sizes. Shrinking is refused.
    """
    s = vol.state
    if vol.disk is None or vol.meta is None:
        raise VolumeError("ESTATE", f"{vol.name}: not attached")
    if size < vol.size:
        raise VolumeError("EINVAL", f"{vol.name}: shrinking a volume is not supported "
                                    f"({vol.size} -> {size} bytes)")
    if size % 4096:
        raise VolumeError("EINVAL", "size must be a multiple of 4096 bytes")
    if size == vol.size:
        return
    if vol.disk.is_block:
        raise VolumeError("EINVAL", f"{vol.name}: the backing store is a block device; "
                                    f"growing it is not supported here")
    if vol.link is not None and not assume_peer_has_space:
        if s.conn != ConnState.Connected:
            raise VolumeError("ESTATE", f"{vol.name}: resize needs a Connected peer (now "
                                        f"{s.conn}) or assume_peer_has_space")
        try:
            await vol.link.request_resize(size)
        except (ValueError, ConnectionError, TimeoutError) as e:
            raise VolumeError("EIO", f"{vol.name}: resize failed: {e}") from None
        return
    if vol.link is not None and s.conn >= ConnState.Connected:
        raise VolumeError("ESTATE", f"{vol.name}: Connected: the peer grows too; "
                                    f"resize without assume_peer_has_space")
    await grow(vol, size)


def check_adjust(vol: Volume, new: VolumeConfig, diff: dict[str, list[Any]]) -> None:
    """DRBD's rules for what may change now (drbd_nl.c `_check_net_options`); raises
    VolumeError("ESTATE", "<setting>: reason") naming the refused setting."""
    s = vol.state
    link = vol.link
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


async def adjust(vol: Volume, changes: dict[str, Any], *, dry_run: bool = False,
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
    old = vol.config
    try:
        new = old.adjusted(changes)
    except ConfigError as e:
        raise VolumeError("EINVAL", str(e)) from None
    diff = {k: [getattr(old, k), getattr(new, k)] for k in ADJUSTABLE
            if getattr(old, k) != getattr(new, k)}
    if not diff:
        return {}
    check_adjust(vol, new, diff)
    if dry_run:
        return diff
    link = vol.link
    shared = {k: getattr(new, k) for k in diff if k in SHARED_OPTIONS}
    if (shared and not from_peer and link is not None and not link.stopped
            and vol.state.conn >= ConnState.Connected):
        try:
            await link.request_adjust(shared)
        except (ValueError, ConnectionError, TimeoutError) as e:
            raise VolumeError("ESTATE", f"{next(iter(shared))}: the peer refused the "
                                        f"change: {e}") from None
        # The peer applied it; ours must follow whatever changed here meanwhile.
        new = replace(vol.config, **shared, **{k: getattr(new, k) for k in diff
                                                 if k in LOCAL_OPTIONS})
    else:
        new = replace(vol.config, **{k: getattr(new, k) for k in diff})
    vol.config = new
    if vol.link is not None:
        vol.link.apply_config(new)
    await asyncio.to_thread(save_config, new, Path(vol.conf_path))
    log.info("%s: adjusted%s: %s", vol.name, " by the peer" if from_peer else "",
             ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
    link = vol.link
    if (shared and not from_peer and link is not None and link.stopped
            and "incompatible" in (link.last_error or "")):
        await vol.connect()
    if vol.on_change is not None:
        vol.on_change(vol)
    return diff


async def grow(vol: Volume, size: int) -> None:
    """Grow this copy: backing file, then volume.json, then the metadata (commit point).

    The new area reads as zeroes on both copies (sparse files), so it is in
    sync: no bits are set. NBD clients connecting from now on see the new
    size; connected ones keep the size they negotiated.
    """
    assert vol.disk is not None and vol.meta is not None
    old = vol.size
    if size <= old:
        return
    os.ftruncate(vol.disk.fd, size)
    await asyncio.to_thread(os.fsync, vol.disk.fd)
    vol.config = replace(vol.config, size=size)
    await asyncio.to_thread(save_config, vol.config, Path(vol.conf_path))
    async with vol._meta_lock:
        # Inline: the bitmap grows in place while no other code can touch it.
        vol.meta.grow(size)
    vol.disk.size = size
    vol.size = size
    log.info("%s: size changed from %d to %d bytes", vol.name, old, size)
    if vol.on_change is not None:
        vol.on_change(vol)


async def invalidate_remote(vol: Volume) -> None:
    """Full sync to the peer (drbdadm invalidate-remote); needs a connected peer."""
    s = vol.state
    if vol.link is None or s.conn != ConnState.Connected:
        raise VolumeError("ESTATE", f"{vol.name}: invalidate-remote needs a Connected "
                                    f"peer (now {s.conn})")
    if s.disk != DiskState.UpToDate:
        raise VolumeError("ESTATE", "State change failed: (-2) Need access to UpToDate data")
    if s.peer == Role.Primary:
        raise VolumeError("ESTATE", f"State change failed: (-15) the peer of {vol.name} "
                                    f"is Primary")
    vol.link.request_peer_invalidate()


def verify(vol: Volume, start: int = 0) -> None:
    """Online verify (drbdadm verify): compare every block with the peer's copy."""
    if vol.link is None:
        raise VolumeError("ESTATE", f"{vol.name}: online verify needs a connected peer")
    try:
        vol.link.start_verify(start)
    except ValueError as e:
        raise VolumeError("ESTATE", f"{vol.name}: {e}") from None


def verify_stop(vol: Volume) -> None:
    if vol.link is None:
        raise VolumeError("ESTATE", f"{vol.name}: no online verify is running")
    try:
        vol.link.stop_verify()
    except ValueError as e:
        raise VolumeError("ESTATE", f"{vol.name}: {e}") from None


def pause_sync(vol: Volume, paused: bool) -> None:
    """pause-sync / resume-sync: the user flag; the link maps it onto the states."""
    vol.user_paused = paused
    if vol.link is not None:
        vol.link.pause_changed()
