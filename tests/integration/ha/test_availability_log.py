"""The availability history in a real etcd (ha.availability_log) written by the master's
recorder (ha.agent.availability): compare-and-swap on the manager lock, catch-up after a
failover, bounded size, budget notifications once per level and month."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from binome.ha import availability as av
from binome.ha.agent.availability import AvailabilityRecorder
from binome.ha.availability_log import MAX_ENTRIES, AvailabilityLog, ServiceRecord, trim
from binome.store import keys
from binome.store.client import Store
from tests.integration.single_etcd import empty_store, single_etcd

ADDRESS = f"127.{os.getpid() % 200 + 20}.84.1"
T0 = 1_796_083_200.0 + 86400      # 2026-12-02 00:00 UTC: a 31-day month


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with single_etcd(tmp_path_factory.mktemp("etcd"), ADDRESS, "avail-test") as paths:
        yield paths


@pytest.fixture
async def store(etcd: dict[str, Path]) -> AsyncIterator[Store]:
    s = await empty_store(etcd, ADDRESS)
    yield s
    await s.close()


async def _lock(store: Store, node: str) -> int:
    await store.put(keys.HA_MANAGER_LOCK, node)
    entry = await store.get(keys.HA_MANAGER_LOCK)
    assert entry is not None
    return entry.mod_revision


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def test_master_records_failover_catches_up_and_notifies_once(store: Store) -> None:
    clock, notes = Clock(), []
    lock = await _lock(store, "n1")

    def recorder() -> AvailabilityRecorder:
        return AvailabilityRecorder(lambda: store,
                                    lambda kind, **f: notes.append((kind, f)), clock=clock)

    n1 = recorder()
    n1.offer({"vm:100": ("started", "n1")}, lock, 99.9)
    assert await n1.sync()
    clock.now += 100
    n1.offer({"vm:100": ("started", "n1")}, lock, 99.9)   # nothing changed: nothing written
    assert await n1.sync()
    rev = (await store.get(keys.availability("vm:100"))).mod_revision

    # n1's node dies at T0+200 (its last renewal); n2 becomes master; the lock moves
    lock2 = await _lock(store, "n2")
    clock.now = T0 + 2200
    n1.offer({"vm:100": ("stopped", "n1")}, lock, 99.9)        # the old master, late
    assert not await n1.sync()                                  # refused: not the lock holder
    assert (await store.get(keys.availability("vm:100"))).mod_revision == rev
    n2 = recorder()
    n2.offer({"vm:100": ("starting", "n2")}, lock2, 99.9, {"n1": T0 + 200})
    assert await n2.sync()
    clock.now = T0 + 2205
    n2.offer({"vm:100": ("started", "n2")}, lock2, 99.9)
    assert await n2.sync()

    records = await AvailabilityLog(store).load()
    log = records["vm:100"].log
    assert [(t.time - T0, t.state, t.node) for t in log] == [
        (0, "started", "n1"), (200, "fence", "n1"), (2200, "starting", "n2"),
        (2205, "started", "n2")]
    rep = av.report("vm:100", log, *av.period_bounds("month", clock.now), clock.now, 99.9)
    assert rep["downtime"] == 2005 and rep["outage_list"][0]["cause"] == "fencing"
    # 99.9 % of 31 days allows 2678.4 s: 2005 s is 75 %: no notification yet
    assert notes == []

    # another 300 s outage (error): 2305 s = 86 % -> "nearly", once
    clock.now = T0 + 3000
    n2._last_budget_check = float("-inf")
    n2.offer({"vm:100": ("error", "n2")}, lock2, 99.9)
    assert await n2.sync()
    clock.now = T0 + 3300
    n2._last_budget_check = float("-inf")
    n2.offer({"vm:100": ("error", "n2")}, lock2, 99.9)
    assert await n2.sync()
    assert [k for k, _ in notes] == ["availability-budget-nearly"]
    assert notes[0][1]["sid"] == "vm:100" and notes[0][1]["month"] == "2026-12"

    # a new master (n1 again) does not repeat it; past the budget: "exceeded", once
    lock3 = await _lock(store, "n1")
    n1 = recorder()
    clock.now = T0 + 3310
    n1.offer({"vm:100": ("error", "n2")}, lock3, 99.9)
    assert await n1.sync()
    assert len(notes) == 1
    clock.now = T0 + 3700
    n1._last_budget_check = float("-inf")
    n1.offer({"vm:100": ("error", "n2")}, lock3, 99.9)
    assert await n1.sync()
    assert [k for k, _ in notes] == ["availability-budget-nearly",
                                     "availability-budget-exceeded"]
    fields: dict[str, Any] = notes[1][1]
    assert fields["downtime"] == 2705 and fields["budget"] == 2678
    assert (await AvailabilityLog(store).load("vm:100"))["vm:100"].notified == {"2026-12": 100.0}


async def test_removed_service_and_bounded_log(store: Store) -> None:
    lock = await _lock(store, "n1")
    rec = ServiceRecord("vm:200", [av.Transition(T0 + i, "started" if i % 2 else "error", "n1")
                                   for i in range(MAX_ENTRIES + 50)])
    assert await AvailabilityLog(store).save({"vm:200": rec}, lock, T0 + MAX_ENTRIES + 50)
    stored = (await AvailabilityLog(store).load("vm:200"))["vm:200"]
    assert len(stored.log) == MAX_ENTRIES and stored.log[-1].time == T0 + MAX_ENTRIES + 49
    # older than MAX_AGE: dropped, but the last state is always kept
    assert [t.time for t in trim(stored.log, T0 + 10**9)] == [stored.log[-1].time]

    clock = Clock()
    r = AvailabilityRecorder(lambda: store, lambda *a, **k: None, clock=clock)
    r.offer({}, lock, None)             # vm:200 left the manager status
    assert await r.sync()
    last = (await AvailabilityLog(store).load("vm:200"))["vm:200"].log[-1]
    assert (last.state, last.node) == (av.REMOVED, "n1")
    # a stale write (wrong key revision) is refused as a whole
    stale = ServiceRecord("vm:200", [av.Transition(T0, "started", "n1")], revision=1)
    assert not await AvailabilityLog(store).save({"vm:200": stale}, lock, T0)


async def test_a_service_is_held_to_its_own_target(store: Store) -> None:
    """vm:300 has its own 99.99 % target (a resource option), vm:301 the cluster's 99 %:
    the same 300 s outage uses 112 % of vm:300's monthly budget (267.8 s) and 11 % of
    vm:301's (26784 s): only vm:300 is told, against its own target."""
    clock, notes = Clock(), []
    lock = await _lock(store, "n1")
    r = AvailabilityRecorder(lambda: store, lambda kind, **f: notes.append((kind, f)),
                             clock=clock)
    own = {"vm:300": 99.99}
    r.offer({"vm:300": ("started", "n1"), "vm:301": ("started", "n1")}, lock, 99.0, None, own)
    assert await r.sync()
    clock.now = T0 + 100
    r.offer({"vm:300": ("error", "n1"), "vm:301": ("error", "n1")}, lock, 99.0, None, own)
    assert await r.sync()
    clock.now = T0 + 400
    r._last_budget_check = float("-inf")
    r.offer({"vm:300": ("error", "n1"), "vm:301": ("error", "n1")}, lock, 99.0, None, own)
    assert await r.sync()
    assert [(k, f["sid"]) for k, f in notes] == [("availability-budget-exceeded", "vm:300")]
    assert notes[0][1]["target"] == "99.99 % (its own target)"
    assert notes[0][1]["budget"] == 267
