"""Role changes and administration of one volume: promote, demote, up, down, resize, adjust.

Promotion refuses a copy recorded Outdated unless forced; resize and adjust
update the record and the engines of both nodes; `standalone` turns quorum
fencing off on this node. Functions of the `VolumeService`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core.config import (
    ADJUSTABLE,
    ConfigError,
    parse_size,
)
from binome.storage.replica.core.states import Fencing
from binome.storage.replica.core.views import CONNECTED_STATES
from binome.storage.replica.node import fencing, provisioning
from binome.storage.replica.node.errors import PeerPrimary, SettingRefused, VolumeFailure
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.storage.replica.node.volumes import VolumeService
    from binome.tasks.manager import Task

log = logging.getLogger("binome.volumes")


async def promote(svc: VolumeService, name: str, *, force: bool = False,
                  task: Task | None = None) -> dict[str, Any]:
    async with svc.lock(name):
        return await promote_locked(svc, name, force=force, task=task)


async def promote_locked(svc: VolumeService, name: str, *, force: bool,
                          task: Task | None = None) -> dict[str, Any]:
    say = task.log if task is not None else (lambda m: log.info("%s", m))
    st = await svc.call("status", name=name)
    if st.get("cstate") == "Unconfigured":
        raise VolumeFailure(f"volume {name} is not up on {svc.node}")
    if st["role"] == "Primary":
        return st
    quorum_fenced = st.get("fencing") == Fencing.QUORUM.value
    in_sync = (st["cstate"] in CONNECTED_STATES and st["disk"] == "UpToDate")
    if quorum_fenced and not in_sync:
        view = await marks_for_promotion(svc, name, force)
        if not force:
            refuse_if_marked(svc, name, view["outdated"])
        if st["peer_disk"] == "DUnknown" and not force:
            peer = svc.peer_of(view["config"])
            peer_state = view["states"].get(peer) or {}
            if peer_state.get("role") == "Primary" and svc.cluster.node_online(peer):
                raise PeerPrimary(f"volume {name}: {peer} is Primary (and online); "
                                  f"demote it first")
            outcome = await fencing.fence_peer(svc, name, reason=f"promotion of {svc.node}")
            if outcome == "outdated-self":
                raise VolumeFailure(f"volume {name}: the copy on {svc.node} was "
                                    f"recorded Outdated by {peer}")
            say(f"volume {name}: {peer}'s copy recorded Outdated before the promotion")
    elif quorum_fenced and not force:
        # Our engine may still believe it is Connected while the peer, which noticed
        # the link loss first (it was writing), has already recorded this copy
        # Outdated with quorum and gone on writing alone: the mark wins.
        with contextlib.suppress(StoreUnavailable):
            marks, _ = await svc.record_store.fencing_marks(name)
            refuse_if_marked(svc, name, marks)
    if force:
        msg = (f"volume {name}: FORCED promotion on {svc.node} "
               f"(disk {st['disk']}, peer disk {st['peer_disk']}, {st['cstate']})")
        log.warning("%s", msg)
        say(msg)
        await svc.clusterlog.write(msg, tag="volume", pri="warning")
    st = await svc.call("primary", name=name, force=force)
    with contextlib.suppress(StoreUnavailable, VolumeFailure):
        await provisioning.set_record(svc, name, lambda r: {**r, "primary": svc.node})
    return st


def refuse_if_marked(svc: VolumeService, name: str, outdated: dict[str, Any]) -> None:
    mine = outdated.get(svc.node)
    if mine is not None:
        raise VolumeFailure(
            f"volume {name}: the copy on {svc.node} was recorded Outdated by "
            f"{mine.get('by')} ({mine.get('reason', '')}); refusing to promote stale "
            f"data (--force overrides)")


async def marks_for_promotion(svc: VolumeService, name: str, force: bool) -> dict[str, Any]:
    """The fencing marks, read with quorum (a stale read could hide our own mark)."""
    try:
        view = await svc.cluster_view(name)
        view["outdated"], _ = await svc.record_store.fencing_marks(name)  # linearizable
        return view
    except StoreUnavailable:
        if force:
            return {"config": svc.records.get(name, {"nodes": {}}), "outdated": {},
                    "states": {}}
        raise VolumeFailure(f"volume {name}: no quorum: cannot check that the copy on "
                            f"{svc.node} is not Outdated; refusing to promote (a forced "
                            f"promotion without quorum needs standalone mode)") from None


async def demote(svc: VolumeService, name: str, *, locked: bool = False) -> dict[str, Any]:
    """Secondary here. `locked`: the caller holds the volume's lock already (it checked
    the engine's state under it and the demotion must follow that check: the lock is
    not reentrant)."""
    if locked:
        return await _demote(svc, name)
    async with svc.lock(name):
        return await _demote(svc, name)


async def _demote(svc: VolumeService, name: str) -> dict[str, Any]:
    st = await svc.call("secondary", name=name)
    with contextlib.suppress(StoreUnavailable, VolumeFailure):
        await provisioning.set_record(svc, name, lambda r: {
            **r, "primary": None if r.get("primary") == svc.node else r.get("primary")})
    return st


async def up(svc: VolumeService, name: str) -> dict[str, Any]:
    async with svc.lock(name):
        with contextlib.suppress(StoreUnavailable, VolumeFailure):
            await provisioning.set_record(svc, name, lambda r: {
                **r, "down": [n for n in r.get("down", []) if n != svc.node]})
        return await svc.call("up", name=name)


async def down(svc: VolumeService, name: str) -> None:
    async with svc.lock(name):
        with contextlib.suppress(StoreUnavailable, VolumeFailure):
            await provisioning.set_record(svc, name, lambda r: {
                **r, "down": sorted(set(r.get("down", [])) | {svc.node}),
                "primary": None if r.get("primary") == svc.node else r.get("primary")})
        await svc.call("down", name=name)


async def resize_volume(svc: VolumeService, name: str, size: int | str) -> dict[str, Any]:
    """Grow a volume on both nodes (the engine grows the peer's copy first over the
    replication link; it must be Connected), then record the new size."""
    try:
        size = parse_size(size)
    except ConfigError as exc:
        raise VolumeFailure(str(exc)) from None
    size = (size + 4095) // 4096 * 4096
    async with svc.lock(name):
        st = await svc.call("resize", name=name, size=size)
        await provisioning.set_record(svc, name, lambda r: {**r, "size": max(int(r["size"]), size)})
    return st


async def adjust_engine(svc: VolumeService, name: str, changes: dict[str, Any], *,
                         dry_run: bool = False) -> dict[str, Any]:
    try:
        return await svc.call("adjust", name=name, dry_run=dry_run, **changes)
    except VolumeFailure as exc:
        text = str(exc)
        key = text.split(":", 1)[0]
        raise SettingRefused(text, key if key in ADJUSTABLE else None) from None


async def adjust_volume(svc: VolumeService, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change settings of a volume (drbdadm adjust) on this node and its peer.

    This node's engine checks first (dry run: the values and DRBD's rules for
    its current state), then the record changes (a compare-and-swap), then the
    engine applies it live: the settings both sides must agree on reach the
    peer's engine over the replication link while connected. The peer's daemon
    makes its engine match the record in its reconcile loop (the only way while
    disconnected, and for the resync controller's settings, which each side
    keeps for itself). The record first: the peer's loop must never see an
    engine newer than the record and turn it back. If the engine then refuses
    (the peer refused), the record gets its old values back.
    Returns {"changed": {setting: [old, new]}, "settings", "status"}.
    """
    unknown = set(changes) - set(ADJUSTABLE)
    if unknown:
        raise SettingRefused(f"{sorted(unknown)[0]}: not a volume setting",
                             sorted(unknown)[0])
    async with svc.lock(name):
        rec = await svc.record(name, serializable=False)
        if rec.get("deleting"):
            raise VolumeFailure(f"volume {name} is being deleted")
        if svc.node not in rec.get("nodes", {}):
            raise VolumeFailure(f"volume {name} has no copy on {svc.node}")
        dry = await adjust_engine(svc, name, changes, dry_run=True)
        old = {k: rec.get(k) for k in changes}
        await provisioning.set_record(svc, name, lambda r: {**r, **changes})
        try:
            res = await adjust_engine(svc, name, changes)
        except VolumeFailure:
            def undo(r: dict[str, Any]) -> dict[str, Any]:
                if all(r.get(k) == v for k, v in changes.items()):
                    r.update({k: v for k, v in old.items()})
                    for k in [k for k, v in old.items() if v is None]:
                        r.pop(k, None)
                return r
            with contextlib.suppress(VolumeFailure, StoreUnavailable):
                await provisioning.set_record(svc, name, undo)
            raise
        svc.records[name] = {**rec, **changes}
    # What changed against this engine before (the peer's loop may have brought the
    # shared settings over the link first: then the engine's own answer is empty).
    changed = dry.get("changed", {}) or res.get("changed", {})
    res = {**res, "changed": changed}
    if changed:
        await svc.clusterlog.write(
            f"volume {name}: settings changed on {svc.node}: " + ", ".join(
                f"{k} {a} -> {b}" for k, (a, b) in sorted(changed.items())), tag="volume")
    svc._wake.set()            # (the peer's loop wakes on its own: every second)
    return res


async def standalone(svc: VolumeService, name: str, enable: bool, task: Task | None = None
                     ) -> dict[str, Any]:
    """Explicit standalone mode: no quorum fencing on this node (split-brain policies)."""
    async with svc.lock(name):
        fencing = Fencing.DONT_CARE.value
        if not enable:
            fencing = svc.records.get(name, {}).get("fencing", Fencing.QUORUM.value)
        st = await svc.call("set-fencing", name=name, fencing=fencing)
    msg = (f"volume {name}: standalone mode {'ON' if enable else 'off'} on {svc.node} "
           f"(fencing {fencing})" + (": writes continue without quorum; split-brain "
                                     "policies decide at the next connection"
                                     if enable else ""))
    log.warning("%s", msg)
    if task is not None:
        task.log(msg)
    await svc.clusterlog.write(msg, tag="volume", pri="warning" if enable else "info")
    return st
