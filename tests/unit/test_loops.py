"""binome.loops: the supervised periodic loop (cancellation, backoff, failure logging)."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Callable

import pytest

from binome import loops
from binome.loops import Backoff, FailureLog, run_periodic, sleep_or_wake, stop_tasks

log = logging.getLogger("test.loops")


class Expected(Exception):
    pass


def test_backoff_grows_to_its_maximum_and_resets() -> None:
    b = Backoff(initial=0.5, maximum=2.0)
    assert [b.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    b.reset()
    assert b.failed() == 0.5


async def test_runs_the_step_every_interval_until_cancelled() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1

    task = asyncio.create_task(run_periodic("job", step, 0.01, logger=log))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls >= 3


async def test_cancellation_inside_the_step_goes_through() -> None:
    entered = asyncio.Event()

    async def step() -> None:
        entered.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(run_periodic("job", step, 0.01, logger=log))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class Pauses:
    """Stands in for the loop's sleep: records each pause and returns at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[float] = []
        monkeypatch.setattr(loops, "sleep_or_wake", self.sleep)

    async def sleep(self, pause: float, wake: asyncio.Event | None = None) -> None:
        self.seen.append(round(pause, 6))
        await asyncio.sleep(0)


def failing_then(outcomes: list[Exception | None]) -> Callable[[], Awaitable[None]]:
    """A step raising or passing in the order given, then passing."""
    it = iter(outcomes)

    async def step() -> None:
        outcome = next(it, None)
        if outcome is not None:
            raise outcome
    return step


async def test_a_failing_step_does_not_end_the_loop_and_backs_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = Pauses(monkeypatch)
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise Expected("down")

    await run_periodic("job", step, 10.0, logger=log, quiet=(Expected,),
                       backoff=Backoff(initial=0.5, maximum=2.0), stop_when=lambda: calls >= 5)
    # the backoff, not the 10 s interval, paces the retries
    assert pauses.seen == [0.5, 1.0, 2.0, 2.0, 2.0]


async def test_without_backoff_a_failure_waits_the_regular_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = Pauses(monkeypatch)
    step = failing_then([Expected(), RuntimeError("x"), None])
    await run_periodic("job", step, 3.0, logger=log, quiet=(Expected,),
                       stop_when=lambda: len(pauses.seen) >= 3)
    assert pauses.seen == [3.0, 3.0, 3.0]


async def test_success_resets_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = Pauses(monkeypatch)
    step = failing_then([Expected(), Expected(), None, Expected()])
    await run_periodic("job", step, 7.0, logger=log, quiet=(Expected,),
                       backoff=Backoff(initial=0.1, maximum=1.0),
                       stop_when=lambda: len(pauses.seen) >= 5)
    assert pauses.seen == [0.1, 0.2, 7.0, 0.1, 7.0]


async def test_fixed_rate_counts_the_interval_from_the_step_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = Pauses(monkeypatch)
    clock = [100.0]
    monkeypatch.setattr(loops, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    async def step() -> None:
        clock[0] += 0.3   # the step takes 0.3 s

    await run_periodic("job", step, 1.0, logger=log, fixed_rate=True, min_pause=0.02,
                       stop_when=lambda: len(pauses.seen) >= 1)
    assert pauses.seen == [0.7]
    pauses.seen.clear()

    async def slow_step() -> None:
        clock[0] += 5.0   # longer than the interval: only the floor is left

    await run_periodic("job", slow_step, 1.0, logger=log, fixed_rate=True, min_pause=0.02,
                       stop_when=lambda: len(pauses.seen) >= 1)
    assert pauses.seen == [0.02]


async def test_step_may_choose_its_pause_and_stop_when_ends_the_loop() -> None:
    calls = 0

    async def step() -> float:
        nonlocal calls
        calls += 1
        return 0.0

    await asyncio.wait_for(run_periodic("job", step, 3600.0, logger=log,
                                        stop_when=lambda: calls >= 5), 2.0)
    assert calls == 5


async def test_wake_cuts_the_pause_short() -> None:
    wake = asyncio.Event()
    ran = asyncio.Queue[int]()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        ran.put_nowait(calls)

    task = asyncio.create_task(run_periodic("job", step, 3600.0, logger=log, wake=wake))
    assert await asyncio.wait_for(ran.get(), 2.0) == 1
    wake.set()
    assert await asyncio.wait_for(ran.get(), 2.0) == 2   # not after the hour
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_unexpected_failures_log_one_traceback_per_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    outcomes = iter([RuntimeError("boom")] * 8 + [None])

    async def step() -> None:
        outcome = next(outcomes, None)
        if outcome is not None:
            raise outcome

    caplog.set_level(logging.DEBUG, logger="test.loops")
    await asyncio.wait_for(run_periodic("job", step, 0.0, logger=log,
                                        stop_when=lambda: any("works again" in r.getMessage()
                                                              for r in caplog.records)), 2.0)
    records = [r for r in caplog.records if r.name == "test.loops"]
    with_traceback = [r for r in records if r.exc_info]
    assert len(with_traceback) == 1
    assert with_traceback[0].levelno == logging.ERROR
    assert with_traceback[0].getMessage() == "job failed"
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [f"job failed again ({n} times in a row): RuntimeError: boom"
                        for n in (2, 4, 8)]
    assert records[-1].levelno == logging.INFO
    assert records[-1].getMessage() == "job works again after 8 failure(s)"


async def test_quiet_failures_are_debug_lines_without_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise Expected("etcd unreachable")

    caplog.set_level(logging.DEBUG, logger="test.loops")
    await asyncio.wait_for(run_periodic("job", step, 0.0, logger=log, quiet=(Expected,),
                                        stop_when=lambda: calls >= 3), 2.0)
    records = [r for r in caplog.records if r.name == "test.loops"]
    assert [r.getMessage() for r in records] == ["job failed: etcd unreachable"] * 3
    assert all(r.levelno == logging.DEBUG and not r.exc_info for r in records)


def test_a_different_failure_gets_its_own_traceback(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog("job", log)
    caplog.set_level(logging.DEBUG, logger="test.loops")
    failures.failed(RuntimeError("a"))
    failures.failed(RuntimeError("a"))
    failures.failed(ValueError("b"))
    assert [bool(r.exc_info) for r in caplog.records] == [True, False, True]


async def test_sleep_or_wake_returns_at_once_if_already_woken() -> None:
    wake = asyncio.Event()
    wake.set()
    await asyncio.wait_for(sleep_or_wake(3600.0, wake), 1.0)


async def test_stop_tasks_cancels_until_done_and_collects_failures() -> None:
    stubborn_cancels = 0

    async def stubborn() -> None:
        nonlocal stubborn_cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                stubborn_cancels += 1
                if stubborn_cancels >= 2:
                    raise

    async def failing() -> None:
        raise RuntimeError("already failed")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(failing())]
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_tasks(tasks, poll=0.01), 2.0)
    assert all(t.done() for t in tasks)
    assert stubborn_cancels == 2
