"""The master's availability recorder: appends committed service changes to the history.

Owns nothing in etcd itself (`binome.ha.availability_log` owns the keys); it is the one
writer of that log. After each CRM round on the node holding the manager lock, the agent
`offer`s the committed services' (state, node) and the lock revision; a background task
(never the round itself: recording must not slow HA) appends what differs from the
log's last states and, at most every `BUDGET_CHECK` seconds, checks each service's
downtime budget of the month against its own target (the resource option
`availability_target`), else `HaSettings.availability_target`, sending the
"nearly exhausted" (80 %) and "exceeded" (100 %) notifications once per month each (the
sent level is stored with the log, so a new master does not repeat them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from binome.ha import availability as av
from binome.ha.availability_log import AvailabilityLog, ServiceRecord
from binome.store.client import Store, StoreUnavailable
from binome.units import human_duration

log = logging.getLogger("binome.ha")

BUDGET_CHECK = 30.0


class AvailabilityRecorder:
    def __init__(self, store_of: Callable[[], Store | None],
                 notify: Callable[..., None], *, clock: Callable[[], float] = time.time,
                 timeout: float = 2.0) -> None:
        self._store_of = store_of
        self._notify = notify
        self._clock = clock
        self._timeout = timeout
        self._offer: tuple[dict[str, tuple[str, str]], int, float | None,
                           dict[str, float], dict[str, float]] | None = None
        self._records: dict[str, ServiceRecord] | None = None   # cache, while master
        self._lock_revision: int | None = None
        self._last_budget_check = float("-inf")
        self._wake = asyncio.Event()

    def offer(self, services: dict[str, tuple[str, str]], lock_revision: int,
              target: float | None, lost_since: dict[str, float] | None = None,
              targets: dict[str, float] | None = None) -> None:
        """The committed services' (state, node) as master at `lock_revision`, the
        cluster's budget target, the nodes the status has lost -> their last renewal (wall
        clock), and the services' own targets (sid -> percent) that replace the cluster's."""
        self._offer = (services, lock_revision, target, lost_since or {}, targets or {})
        self._wake.set()

    def not_master(self) -> None:
        self._offer = None
        self._records = None

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except (StoreUnavailable, OSError) as exc:
                log.info("availability history not recorded now: %s", exc)
                self._records = None
            except Exception:
                log.exception("availability history: recording failed")
                self._records = None

    async def sync(self) -> bool:
        """Record the offered states (and check budgets); False if nothing could be done."""
        offer, store = self._offer, self._store_of()
        if offer is None or store is None:
            return False
        services, lock_revision, target, lost_since, targets = offer
        repo = AvailabilityLog(store)
        if self._records is None or self._lock_revision != lock_revision:
            self._records = await repo.load()
            self._lock_revision = lock_revision
        records = self._records
        now = self._clock()
        recorded = {sid: last for sid, rec in records.items() if (last := rec.last) is not None}
        at = {sid: rec.log[-1].time for sid, rec in records.items() if rec.log}
        changed: dict[str, ServiceRecord] = {}
        for sid, tr in av.diff_states(recorded, services, now, lost_since, at):
            rec = records.setdefault(sid, ServiceRecord(sid))
            rec.log.append(tr)
            changed[sid] = rec
        if changed and not await repo.save(changed, lock_revision, now, self._timeout):
            self._records = None     # someone else wrote (a new master): re-read next time
            return False
        if (target is not None or targets) and now - self._last_budget_check >= BUDGET_CHECK:
            self._last_budget_check = now
            await self._check_budgets(repo, records, target, targets, lock_revision, now)
        return True

    async def _check_budgets(self, repo: AvailabilityLog, records: dict[str, ServiceRecord],
                             default: float | None, targets: dict[str, float],
                             lock_revision: int, now: float) -> None:
        since, until = av.period_bounds("month", now)
        label = av.period_label("month", since)
        for sid, rec in sorted(records.items()):
            target = targets.get(sid, default)
            if rec.last is None or rec.last[0] == av.REMOVED or target is None:
                continue
            rep = av.report(sid, rec.log, since, until, now, target)
            bud: dict[str, Any] = rep["budget"]
            level = 100.0 if bud["used_percent"] >= 100 else \
                av.BUDGET_WARN_PERCENT if bud["used_percent"] >= av.BUDGET_WARN_PERCENT else 0.0
            if level <= rec.notified.get(label, 0.0):
                continue
            rec.notified = {label: level}     # only the current month's mark is kept
            if not await repo.save({sid: rec}, lock_revision, now, self._timeout):
                self._records = None
                return
            kind = ("availability-budget-exceeded" if level >= 100
                    else "availability-budget-nearly")
            self._notify(kind, sid=sid, month=label, downtime=int(rep["downtime"]),
                         budget=int(bud["allowed"]),
                         target=f"{target:.10g} %" + (" (its own target)" if sid in targets
                                                   else ""),
                         used_percent=f"{bud['used_percent']:g}",
                         downtime_text=human_duration(rep["downtime"]),
                         budget_text=human_duration(bud["allowed"]))
