"""A volume's failures: fencing the peer, being fenced, and local I/O errors.

Quorum and handler fencing (`peer_outdated`, `outdated_by_peer`,
`fence_peer`, `set_fencing`) and DRBD's on-io-error detach
(`local_io_error`: Failed, then Diskless, I/O served by the peer;
`reattach`). Functions of the `Volume` they act on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from binome.storage.replica.core import states
from binome.storage.replica.core.states import ConnState, DiskState, Fencing, MetaFlags, Role
from binome.storage.replica.engine.disk import LocalDisk
from binome.storage.replica.engine.meta import MetaError
from binome.storage.replica.engine.volume import io_path
from binome.storage.replica.engine.volume.errors import VolumeError

if TYPE_CHECKING:
    from binome.storage.replica.engine.volume.volume import Volume

log = logging.getLogger("binome.replica")

FENCE_PEER_CODES = {3: "peer is inconsistent", 4: "peer was fenced",
                    5: "peer is unreachable, assumed to be dead",
                    6: "peer is primary, will outdate myself", 7: "peer was stonithed"}


async def peer_outdated(vol: Volume, by: str = "") -> bool:
    """The peer's copy is recorded Outdated (fence-peer exit code 4): resume I/O.

    A no-op while connected (the peer's disk is known then). A Consistent
    local disk becomes UpToDate (DRBD: Consistent is trusted once the peer is
    known outdated), and a Primary that deferred its new generation at the
    link loss starts it now, before any write goes on without the peer.
    Returns whether anything changed.
    """
    s = vol.state
    if s.conn >= ConnState.Connected or vol.meta is None:
        return False
    gi = None
    if vol.deferred_generation and s.role == Role.Primary and vol.meta.sb.gi.bitmap == 0:
        gi = vol.meta.sb.gi.new_current(vol.rand64, primary=True)
        log.info("%s: new current UUID %016X (peer fenced)", vol.name, gi.current)
    vol.deferred_generation = False
    disk = DiskState.UpToDate if s.disk == DiskState.Consistent else s.disk
    pdsk = s.pdsk if s.pdsk == DiskState.Inconsistent else DiskState.Outdated
    vol.fenced_by = by or None
    log.info("%s: fence-peer: the peer's disk was recorded Outdated%s", vol.name,
             f" by {by}" if by else "")
    await vol.change_state(gi=gi, disk=disk, pdsk=pdsk)
    return True


async def outdated_by_peer(vol: Volume, by: str = "") -> None:
    """This copy was recorded Outdated by the peer (it fenced us first): stale from now.

    Writes held by the suspension fail with EIO, and so does any further
    I/O: a Primary without UpToDate data must not serve.
    """
    if vol.state.conn >= ConnState.Connected:
        raise states.refuse(states.SS_CONNECTED_OUTDATES)
    vol.fenced_by = by or None
    vol.deferred_generation = False
    io_path.release_held(vol, OSError(errno.EIO, f"volume {vol.name}: this copy was outdated "
                                          f"by {by or 'the peer'}"))
    log.warning("%s: this copy was recorded Outdated%s", vol.name,
                f" by {by}" if by else "")
    if vol.state.disk in (DiskState.Consistent, DiskState.UpToDate):
        await vol.change_state(disk=DiskState.Outdated)


async def fence_peer(vol: Volume) -> int:
    """Run the fence-peer handler and apply its exit code (DRBD's conn_try_outdate_peer).

    3: the peer's disk is Inconsistent; 4 (fenced), 7 (stonithed), and 5
    (unreachable, only with an UpToDate disk here): the peer is Outdated,
    I/O resumes; 6: the peer is Primary, this copy outdates itself; anything
    else: the handler is broken and nothing changes (resource-and-stonith
    stays suspended; `peer-outdated` is the administrator's way out).
    """
    result = await vol.run_handler("fence-peer")
    code = result.exit_code if result.configured else -1
    s = vol.state
    if s.conn >= ConnState.Connected or vol.meta is None:
        return code               # the peer came back meanwhile: nothing to fence
    what = FENCE_PEER_CODES.get(code)
    if what is None or (code == 5 and s.disk != DiskState.UpToDate):
        log.error("%s: fence-peer helper broken, returned %d", vol.name, code)
        return code
    log.info("%s: fence-peer helper returned %d (%s)", vol.name, code, what)
    if code == 6:
        await outdated_by_peer(vol, "the fence-peer handler (the peer is Primary)")
    elif code == 3:
        await peer_outdated(vol, "the fence-peer handler")
        await vol.change_state(pdsk=DiskState.Inconsistent)
    else:
        await peer_outdated(vol, "the fence-peer handler")
    return code


async def set_fencing(vol: Volume, fencing: str) -> None:
    """Change the fencing policy at run time (standalone mode: `dont-care`)."""
    Fencing(fencing)
    vol.config = replace(vol.config, fencing=fencing)
    vol.set_state()



def local_io_error(vol: Volume, what: str, exc: OSError) -> bool:
    """The backing store failed (`what`: read, write, flush): detach it.

    With `on_io_error detach` (the default) the disk goes Failed, then
    Diskless (`_detach_failed`), and every later request is served by the
    peer. Returns whether the failed request may be completed by the peer.
    Errors that say the request was wrong, not the disk, are not I/O errors.
    """
    if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    if vol.config.on_io_error != "detach":
        return False
    if vol._diskless_io:
        return io_path.peer_serves(vol)
    if vol._closing or vol.disk is None or vol.state.disk <= DiskState.Failed:
        return False            # going down, or not attached: not a disk failure
    vol._diskless_io = True
    log.error("%s: Local IO failed in %s: %s. Detaching...", vol.name, what, exc)
    vol.io_error = {"time": time.time(), "op": what, "backing": vol.config.backing,
                    "error": exc.strerror or str(exc),
                    "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    vol.set_state(disk=DiskState.Failed)
    vol._spawn_detached(detach_failed(vol))
    return io_path.peer_serves(vol)


async def detach_failed(vol: Volume) -> None:
    """Failed -> Diskless: release the backing store, remember a full sync is due."""
    vol.call_handler("local-io-error")
    disk = vol.disk
    assert disk is not None and vol.meta is not None
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
        await vol.persist(flags=vol.meta.sb.flags | MetaFlags.FULL_SYNC,
                           state=vol.state.with_(disk=DiskState.Diskless))
    except (OSError, MetaError) as e:
        log.error("%s: could not record the failed disk in the metadata: %s", vol.name, e)
    vol.set_state(disk=DiskState.Diskless)
    if vol.link is not None:
        vol.link.state_changed()


async def reattach(vol: Volume) -> None:
    """drbdadm attach after a failed disk was detached: a full sync from the peer.

    The backing store named in the config is opened again (the replaced disk);
    every block is out of sync and the disk Inconsistent, and the handshake
    is re-run so this side becomes the SyncTarget. Only a Secondary: a
    Primary cannot be a SyncTarget here.
    """
    assert vol.meta is not None and vol.bitmap is not None
    if not vol._diskless_io:
        raise VolumeError("EBUSY", f"{vol.name}: a disk is attached already")
    if vol.state.disk != DiskState.Diskless:
        raise VolumeError("EBUSY", f"{vol.name}: the failed disk is still being detached")
    if vol.state.role == Role.Primary:
        raise VolumeError("ESTATE", f"State change failed: (-15) {vol.name} is Primary: a "
                                    f"Primary cannot become SyncTarget here (demote first)")
    disk = LocalDisk(vol.config.backing, vol.config.size)
    try:
        await asyncio.to_thread(disk.open)
    except OSError as e:
        raise VolumeError("EIO", f"{vol.name}: backing store: {e}") from e
    vol.disk = disk
    vol._diskless_io = False
    vol.bitmap.set_all()
    await vol.write_bitmap()
    await vol.change_state(disk=DiskState.Inconsistent)
    # FULL_SYNC has done its job: every bit is set and on disk.
    await vol.persist(flags=vol.meta.sb.flags & ~MetaFlags.FULL_SYNC)
    log.info("%s: attached %s again: %d KiB out of sync", vol.name, vol.config.backing,
             vol.out_of_sync_kib())
    if vol.link is not None and vol.state.conn >= ConnState.Connected:
        vol.link.state_changed(renegotiate=True)
