"""One scrape's reading of the node and the cluster (`Snapshot`, taken by `take`).

Everything is read from its owner when Prometheus scrapes: the host from /proc, the
guests from the guest service's last status round (every 2 s), the quorum view from
the cluster monitor, the etcd member's status and a quorum read (both timed: they are
the etcd latency the exporter reports), the HA manager's status document (one
serializable read of `/binome/ha/`, so a node without quorum still answers with what
its member last knew, next to `binome_cluster_quorate 0`), the volume engine's
statuses, the task index and the HA agent's counts. A source that fails is left out
and named in `failed`; the scrape itself never fails because of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from binome import __version__
from binome.ha import availability as av
from binome.ha.availability_log import AvailabilityLog
from binome.ha.config import HaConfig
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.cluster.quorum import QuorumView
    from binome.ha.agent.stats import HaStats
    from binome.metrics.sources import MetricSources
    from binome.tasks.manager import TaskRecord

log = logging.getLogger("binome.metrics")

#: no source may hold a scrape longer than this (Prometheus' default timeout is 10 s)
SOURCE_TIMEOUT = 2.0


@dataclass
class Snapshot:
    node: str
    role: str
    version: str = __version__
    host: dict[str, Any] = field(default_factory=dict)
    net: dict[str, tuple[int, int]] = field(default_factory=dict)
    guests: dict[int, dict[str, Any]] = field(default_factory=dict)
    is_member: bool = False
    quorum: QuorumView | None = None
    etcd: dict[str, Any] | None = None
    etcd_leader: str | None = None
    # request kind -> seconds it took at this scrape (`status`, `quorum_read`)
    etcd_latency: dict[str, float] = field(default_factory=dict)
    ha: dict[str, Any] | None = None
    # sid -> (unplanned downtime seconds, outages) over its whole availability history
    availability: dict[str, tuple[float, int]] = field(default_factory=dict)
    ha_stats: HaStats | None = None
    volumes: list[dict[str, Any]] | None = None
    tasks: list[TaskRecord] = field(default_factory=list)
    # (events dropped, target -> its delivery counts) of this node's dispatcher
    notifications: tuple[int, dict[str, dict[str, Any]]] | None = None
    failed: set[str] = field(default_factory=set)


async def take(src: MetricSources) -> Snapshot:
    cfg = src.config
    snap = Snapshot(node=cfg.name, role=cfg.role)
    try:
        snap.host = src.host.summary() | {"loadavg": os.getloadavg()[0]}
        snap.net = src.host.net_devices()
    except OSError as exc:
        _failed(snap, "host", exc)
    if src.guests is not None:
        snap.guests = dict(src.guests.last_status)
    snap.tasks = list(src.tasks.records.values())
    snap.notifications = src.notifications.delivery_counts()
    if src.ha is not None:
        snap.ha_stats = src.ha.stats
    cluster = src.cluster
    snap.is_member = cluster.is_member
    store = cluster.store
    if snap.is_member and store is not None:
        snap.quorum = cluster.view
        snap.etcd_leader = cluster.etcd_leader_name()
        await asyncio.gather(_etcd(snap, store), _ha(snap, store), _availability(snap, store))
    if src.volumes is not None:
        try:
            snap.volumes = await asyncio.wait_for(src.volumes.local_statuses(),
                                                  SOURCE_TIMEOUT)
        except Exception as exc:   # the engine may be restarting: no volume series then
            _failed(snap, "volumes", exc)
    return snap


async def _etcd(snap: Snapshot, store: Any) -> None:
    try:
        began = time.monotonic()
        snap.etcd = await store.member_status(timeout=SOURCE_TIMEOUT)
        snap.etcd_latency["status"] = time.monotonic() - began
    except StoreUnavailable as exc:
        _failed(snap, "etcd", exc)
        return
    try:
        began = time.monotonic()
        await store.linearizable_probe(timeout=SOURCE_TIMEOUT)
        snap.etcd_latency["quorum_read"] = time.monotonic() - began
    except StoreUnavailable as exc:   # no quorum: the status above still counts
        _failed(snap, "etcd_quorum_read", exc)


async def _ha(snap: Snapshot, store: Any) -> None:
    try:
        snap.ha = await asyncio.wait_for(HaConfig(store).status_snapshot(serializable=True),
                                         SOURCE_TIMEOUT)
    except (StoreUnavailable, TimeoutError) as exc:
        _failed(snap, "ha", exc)


async def _availability(snap: Snapshot, store: Any) -> None:
    try:
        records = await asyncio.wait_for(AvailabilityLog(store).load(serializable=True),
                                         SOURCE_TIMEOUT)
    except (StoreUnavailable, TimeoutError) as exc:
        _failed(snap, "ha_availability", exc)
        return
    now = time.time()
    for sid, rec in records.items():
        if rec.log:
            rep = av.report(sid, rec.log, rec.log[0].time, now, now)
            snap.availability[sid] = (rep["downtime"], rep["outages"])


def _failed(snap: Snapshot, source: str, exc: BaseException) -> None:
    snap.failed.add(source)
    log.debug("metrics: %s not read: %s", source, exc)
