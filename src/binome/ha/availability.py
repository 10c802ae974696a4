"""Availability of HA services (pure): a service's recorded state history -> outages, uptime.

Owns no state. Its input is the transition log that `binome.ha.availability_log` keeps
(one entry per change of a service's CRM state or node, stamped with wall-clock time by
the master that committed it); its outputs are

- `diff_states`: the transitions between the states last recorded and the committed
  manager status (what the recorder appends);
- `segments` / `report`: the log cut to a period and classified into up time, unplanned
  downtime (outages, each with its cause and phases) and planned downtime (an
  administrator's stop: shown, not counted against availability);
- `period_bounds`, `availability_class`, `budget`: the calendar periods, the seeds'
  availability classes (99.9 % = 8 h 45 min 36 s a year) and a downtime budget.

Classification of the CRM states (`binome.ha.model.ServiceState`):

- up: `started`, `migrate` (a live migration keeps the guest running), `freeze` (the
  HA stack has its hands off, the guest keeps running);
- down, cause `fencing`: `fence` (its node was lost, waiting for the fence);
  `recovery`: `recovery` (fenced, waiting for a node to take it); `error`: `error`;
  `migration`: `relocate` (stop, move, start);
- planned: `request_stop`, `stopping`, `stopped` (cause `admin-stop`), and `removed`
  (no longer an HA service, cause `unmanaged`);
- `request_start` / `starting` continue what came before: the rest of an outage (the
  start after a recovery belongs to the fencing outage), the end of a planned stop (an
  administrator's start), or, after up time, an unplanned `restart`.

Times are wall-clock seconds (epoch). A log whose times go backwards (two masters with
skewed clocks) is read in its append order with each time clamped to its predecessor:
the append order is the order of the committed changes.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

UP_STATES = frozenset({"started", "migrate", "freeze"})
DOWN_CAUSES = {"fence": "fencing", "recovery": "recovery", "error": "error",
               "relocate": "migration"}
PLANNED_CAUSES = {"request_stop": "admin-stop", "stopping": "admin-stop",
                  "stopped": "admin-stop", "removed": "unmanaged"}
STARTING_STATES = frozenset({"request_start", "starting"})
FAILED_STATES = frozenset({"fence", "recovery"})
#: States a service may be in right after its recovery to another node.
RECOVERED_STATES = frozenset({"recovery", "request_start", "starting", "started",
                              "request_stop", "stopped"})
REMOVED = "removed"   # the pseudo-state recorded when a service leaves the manager status

#: The seeds' availability classes: percent -> allowed downtime per (365-day) year.
CLASSES: tuple[float, ...] = (99.999, 99.99, 99.9, 99.0)
YEAR = 365 * 86400
PERIODS = ("day", "week", "month", "year")
#: Share of a budget at which the "nearly exhausted" notification goes out.
BUDGET_WARN_PERCENT = 80.0


@dataclass(frozen=True)
class Transition:
    """The service entered `state` on `node` at `time` (epoch seconds)."""

    time: float
    state: str
    node: str = ""

    def to_list(self) -> list[Any]:
        return [round(self.time, 3), self.state, self.node]

    @classmethod
    def from_list(cls, raw: Sequence[Any]) -> Transition:
        return cls(float(raw[0]), str(raw[1]), str(raw[2]) if len(raw) > 2 else "")


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    kind: str            # "up", "down" (unplanned) or "planned"
    cause: str | None    # None when up
    node: str

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Outage:
    """Consecutive down segments: one unavailability with the cause that started it."""

    start: float
    end: float
    cause: str
    node: str
    ongoing: bool = False
    phases: list[tuple[str, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3),
                "duration": round(self.seconds, 3), "cause": self.cause, "node": self.node,
                "ongoing": int(self.ongoing),
                "phases": [{"cause": c, "duration": round(s, 3)} for c, s in self.phases]}


def diff_states(recorded: Mapping[str, tuple[str, str]],
                current: Mapping[str, tuple[str, str]], now: float,
                lost_since: Mapping[str, float] | None = None,
                recorded_at: Mapping[str, float] | None = None) -> list[tuple[str, Transition]]:
    """The transitions that take the last recorded (state, node) of each service to the
    committed ones; a service gone from the manager status becomes `removed`.

    The CRM declares a node lost only when its lease is overdue, seconds after the node
    died; `lost_since` (each node the committed status has lost -> the last sign of life
    the master saw from it) backdates a service's move to `fence` to that moment, never
    before the service's previous transition (`recorded_at`), so an outage by node
    failure starts when the node failed. A service that went from its lost node straight
    to another (fence and recovery within one round of a new master) gets that `fence`
    transition too.
    """
    out: list[tuple[str, Transition]] = []
    lost_since = lost_since or {}
    for sid, (state, node) in sorted(current.items()):
        before = recorded.get(sid)
        if before == (state, node):
            continue
        if before is not None and before[1] in lost_since and before[0] not in FAILED_STATES \
                and (state == "fence" or (state in RECOVERED_STATES and node != before[1])):
            # the service's node was lost: the outage began with the node's last sign of
            # life (a new master may have done fence and recovery in one round: the fence
            # is recorded all the same, so the outage has its cause)
            floor = (recorded_at or {}).get(sid, float("-inf"))
            lost_at = min(now, max(lost_since[before[1]], floor))
            out.append((sid, Transition(lost_at, "fence", before[1])))
            if state == "fence" and node == before[1]:
                continue
        out.append((sid, Transition(now, state, node)))
    for sid, (state, node) in sorted(recorded.items()):
        if sid not in current and state != REMOVED:
            out.append((sid, Transition(now, REMOVED, node)))
    return out


def _classify(state: str, before: tuple[str, str | None] | None) -> tuple[str, str | None]:
    if state in UP_STATES:
        return "up", None
    if state in PLANNED_CAUSES:
        return "planned", PLANNED_CAUSES[state]
    if state in DOWN_CAUSES:
        return "down", DOWN_CAUSES[state]
    if state in STARTING_STATES:
        if before is None:
            return "planned", "start"        # a new service, or the log begins here
        kind, cause = before
        if kind == "up":
            return "down", "restart"
        return kind, cause                   # the rest of an outage or of a planned stop
    return "down", state                     # a state this version does not know


def segments(log: Iterable[Transition], since: float, until: float) -> list[Segment]:
    """The log cut to [since, until): what the service was, classified. Before the first
    transition nothing is known (no segment); the last one lasts until `until`."""
    out: list[Segment] = []
    entries = list(log)
    before: tuple[str, str | None] | None = None
    last_time = float("-inf")
    for i, tr in enumerate(entries):
        start = max(tr.time, last_time)
        last_time = start
        end = max(entries[i + 1].time, start) if i + 1 < len(entries) else until
        kind, cause = _classify(tr.state, before)
        before = (kind, cause)
        lo, hi = max(start, since), min(end, until)
        # (a zero-length state inside the window is kept: it names an outage's first cause
        # when a new master's clock stamps it no earlier than the next one)
        if hi > lo or since <= start < until:
            out.append(Segment(lo, hi, kind, cause, tr.node))
    return out


def outages(segs: Sequence[Segment], *, open_end: float | None = None,
            kind: str = "down") -> list[Outage]:
    """Merge touching segments of `kind` (down: outages; planned: planned stops). One
    reaching `open_end` (now) is `ongoing`."""
    result: list[Outage] = []
    for seg in segs:
        if seg.kind != kind:
            continue
        cur = result[-1] if result else None
        if cur is not None and abs(cur.end - seg.start) < 1e-6:
            cur.end = seg.end
        else:
            cur = Outage(seg.start, seg.end, str(seg.cause), seg.node)
            result.append(cur)
        cause = str(seg.cause)
        if cur.phases and cur.phases[-1][0] == cause:
            cur.phases[-1] = (cause, cur.phases[-1][1] + seg.seconds)
        else:
            cur.phases.append((cause, seg.seconds))
    result = [o for o in result if o.seconds > 0]
    if open_end is not None and result and abs(result[-1].end - open_end) < 1e-6:
        result[-1].ongoing = True
    return result


def availability_class(percent: float | None) -> str:
    """The best of the seeds' classes the availability reaches (`"< 99 %"` below all)."""
    if percent is None:
        return "n/a"
    for cls in CLASSES:
        if percent >= cls:
            return f"{cls:g} %"
    return "< 99 %"


def allowed_per_year(cls_percent: float) -> float:
    return (1 - cls_percent / 100) * YEAR


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """The calendar period (UTC) containing `now`: its start and its end (may be future)."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    day = dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC)
    if period == "day":
        start, end = day, day + dt.timedelta(days=1)
    elif period == "week":      # ISO weeks start on Monday
        start = day - dt.timedelta(days=t.weekday())
        end = start + dt.timedelta(days=7)
    elif period == "month":
        start = dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC)
        days = calendar.monthrange(t.year, t.month)[1]
        end = start + dt.timedelta(days=days)
    elif period == "year":
        start = dt.datetime(t.year, 1, 1, tzinfo=dt.UTC)
        end = dt.datetime(t.year + 1, 1, 1, tzinfo=dt.UTC)
    else:
        raise ValueError(f"unknown period '{period}' (one of {', '.join(PERIODS)})")
    return start.timestamp(), end.timestamp()


def period_label(period: str, since: float) -> str:
    t = dt.datetime.fromtimestamp(since, dt.UTC)
    return {"day": t.strftime("%Y-%m-%d"), "week": t.strftime("%G-W%V"),
            "month": t.strftime("%Y-%m"), "year": t.strftime("%Y")}.get(period, "")


def budget(target: float, downtime: float, since: float, until: float) -> dict[str, Any]:
    """The downtime a `target` % allows over the whole period [since, until), and its use."""
    allowed = (1 - target / 100) * (until - since)
    used = 100.0 if allowed <= 0 and downtime > 0 else \
        (100 * downtime / allowed if allowed > 0 else 0.0)
    return {"target": target, "allowed": round(allowed, 3), "used": round(downtime, 3),
            "used_percent": round(used, 2), "left": round(max(0.0, allowed - downtime), 3)}


def report(sid: str, log: Sequence[Transition], since: float, until: float, now: float,
           target: float | None = None) -> dict[str, Any]:
    """The availability report of one service over [since, until) as of `now`.

    `monitored` counts the seconds with a known state (from the first transition, never
    beyond `now`); availability is up / (monitored - planned), so an administrator's stop
    does not count against it. The budget, with a `target`, is over the whole period.
    """
    end = min(until, now)
    segs = segments(log, since, end)
    outs = outages(segs, open_end=now if end >= now else None)
    planned = outages(segs, open_end=now if end >= now else None, kind="planned")
    monitored = sum(s.seconds for s in segs)
    planned_s = sum(s.seconds for s in planned)
    downtime = sum(o.seconds for o in outs)
    counted = monitored - planned_s
    percent = None if counted <= 0 else round(100 * (1 - downtime / counted), 5)
    out: dict[str, Any] = {
        "sid": sid, "since": round(since, 3), "until": round(until, 3),
        "monitored": round(monitored, 3), "planned_downtime": round(planned_s, 3),
        "downtime": round(downtime, 3), "availability": percent,
        "class": availability_class(percent), "outages": len(outs),
        "longest": round(max((o.seconds for o in outs), default=0.0), 3),
        "mttr": round(downtime / len(outs), 3) if outs else 0.0,
        "outage_list": [o.to_dict() for o in outs],
        "planned_list": [p.to_dict() for p in planned],
    }
    if target is not None:
        out["budget"] = budget(target, downtime, since, until)
    return out
