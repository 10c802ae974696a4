"""Reconciliation: make this node's engine match the volume records in etcd.

Every reconcile interval, each record naming this node makes the volume
exist and be up here (created from the record when missing), with the
settings the record holds; outdated marks of copies back in sync are
cleared. Functions of the `VolumeService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core.views import CONNECTED_STATES, record_settings
from binome.storage.replica.node import operations, provisioning
from binome.storage.replica.node.errors import VolumeFailure
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.storage.replica.node.volumes import VolumeService

log = logging.getLogger("binome.volumes")


async def reconcile_loop(svc: VolumeService) -> None:
    while True:
        try:
            await reconcile(svc)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:
            svc._warn("*", f"cluster store unavailable: {exc}")
        except Exception as exc:
            svc._warn("*", f"reconcile failed: {exc}", exc_info=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(svc.reconcile_interval):
                await svc._wake.wait()
        svc._wake.clear()


async def reconcile(svc: VolumeService) -> None:
    """One round: make this node's engine match the cluster records naming it."""
    if svc.cluster.store is None or not svc.cluster.is_member:
        return
    records, marks = await svc.record_store.of_node(svc.node)
    svc.records = records
    if not records and svc.handle is None:
        return                       # nothing to serve here: no engine needed
    await svc.ensure_engine()
    listing = {v["name"]: v for v in await svc.call("list")}
    for name, rec in records.items():
        async with svc.lock(name):
            try:
                await reconcile_volume(svc, name, rec, marks.get(name, {}),
                                             listing.get(name))
                svc._warned.pop(name, None)
            except (VolumeFailure, StoreUnavailable) as exc:
                svc._warn(name, str(exc))


async def reconcile_volume(svc: VolumeService, name: str, rec: dict[str, Any],
                            marks: dict[str, Any], local: dict[str, Any] | None) -> None:
    if rec.get("deleting"):
        if svc.node not in rec.get("deleted", []):
            await provisioning.remove_local(svc, name)
            await provisioning.ack_deletion(svc, name)
            log.info("volume %s: removed on %s (deleted in the cluster)", name, svc.node)
        return
    if local is None and svc.exists_locally(name):
        # created since the listing (by create_volume, which held the lock)
        local = {"name": name, "up": (await svc.call("status", name=name))
                 .get("cstate") != "Unconfigured"}
    if local is None:
        secret = await svc.record_store.secret(name)
        if secret is None:
            raise VolumeFailure("the volume's secret is missing from the cluster")
        await svc.call("create", **svc._engine_config(rec, secret))
        log.info("volume %s: created on %s (peer %s)", name, svc.node, svc.peer_of(rec))
        local = {"name": name, "up": False}
    wanted = svc.node_handlers()
    if svc._handlers_applied.get(name) != wanted:
        # handlers.json changed (or first round since the daemon started).
        await svc.call("set-handlers", name=name, **wanted)
        svc._handlers_applied[name] = wanted
    wanted_settings = record_settings(rec)
    if not local["up"]:
        # The record's settings first (changed while this node was away): a handshake
        # with the old ones would end in "incompatible ... settings".
        if wanted_settings:
            await operations.adjust_engine(svc, name, wanted_settings)
        if svc.node in rec.get("down", []):
            return
        await svc.call("up", name=name)
    st = await svc.call("status", name=name)
    have = st.get("settings") or {}
    diff = {k: v for k, v in wanted_settings.items() if have.get(k, v) != v}
    if diff:
        # `binome volume set` on the other node (or here before a restart): the
        # shared settings usually arrived over the link already; the rest come here.
        st = await operations.adjust_engine(svc, name, diff)
        log.info("volume %s: settings from the cluster record applied on %s: %s", name,
                 svc.node, ", ".join(f"{k}={v!r}" for k, v in sorted(diff.items())))
    if (st["cstate"] == "StandAlone" and "incompatible" in
            str((st.get("peer") or {}).get("last_error") or "")):
        # The link gave up on settings that differed; the record is applied now, so
        # try again (the peer's loop does the same on its side).
        await svc.call("connect", name=name)
        st = await svc.call("status", name=name)
    connected = st["cstate"] in CONNECTED_STATES
    peer = svc.peer_of(rec)
    mine = marks.get(svc.node)
    if mine is not None and not connected and st["disk"] in ("UpToDate", "Consistent"):
        # `marks` is the round's snapshot: a serializable read taken before this
        # volume's lock was ours, which a fence-peer or a promotion may have held for
        # seconds. Meanwhile the peer may have resynced this copy, cleared its mark and
        # died (issue 16: the copy, in sync, was outdated here on the stale mark and
        # the HA manager could not recover onto the only surviving copy). So the mark
        # is read again, linearizably, under the lock; gone, this copy is left as it is.
        marks, _ = await svc.record_store.fencing_marks(name)
        mine = marks.get(svc.node)
    if mine is not None and not connected and st["disk"] in ("UpToDate", "Consistent"):
        # The cluster recorded this copy Outdated: make the engine agree, so that
        # even a direct promotion attempt is refused.
        await svc.call("outdated-by-peer", name=name, by=mine.get("by", peer))
        log.warning("volume %s: this copy was recorded Outdated by %s", name,
                    mine.get("by", peer))
    if (peer in marks and mine is None and st["cstate"] == "Connected"
            and st["disk"] == "UpToDate" and st["peer_disk"] == "UpToDate"):
        await clear_mark(svc, name, peer)
    if (rec.get("primary") == svc.node and st["role"] == "Secondary"
            and mine is None and st["disk"] in ("UpToDate", "Consistent")):
        try:
            await operations.promote_locked(svc, name, force=False)
            log.info("volume %s: promoted again on %s (its desired Primary)", name,
                     svc.node)
        except VolumeFailure as exc:
            svc._warn(name, f"not promoted: {exc}")


async def clear_mark(svc: VolumeService, name: str, peer: str) -> None:
    """The peer's copy is back in sync with ours: it is no longer Outdated.

    Read the mark first, then the engine's state, then compare-and-swap: a
    mark written after our read (a new link loss) makes the swap fail.
    """
    marks, revision = await svc.record_store.fencing_marks(name)
    if revision is None:
        return
    if peer not in marks or svc.node in marks:
        return
    st = await svc.call("status", name=name)
    if not (st["cstate"] == "Connected" and st["disk"] == st["peer_disk"] == "UpToDate"):
        return
    marks.pop(peer)
    if await svc.record_store.swap_fencing_marks(name, marks, revision):
        log.info("volume %s: %s's copy is in sync again: Outdated mark cleared", name, peer)
