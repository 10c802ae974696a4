"""When a backup job runs: PVE's job state rules (binome.backup.schedule, pure) and the
node scheduler driven by a fake clock (binome.daemon.backupjobs.BackupScheduler) with
its state files in a temporary directory, across a simulated daemon restart."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from binome.backup import schedule
from binome.backup.schedule import JobState
from binome.daemon.backupjobs import BackupScheduler, JobStateFiles


def _t(hour: int, minute: int = 0, second: int = 0, day: int = 7) -> float:
    return datetime(2026, 12, day, hour, minute, second, tzinfo=UTC).timestamp()


DAILY_20 = {"type": "vzdump", "schedule": "20:00", "all": 1}


def test_due_after_the_next_event_following_the_last_run() -> None:
    state = schedule.synchronize(None, DAILY_20, _t(12))
    assert state.state == "created" and state.time == _t(12)
    assert not schedule.is_due(DAILY_20, state, _t(19, 59, 59), UTC)
    assert schedule.is_due(DAILY_20, state, _t(20), UTC)
    ran = schedule.stopped(schedule.started(schedule.starting(state, _t(20)), "UPID"), "OK")
    assert ran.time == _t(20) and ran.msg == "OK"
    assert not schedule.is_due(DAILY_20, ran, _t(23), UTC)
    assert schedule.is_due(DAILY_20, ran, _t(20, day=8), UTC)


def test_running_disabled_and_bad_schedules_are_never_due() -> None:
    state = schedule.synchronize(None, DAILY_20, _t(12))
    assert not schedule.is_due(DAILY_20, schedule.starting(state, _t(20)), _t(21), UTC)
    assert not schedule.is_due({**DAILY_20, "enabled": 0}, state, _t(21), UTC)
    assert not schedule.is_due({**DAILY_20, "schedule": "bogus"}, state, _t(21), UTC)
    assert schedule.job_next_run({**DAILY_20, "enabled": 0}, None, _t(12), UTC) is None
    assert schedule.job_next_run(DAILY_20, None, _t(12), UTC) == int(_t(20))


def test_schedule_change_counts_from_the_change() -> None:
    state = schedule.synchronize(None, DAILY_20, _t(12))
    changed = {**DAILY_20, "schedule": "21:00", "_changed": _t(20, 30)}
    state = schedule.synchronize(state, changed, _t(20, 31))
    assert state.updated == _t(20, 30)
    assert schedule.last_runtime(state) == _t(20, 30)
    assert not schedule.is_due(changed, state, _t(20, 59), UTC)
    assert schedule.is_due(changed, state, _t(21), UTC)
    # changed while a run was on: the run's end keeps the change's time
    running = schedule.started(schedule.starting(state, _t(21)), "UPID")
    hourly = {**changed, "schedule": "hourly", "_changed": _t(21, 30)}
    running = schedule.synchronize(running, hourly, _t(21, 31))
    ended = schedule.stopped(running, "OK")
    assert ended.updated == _t(21, 30) and not schedule.is_due(hourly, ended, _t(21, 59), UTC)
    assert schedule.is_due(hourly, ended, _t(22), UTC)
    # a node seeing a job late still counts from its creation: the near event is not lost
    late = schedule.synchronize(None, {**DAILY_20, "_changed": _t(19, 59)}, _t(20, 0, 4))
    assert schedule.is_due(DAILY_20, late, _t(20, 0, 4), UTC)


def test_daemon_start_and_repeat_missed() -> None:
    ran = JobState(state="stopped", time=_t(20), msg="OK")
    after_downtime = _t(21, day=9)            # the 8th's 20:00 was missed
    skip = schedule.on_daemon_start(ran, DAILY_20, after_downtime)
    assert not schedule.is_due(DAILY_20, skip, after_downtime, UTC)
    repeat = {**DAILY_20, "repeat-missed": 1}
    catch_up = schedule.on_daemon_start(ran, repeat, after_downtime)
    assert schedule.is_due(repeat, catch_up, after_downtime, UTC)
    lost = schedule.on_daemon_start(JobState(state="started", time=_t(20), upid="U"),
                                    repeat, after_downtime)
    assert lost.state == "stopped" and "restarted" in (lost.msg or "")
    assert JobState.from_json(lost.to_json()) == lost


class FakeNode:
    """The scheduler's inputs: a job table, a clock and a runner recording its calls."""

    def __init__(self, state_dir: Path) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.now = _t(12)
        self.runs: list[tuple[str, float]] = []
        self.finish: dict[str, Any] = {}
        self.state_dir = state_dir

    async def read_jobs(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.jobs.items()}

    async def run(self, job_id: str, job: dict[str, Any], finished: Any) -> str | None:
        self.runs.append((job_id, self.now))
        self.finish[job_id] = finished
        return f"UPID:{job_id}:{len(self.runs)}"

    def scheduler(self, node: str = "n1") -> BackupScheduler:
        return BackupScheduler(node, self.read_jobs, JobStateFiles(self.state_dir),
                               self.run, clock=lambda: self.now, tz=UTC)


async def test_scheduler_runs_each_event_once_and_survives_restart(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.jobs = {"daily": {**DAILY_20, "_changed": _t(11)},
                 "other-node": {**DAILY_20, "node": "n2", "_changed": _t(11)}}
    sched = node.scheduler()
    assert await sched.tick() == []
    node.now = _t(20, 0, 3)
    assert await sched.tick() == ["daily"]
    node.now = _t(20, 0, 8)
    assert await sched.tick() == []            # still running: not started twice
    node.finish["daily"]("OK")
    assert await sched.tick() == []            # this event is done
    state = JobStateFiles(tmp_path).read("daily")
    assert state is not None and state.state == "stopped" and state.msg == "OK"
    assert JobStateFiles(tmp_path).read("other-node") is None

    # daemon down over the 8th's 20:00, back on the 8th at 21:00: missed, not repeated
    node.now = _t(21, day=8)
    restarted = node.scheduler()
    assert await restarted.tick() == []
    node.now = _t(20, 0, 1, day=9)
    assert await restarted.tick() == ["daily"]
    assert [t for _, t in node.runs] == [_t(20, 0, 3), _t(20, 0, 1, day=9)]


async def test_scheduler_repeat_missed_runs_once_at_start(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.jobs = {"daily": {**DAILY_20, "repeat-missed": 1, "_changed": _t(11)}}
    sched = node.scheduler()
    node.now = _t(20, 0, 1)
    assert await sched.tick() == ["daily"]
    node.finish["daily"]("job errors")
    node.now = _t(9, day=9)                    # restarted after missing the 8th
    restarted = node.scheduler()
    assert await restarted.tick() == ["daily"]
    node.finish["daily"]("OK")
    assert await restarted.tick() == []
    node.jobs.clear()                          # job removed: its state goes too
    await restarted.tick()
    assert JobStateFiles(tmp_path).job_ids() == []


async def test_nothing_to_do_here_still_counts_as_a_run(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.jobs = {"daily": {**DAILY_20, "_changed": _t(11)}}

    async def nothing(job_id: str, job: dict[str, Any], finished: Any) -> None:
        node.runs.append((job_id, node.now))
        return None

    sched = BackupScheduler("n1", node.read_jobs, JobStateFiles(tmp_path), nothing,
                            clock=lambda: node.now, tz=UTC)
    assert await sched.tick() == []            # 12:00, the daemon's first round
    node.now = _t(20, 0, 1)
    assert await sched.tick() == ["daily"]
    node.now = _t(20, 0, 6)
    assert await sched.tick() == []
    assert len(node.runs) == 1
