"""The daemon's view of its engine's events: following them, publishing the volumes' states.

Follows the engine's event stream (`watch_events`, reconnecting), turns each
event into what `VolumeService` acts on (a suspended Primary starts quorum
fencing; a finished verify is logged to the cluster log) and publishes each
volume's state under `/binome/volumes/<vol>/state/<node>`, bursts coalesced.
Functions of the `VolumeService` whose engine they follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core.states import ConnState
from binome.storage.replica.engine import control
from binome.storage.replica.node import fencing, supervisor
from binome.storage.replica.node.errors import VolumeFailure
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.storage.replica.node.volumes import VolumeService

log = logging.getLogger("binome.volumes")

PUBLISH_COALESCE = 0.2
PUBLISHED = ("role", "peer_role", "cstate", "disk", "peer_disk", "suspended", "gi",
             "fenced_by", "fencing", "out_of_sync_kib", "crashed_primary", "open_count",
             "verify", "split_brain")


async def watch_events(svc: VolumeService, h: supervisor.EngineHandle) -> None:
    """Follow the engine's state changes; notice when the engine goes away."""
    client: control.ControlClient | None = None
    try:
        client = await control.ControlClient.connect(h.control)
        async for event in client.stream("events"):
            on_event(svc, event)
    except (OSError, ConnectionError, ValueError, control.ControlError) as exc:
        log.debug("engine event stream: %s", exc)
    finally:
        if client is not None:
            await client.close()
    if await supervisor.ping(h.control) is None:
        log.warning("volume engine (pid %d) is gone", h.pid)
        if h.process is not None:
            h.process.poll()           # reap it if it was our child
        if svc.handle is h:
            svc.handle = None
            svc.statuses.clear()
    if svc._watcher is asyncio.current_task():
        svc._watcher = None
    svc._wake.set()                  # the reconcile loop restarts it when needed


async def engine_events(svc: VolumeService) -> AsyncIterator[dict[str, Any]]:
    """The engine's event stream for one subscriber (the API's volume events).

    No engine is started for it: on a node without volumes (no engine) this
    raises VolumeFailure. The stream ends when the engine goes away.
    """
    h = svc.handle
    if h is None or await supervisor.ping(h.control) is None:
        raise VolumeFailure("no volume engine runs on this node (it has no volumes)")
    client = await control.ControlClient.connect(h.control)
    try:
        async for event in client.stream("events"):
            yield event
    except (OSError, ConnectionError, ValueError, control.ControlError) as exc:
        log.debug("engine event stream (API subscriber): %s", exc)
    finally:
        await client.close()


def on_event(svc: VolumeService, event: dict[str, Any]) -> None:
    name = event.get("name")
    if not isinstance(name, str):
        return
    if event.get("event") == "down":
        svc.statuses.pop(name, None)
        queue_publish(svc, name, {"up": False, "cstate": "Unconfigured"})
        return
    st = event.get("status")
    if not isinstance(st, dict):
        return
    svc.statuses[name] = st
    queue_publish(svc, name, {"up": True, **{k: st.get(k) for k in PUBLISHED}})
    notify_replication(svc, name, st)
    notify_split_brain(svc, name, st)
    notify_disk(svc, name, st)
    ver = st.get("verify")
    if (event.get("event") == "change" and isinstance(ver, dict)
            and ver.get("role") == "VerifyS" and st.get("cstate") != "VerifyS"
            and svc._verify_logged.get(name) != ver.get("time")):
        # An online verify started here ended: its outcome goes to the cluster log.
        svc._verify_logged[name] = ver.get("time")
        task = asyncio.ensure_future(log_verify(svc, name, ver))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    if st.get("fence") == "needed":
        fencing.start_fencing(svc, name)


_SENDING = ("SyncSource", "PausedSyncS")

# The first state after Connected says why the link went (DRBD's connection states).
DISCONNECT_REASONS = {
    "Disconnecting": "disconnected by an administrator ('binome volume disconnect') or "
                     "dropped by a handshake that refused the peer; see the node log",
    "StandAlone": "disconnected by an administrator or refused by a handshake; see the "
                  "node log",
    "NetworkFailure": "network failure",
    "BrokenPipe": "the connection broke (broken pipe)",
    "Timeout": "the peer stopped answering (timeout)",
    "ProtocolError": "a protocol error on the replication link; see the node log",
    "TearDown": "the peer closed the connection (its engine stopped or disconnected)",
    "Unconnected": "the connection was lost",
}


def _connected(cstate: str) -> bool:
    state = ConnState.__members__.get(cstate)
    return state is not None and state >= ConnState.Connected


def notify_replication(svc: VolumeService, name: str, st: dict[str, Any]) -> None:
    """Notifications of a volume's connection changes, each sent by one node only: a
    disconnect by the node whose copy is Primary (the copy in use, which goes on alone;
    none while no copy is Primary), a resync by the node sending it (SyncSource)."""
    cstate = str(st.get("cstate") or "StandAlone")
    before, started = svc.replication.get(name, ("", None))
    if cstate == before:
        return
    if not before:   # first sight (daemon start): a state, not a change; nothing to say
        svc.replication[name] = (cstate, time.monotonic() if cstate in _SENDING else None)
        return
    peer = str(st.get("peer_node") or "peer")
    if _connected(before) and not _connected(cstate) \
            and st.get("role") == "Primary":
        svc.notify("replication-disconnected", volume=name, peer=peer,
                   reason=f"{cstate}: {DISCONNECT_REASONS.get(cstate, 'connection lost')}")
    if cstate in _SENDING and before not in _SENDING:
        started = time.monotonic()
        svc.notify("resync-started", volume=name, peer=peer,
                   out_of_sync_bytes=int(st.get("out_of_sync_kib") or 0) * 1024)
    elif before in _SENDING and cstate not in _SENDING:
        if cstate == "Connected" and started is not None:
            svc.notify("resync-done", volume=name, peer=peer,
                       duration=round(time.monotonic() - started, 1))
        started = None
    svc.replication[name] = (cstate, started)


_RESYNCING_OR_IN_SYNC = ("SyncSource", "PausedSyncS", "Connected")


def _new_record(seen: dict[str, Any], name: str, key: Any) -> bool:
    """Whether the engine's record `key` of volume `name` is one to speak of: not the first
    sight of the volume (a record there at daemon start is a state: remembered, not
    said), and not the record already seen. The caller remembers it once handled."""
    if name not in seen:
        seen[name] = key
        return False
    return key is not None and seen[name] != key


def notify_split_brain(svc: VolumeService, name: str, st: dict[str, Any]) -> None:
    """A split brain found, and its end, from the engine's record
    (`handshake.split_brain_record`), each said by one node: a detection by the record's
    `reporter` (the same name on both nodes), a resolution by the survivor once it sends
    the resync (a resolution the victim then refused never reaches that state). A record
    seen at daemon start is a state, not a change: nothing is said."""
    rec = st.get("split_brain")
    key = None if not isinstance(rec, dict) else \
        (rec.get("state"), rec.get("time"), rec.get("resolved_time"))
    if not _new_record(svc.split_brains, name, key):
        return
    assert isinstance(rec, dict)
    peer = str(st.get("peer_node") or "peer")
    if rec.get("state") == "detected":
        svc.split_brains[name] = key
        if rec.get("reporter") == svc.node:
            svc.notify("split-brain-detected", volume=name, peer=peer,
                       policy=str(rec.get("policy")),
                       primaries=", ".join(rec.get("primaries") or []) or "none")
    elif rec.get("state") == "resolved":
        if rec.get("survivor") != svc.node:
            svc.split_brains[name] = key
        elif str(st.get("cstate")) in _RESYNCING_OR_IN_SYNC:
            svc.split_brains[name] = key
            svc.notify("split-brain-resolved", volume=name, policy=str(rec.get("policy")),
                       victim=str(rec.get("victim")), peer=peer)


def notify_disk(svc: VolumeService, name: str, st: dict[str, Any]) -> None:
    """The local disk failed, said by the node whose disk failed, once per failure: from
    the engine's record of the I/O error that detached it (`io_error`, set as the disk
    goes Failed, then Diskless; a clean detach sets none). The record, not the transient
    Failed state, so an event stream that reconnected meanwhile (a lagging reader is
    dropped) still sees it. A record seen at first sight (daemon start) is a state, not a
    change: nothing is said."""
    rec = st.get("io_error")
    key = rec.get("time") if isinstance(rec, dict) else None
    if not _new_record(svc.disks, name, key):
        return
    assert isinstance(rec, dict)
    svc.disks[name] = key
    what = {"read": "a read", "write": "a write", "flush": "a flush (fdatasync)"}.get(
        str(rec.get("op")), str(rec.get("op")))
    svc.notify("disk-io-error", volume=name,
               device=str(rec.get("backing") or st.get("backing") or "?"),
               error=f"{what} returned {rec.get('errno')} ({rec.get('error')})",
               detached=True, peer=str(st.get("peer_node") or "its peer"),
               role=str(st.get("role") or "?"))


async def log_verify(svc: VolumeService, name: str, ver: dict[str, Any]) -> None:
    found = int(ver.get("found_blocks") or 0)
    if found:   # the node that ran the verify says it (once: its result is logged once)
        svc.notify("verify-out-of-sync", volume=name,
                   peer=str((svc.statuses.get(name) or {}).get("peer_node") or "peer"),
                   out_of_sync_bytes=found * int(ver.get("block_size") or 4096))
    what = "stopped" if ver.get("stopped") else "lost its peer" if ver.get("lost") \
        else "finished"
    msg = (f"volume {name}: online verify on {svc.node} {what} after "
           f"{ver.get('verified_kib')} KiB: {found} blocks out of sync"
           + (f" ({found * int(ver.get('block_size') or 4096) // 1024} KiB, first ranges "
              f"{ver.get('ranges', [])[:5]}); disconnect/connect resyncs them"
              if found else ""))
    log.log(logging.WARNING if found else logging.INFO, "%s", msg)
    with contextlib.suppress(Exception):
        await svc.clusterlog.write(msg, tag="volume", pri="warning" if found else "info")


def queue_publish(svc: VolumeService, name: str, view: dict[str, Any]) -> None:
    if svc._published.get(name) == view:
        return
    svc._dirty[name] = view
    svc._publish_wake.set()


async def publish_loop(svc: VolumeService) -> None:
    while True:
        await svc._publish_wake.wait()
        svc._publish_wake.clear()
        await asyncio.sleep(PUBLISH_COALESCE)      # coalesce bursts of state changes
        if svc.cluster.store is None or not svc.cluster.is_member:
            svc._dirty.clear()
            continue
        pending, svc._dirty = svc._dirty, {}
        for name, view in pending.items():
            try:
                await svc.record_store.publish_state(
                    name, svc.node, {**view, "node": svc.node, "time": int(time.time())})
                svc._published[name] = view
            except (StoreUnavailable, VolumeFailure):   # (VolumeFailure: left the cluster)
                svc._dirty.setdefault(name, view)
        if svc._dirty:
            await asyncio.sleep(fencing.FENCE_RETRY)
            svc._publish_wake.set()
