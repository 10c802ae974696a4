"""The HA services' availability history in etcd: owns `/binome/availability/<sid>`.

Each key holds one service's transition log (`binome.ha.availability.Transition`:
wall-clock time, CRM state, node) and the budget notifications already sent:
`{"log": [[time, state, node], ...], "notified": {"2026-12": 80}}`.

Why this design: the record must survive daemon restarts and the failover of the CRM.
The manager status in etcd is the one committed truth about every service's state, so the
log is *derived* from it: the elected master, after each committed round, appends the
difference between the committed status and the last state the log holds
(`availability.diff_states`). A write compares the key's revision and the manager lock's
revision: only the lock holder appends, never twice the same change, and a master that
lost the lock appends nothing. A change the master committed but could not append (no
quorum a moment later, or the master died) is caught up by the next append of whichever
node is master then, stamped with the time it was noticed; so the log never misses a
state, and at worst a transition is stamped late by the time a new master takes to be
elected (documented in docs/operator-guide.md, "Availability reports").

Size: bounded per service to `MAX_ENTRIES` transitions and `MAX_AGE` seconds (a year and
a month, enough for the yearly report); trimming drops the oldest entries, and the report
counts nothing before the first entry kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from binome.ha.availability import Transition
from binome.store import keys
from binome.store.client import Store

MAX_ENTRIES = 2000
MAX_AGE = 400 * 86400


@dataclass
class ServiceRecord:
    sid: str
    log: list[Transition] = field(default_factory=list)
    notified: dict[str, float] = field(default_factory=dict)
    revision: int = 0     # the key's mod revision; 0: not stored yet

    @property
    def last(self) -> tuple[str, str] | None:
        return (self.log[-1].state, self.log[-1].node) if self.log else None

    def to_dict(self) -> dict[str, Any]:
        return {"log": [t.to_list() for t in self.log], "notified": dict(self.notified)}

    @classmethod
    def from_entry(cls, sid: str, value: Any, revision: int) -> ServiceRecord:
        value = value if isinstance(value, dict) else {}
        log = [Transition.from_list(raw) for raw in value.get("log") or []
               if isinstance(raw, list) and len(raw) >= 2]
        notified = {str(k): float(v) for k, v in (value.get("notified") or {}).items()}
        return cls(sid, log, notified, revision)


def trim(log: Sequence[Transition], now: float) -> list[Transition]:
    """At most MAX_ENTRIES transitions, none older than MAX_AGE (but always the last)."""
    kept = [t for t in log if t.time >= now - MAX_AGE] or list(log[-1:])
    return kept[-MAX_ENTRIES:]


class AvailabilityLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def load(self, sid: str | None = None, *,
                   serializable: bool = False) -> dict[str, ServiceRecord]:
        """Every service's record (or one's); a quorum read unless `serializable`."""
        if sid is not None:
            entry = await self.store.get(keys.availability(sid), serializable=serializable)
            return {} if entry is None else {
                sid: ServiceRecord.from_entry(sid, entry.value, entry.mod_revision)}
        entries = await self.store.get_prefix(keys.AVAILABILITY, serializable=serializable)
        out = {}
        for e in entries:
            name = e.key[len(keys.AVAILABILITY):]
            out[name] = ServiceRecord.from_entry(name, e.value, e.mod_revision)
        return out

    async def save(self, records: Mapping[str, ServiceRecord], lock_revision: int,
                   now: float, timeout: float | None = None) -> bool:
        """Store the changed records in one transaction, compared against each key's
        revision and the manager lock (held by the caller at `lock_revision`). True if
        written (the records get their new revision); False: someone wrote first."""
        compare: list[tuple[str, str, int]] = [(keys.HA_MANAGER_LOCK, "mod", lock_revision)]
        puts: dict[str, tuple[Any, int]] = {}
        for sid, rec in records.items():
            rec.log = trim(rec.log, now)
            key = keys.availability(sid)
            compare.append((key, "mod", rec.revision) if rec.revision
                           else (key, "create", 0))
            puts[key] = (rec.to_dict(), 0)
        if not puts:
            return True
        rev = await self.store.txn(compare, puts, (), timeout)
        if rev is None:
            return False
        for rec in records.values():
            rec.revision = rev
        return True
