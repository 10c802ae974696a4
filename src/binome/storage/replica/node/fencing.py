"""Quorum fencing: the daemon as the engine's fence-peer handler.

A suspended Primary's peer is recorded Outdated in
`/binome/volumes/<vol>/fencing` with a compare-and-swap that needs etcd
quorum (`fence_peer`), then the engine is told (`peer-outdated`) and resumes;
without quorum the attempt is retried (`fence_loop`) and writes stay
suspended. Functions of the `VolumeService`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from binome.storage.replica.node.errors import FenceFailed, VolumeFailure
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.storage.replica.node.volumes import VolumeService

log = logging.getLogger("binome.volumes")

FENCE_RETRY = 1.0


def start_fencing(svc: VolumeService, name: str) -> None:
    running = svc._fencers.get(name)
    if running is not None and not running.done():
        return
    svc._fencers[name] = asyncio.create_task(fence_loop(svc, name),
                                              name=f"fence-{name}")


async def fence_loop(svc: VolumeService, name: str) -> None:
    """Retry the fence-peer handler while the engine waits for it.

    After an outcome the loop looks again: the peer may have been lost once more
    while the call ran (right after a partition heals it can take seconds: its
    cluster-log write flushes the backlog), and `start_fencing` then saw this loop
    running and started none. It asks the engine itself, under the lock, since the
    event saying the engine resumed may not have arrived yet (issue 16); never sooner
    than FENCE_RETRY, so an engine that keeps asking is not a busy loop."""
    while (svc.statuses.get(name) or {}).get("fence") == "needed":
        try:
            async with svc.lock(name):
                if (svc.statuses.get(name) or {}).get("fence") != "needed":
                    return
                if (await svc.call("status", name=name)).get("fence") != "needed":
                    return
                outcome = await fence_peer(svc, name, reason="peer lost")
            log.info("volume %s: fence-peer: %s", name, outcome)
        except FenceFailed as exc:
            svc._warn(f"{name}/fence", f"writes stay suspended: {exc}")
        except VolumeFailure as exc:
            svc._warn(f"{name}/fence", f"fence-peer failed: {exc}")
        await asyncio.sleep(FENCE_RETRY)


async def fence_peer(svc: VolumeService, name: str, *, reason: str) -> str:
    """Record the peer's copy Outdated in etcd (needs quorum), then tell the engine.

    Returns "outdated-peer", or "outdated-self" when the peer fenced this node
    first (the engine then fails the suspended writes). Raises FenceFailed
    without quorum. The caller holds the volume's lock.
    """
    svc._store()                    # (not in a cluster: refused before anything else)
    # quorum only, not the whole view: probing every member would wait a full
    # quorum_check_timeout on the very peer this promotion is fencing (issue 16)
    if not await svc.cluster.quorate_now():
        raise FenceFailed("no quorum: cannot record the peer's copy as Outdated")
    try:
        rec = await svc.record(name, serializable=False)
        peer = svc.peer_of(rec)
        for _ in range(10):
            marks, revision = await svc.record_store.fencing_marks(name)   # linearizable
            if svc.node in marks:
                by = marks[svc.node].get("by", peer)
                await svc.call("outdated-by-peer", name=name, by=by)
                # written behind: the caller holds the volume's lock, and a promotion
                # waiting for it must not wait for etcd's backlog too
                svc.clusterlog.write_behind(
                    f"volume {name}: the copy on {svc.node} was outdated by {by}; its "
                    f"suspended writes failed", tag="volume", pri="warning")
                return "outdated-self"
            if peer not in marks:
                marks[peer] = {"by": svc.node, "time": int(time.time()), "reason": reason}
                if not await svc.record_store.swap_fencing_marks(name, marks, revision):
                    continue
                # the mark is what makes resuming safe; the log line must not delay the
                # engine's suspended writes (2-4 s when a partition has just healed)
                svc.clusterlog.write_behind(
                    f"volume {name}: {peer}'s copy recorded Outdated by {svc.node} "
                    f"({reason})", tag="volume", pri="warning")
            await svc.call("peer-outdated", name=name, by=svc.node)
            return "outdated-peer"
    except StoreUnavailable as exc:
        raise FenceFailed(f"cluster store unavailable ({exc}): cannot record the peer's "
                          f"copy as Outdated") from None
    raise FenceFailed("too many concurrent updates of the fencing record")
