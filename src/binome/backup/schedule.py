"""When a backup job runs on a node: PVE's job state machine (`PVE::Jobs`), pure.

Each node keeps, per job, a small state (PVE's `/var/lib/pve-manager/jobs/vzdump-<id>.json`:
`created` when first seen, `starting`/`started` while a run is on, `stopped` with the
result message after it) and decides from it alone, so nodes never coordinate: each
node backs up the job's guests it holds. The last runtime is the `updated` time (the
schedule or `enabled` changed, or the daemon started and the job does not
`repeat-missed`), else the start of the last run, else the creation time; the job is due
when the first calendar event after that last runtime has passed. Hence a job never runs
twice for one event, and after a downtime a `repeat-missed` job runs once at start, the
others wait for their next event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, tzinfo
from typing import Any

from binome.backup.calendar import CalendarError, parse_calendar_event

#: the job settings whose change resets the last runtime (PVE's saved_config_props)
SAVED_PROPS = ("enabled", "schedule")


@dataclass(frozen=True)
class JobState:
    state: str = "created"               # created | starting | started | stopped
    time: float = 0.0                    # creation, or start of the last run
    updated: float | None = None         # a saved prop changed, or a missed run skipped
    upid: str | None = None
    msg: str | None = None               # result of the last run (stopped)
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JobState:
        return cls(state=str(doc.get("state", "created")), time=float(doc.get("time", 0)),
                   updated=None if doc.get("updated") is None else float(doc["updated"]),
                   upid=doc.get("upid"), msg=doc.get("msg"),
                   config=dict(doc.get("config") or {}))


def _saved(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in SAVED_PROPS if k in job}


def synchronize(state: JobState | None, job: dict[str, Any], now: float) -> JobState:
    """The state after seeing the job's config: created if new; `updated` if its schedule
    or enabled flag changed since the state last saw them. Both take the change's time
    the job record carries (`_changed`, written by the API node), else `now`."""
    changed = float(job.get("_changed") or now)
    if state is None:
        return JobState(state="created", time=min(changed, now), config=_saved(job))
    saved = _saved(job)
    if {k: str(v) for k, v in saved.items()} == {k: str(v) for k, v in state.config.items()}:
        return state
    return replace(state, config=saved, updated=min(changed, now))


def on_daemon_start(state: JobState, job: dict[str, Any], now: float,
                    running: bool = False) -> JobState:
    """At the first round after a start: a run the daemon lost is stopped (it cannot be
    running any more), and a job without `repeat-missed` forgets the events it missed."""
    if state.state in ("starting", "started") and not running:
        state = replace(state, state="stopped", msg=state.msg or "unknown (daemon restarted)")
    if not job.get("repeat-missed"):
        state = replace(state, updated=now)
    return state


def last_runtime(state: JobState, upid_start: float | None = None) -> float:
    """PVE's get_last_runtime: `updated`, else the last run's start, else `time`."""
    if state.updated is not None:
        return state.updated
    if state.upid is not None and upid_start is not None:
        return upid_start
    return state.time


def next_run(schedule: str, last_run: float, tz: tzinfo | None = None) -> float | None:
    """The epoch of the first event of `schedule` strictly after `last_run`."""
    # local time unless told (PVE's calendar events are in the node's time zone)
    after = datetime.fromtimestamp(last_run, tz) if tz else \
        datetime.fromtimestamp(last_run).astimezone()
    found = parse_calendar_event(schedule).next_run(after, after.tzinfo)
    return None if found is None else found.timestamp()


def is_due(job: dict[str, Any], state: JobState, now: float,
           tz: tzinfo | None = None) -> bool:
    """Whether the job should start now on this node (enabled, not running, its next
    event after the last runtime has come). A bad schedule is never due."""
    if not job.get("enabled", 1) or state.state in ("starting", "started"):
        return False
    try:
        when = next_run(str(job.get("schedule", "")), last_runtime(state, state.time), tz)
    except CalendarError:
        return False
    return when is not None and now >= when


def job_next_run(job: dict[str, Any], state: JobState | None, now: float,
                 tz: tzinfo | None = None) -> int | None:
    """What the API lists as `next-run` (None when disabled or never)."""
    if not job.get("enabled", 1):
        return None
    base = last_runtime(state, state.time) if state is not None else now
    try:
        when = next_run(str(job.get("schedule", "")), base, tz)
    except CalendarError:
        return None
    return None if when is None else int(when)


def starting(state: JobState, now: float) -> JobState:
    return JobState(state="starting", time=now, config=state.config)


def started(state: JobState, upid: str) -> JobState:
    return JobState(state="started", time=state.time, upid=upid, config=state.config)


def stopped(state: JobState, msg: str, now: float | None = None) -> JobState:
    """The run ended with `msg` (`OK` or the error); keeps its start time, and a change of
    the schedule seen while it ran (PVE's update_job_stopped keeps `updated`)."""
    return JobState(state="stopped", time=state.time if now is None else now,
                    updated=state.updated, upid=state.upid, msg=msg, config=state.config)
