"""The pacing of the HA agent's supervised loops (heartbeat, rounds, watch).

The loops run on `binome.loops.run_periodic`; these tests pin the pauses they take
(the heartbeat's fixed rate and quick retry, the rounds' fixed rate and floor, the
watch's backoff), with the loop's sleep and clock replaced so that nothing waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest

from binome import loops
from binome.ha.agent import agent
from binome.ha.agent.agent import HaAgent
from binome.ha.timers import HaTimers
from binome.store.client import StoreUnavailable

pytestmark = pytest.mark.unit


class Clock:
    """The loop's monotonic clock and sleep: each pause is recorded, and advances time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []
        monkeypatch.setattr(loops, "time", types.SimpleNamespace(monotonic=lambda: self.now))
        monkeypatch.setattr(loops, "sleep_or_wake", self.sleep)

    async def sleep(self, pause: float, wake: asyncio.Event | None = None) -> None:
        self.pauses.append(round(pause, 6))
        self.now += pause
        await asyncio.sleep(0)


def shell() -> HaAgent:
    """An HaAgent with only what its loops read (no cluster, no store); a test's fake
    step sets `_stopping` at its last call, and the loop ends after that step's pause."""
    hub = HaAgent.__new__(HaAgent)
    hub.timers = HaTimers(lease_ttl=10.0, keepalive_interval=1.0)
    hub.node = "n1"
    hub.io_timeout = 0.8
    hub._wake = asyncio.Event()
    hub._debounce_handle = None
    hub._stopping = False
    return hub


async def test_heartbeat_keeps_a_fixed_rate_and_retries_a_miss_quickly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    outcomes: list[object] = [True, False, StoreUnavailable("down"), RuntimeError("bug"), True]
    seqs: list[int] = []
    hub = shell()

    async def heartbeat(seq: int) -> bool:
        seqs.append(seq)
        hub._stopping = len(seqs) == len(outcomes)
        clock.now += 0.3   # each renewal takes 0.3 s
        outcome = outcomes[seq]
        if isinstance(outcome, Exception):
            raise outcome
        return bool(outcome)

    monkeypatch.setattr(hub, "_heartbeat", heartbeat)
    await hub._heartbeat_loop()
    # interval 1.0 from each send; a refused, unreachable or failed renewal: 0.2 s
    assert clock.pauses == [0.7, 0.2, 0.2, 0.2, 0.7]
    assert seqs == [0, 1, 2, 3, 4]   # a failed attempt uses up its number too


async def test_heartbeat_pause_never_below_its_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    hub = shell()

    async def slow(seq: int) -> bool:
        clock.now += 5.0
        hub._stopping = True
        return True

    monkeypatch.setattr(hub, "_heartbeat", slow)
    await hub._heartbeat_loop()
    assert clock.pauses == [agent.HEARTBEAT_MIN_PAUSE]


async def test_rounds_keep_a_fixed_rate_even_when_one_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    hub = shell()
    durations = [0.1, 0.2, 9.0]

    async def round_() -> None:
        clock.now += durations[len(clock.pauses)]
        hub._stopping = len(clock.pauses) == len(durations) - 1
        if len(clock.pauses) == 1:
            raise RuntimeError("a round bug")

    monkeypatch.setattr(hub, "round", round_)
    await hub._round_loop()
    rnd = hub.timers.manager_round
    assert clock.pauses == [round(rnd - 0.1, 6), round(rnd - 0.2, 6),
                            agent.ROUND_MIN_PAUSE]


async def test_watch_backs_off_until_established_then_starts_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    opened: list[int] = []
    # the first five attempts fail, the 6th is established then breaks, the 7th fails
    plan = [False] * 5 + [True, False]

    class Store:
        @contextlib.asynccontextmanager
        async def watch_prefixes(self, *args: Any, **kw: Any
                                 ) -> AsyncIterator[AsyncIterator[Any]]:
            opened.append(len(opened))
            hub._stopping = len(opened) == len(plan)
            if not plan[len(opened) - 1]:
                raise StoreUnavailable("no etcd")

            async def events() -> AsyncIterator[Any]:
                raise StoreUnavailable("watch ended")
                yield   # an async generator
            yield events()

    hub = shell()
    hub.cluster = types.SimpleNamespace(store=Store())   # type: ignore[assignment]
    hub._debounce = types.SimpleNamespace(reset=lambda: None)   # type: ignore[assignment]
    monkeypatch.setattr(hub, "_watch_event", lambda: None)
    await hub._watch_loop()
    assert clock.pauses == [0.5, 1.0, 2.0, 4.0, 5.0, 0.5, 1.0]
