"""Usage history in SQLite: PVE's archives, PDP consolidation, rates, restarts, bounds."""

from __future__ import annotations

import asyncio

import pytest

from binome.daemon.rrd import (
    COUNTERS,
    ROWS,
    TIMEFRAMES,
    RrdStore,
    guest_series,
    node_series,
    sample_forever,
)

pytestmark = pytest.mark.unit

T0 = 604800 * 2800          # aligned to every timeframe's step
NODE = node_series()


@pytest.fixture
def store(tmp_path):
    s = RrdStore(tmp_path / "rrd.sqlite")
    yield s
    s.close()


def _values(points, field):
    return {p["time"]: p[field] for p in points if field in p}


def test_timeframes_as_pve():
    # PVE: --step 60, RRA:{AVERAGE,MAX}:0.5:{1,30,180,720,10080}:70
    assert {tf: step for tf, (step, _) in TIMEFRAMES.items()} == {
        "hour": 60, "day": 1800, "week": 10800, "month": 43200, "year": 604800}
    assert all(rows == 70 for _, rows in TIMEFRAMES.values())
    assert set(COUNTERS) == {"netin", "netout", "diskread", "diskwrite"}


def test_fetch_gives_the_archive_rows_up_to_now(store):
    store.add({NODE: {"cpu": 0.5}}, now=T0 + 5)
    for tf, (step, rows) in TIMEFRAMES.items():
        points = store.fetch(NODE, tf, now=T0 + 5)
        assert len(points) == rows
        assert [p["time"] for p in points] == [T0 - (rows - 1 - i) * step for i in range(rows)]
        assert all(set(p) == {"time"} for p in points[:-1])    # PVE's unknown rows
    assert store.fetch(NODE, "hour", now=T0 + 5)[-1] == {"time": T0, "cpu": 0.5}


def test_hour_rows_are_the_minute_averages_and_max_equals_average(store):
    for t, cpu in ((1, 0.2), (30, 0.6), (59, 1.0), (60, 0.5)):
        store.add({NODE: {"cpu": cpu}}, now=T0 + t)
    avg = _values(store.fetch(NODE, "hour", now=T0 + 60), "cpu")
    assert avg == {T0: pytest.approx(0.6), T0 + 60: 0.5}
    # one PDP per hour row: PVE's MAX archive holds the same value
    assert _values(store.fetch(NODE, "hour", "MAX", now=T0 + 60), "cpu") == avg


def test_coarse_rows_consolidate_finished_minutes(store):
    # minutes with averages 0.6, 0.5, 0.1; the third is still open when fetched
    samples = [(1, 0.2), (30, 0.6), (59, 1.0), (60, 0.4), (90, 0.6), (125, 0.1)]
    for t, cpu in samples:
        store.add({NODE: {"cpu": cpu}}, now=T0 + t)
    now = T0 + 125
    for tf in ("day", "week", "month", "year"):
        assert _values(store.fetch(NODE, tf, "AVERAGE", now=now), "cpu") == {
            T0: pytest.approx(0.55)}, tf
        assert _values(store.fetch(NODE, tf, "MAX", now=now), "cpu") == {
            T0: pytest.approx(0.6)}, tf       # the max of the minute averages, not of 1.0


def test_day_rows_split_on_their_boundary(store):
    # one sample per minute for 40 minutes: day rows of 30 minutes
    for i in range(41):
        store.add({NODE: {"mem": float(i)}}, now=T0 + i * 60 + 1)
    day = _values(store.fetch(NODE, "day", now=T0 + 40 * 60 + 1), "mem")
    assert day == {T0: pytest.approx(sum(range(30)) / 30),
                   T0 + 1800: pytest.approx(sum(range(30, 40)) / 10)}
    assert _values(store.fetch(NODE, "day", "MAX", now=T0 + 40 * 60 + 1), "mem") == {
        T0: 29.0, T0 + 1800: 39.0}


def test_max_of_negative_values(store):
    for i, x in enumerate((-5.0, -2.0, -9.0)):
        store.add({NODE: {"x": x}}, now=T0 + i * 60)
    assert _values(store.fetch(NODE, "day", "MAX", now=T0 + 120), "x") == {T0: -2.0}


def test_counters_become_rates(store):
    g = guest_series(100)
    store.add({g: {"netin": 1000, "diskwrite": 0, "cpu": 0.1}}, now=T0)
    store.add({g: {"netin": 7000, "diskwrite": 600, "cpu": 0.1}}, now=T0 + 60)
    store.add({g: {"netin": 10000, "diskwrite": 600, "cpu": 0.1}}, now=T0 + 120)
    points = store.fetch(g, "hour", now=T0 + 120)[-3:]
    assert points[0] == {"time": T0, "cpu": 0.1}          # no rate yet, raw value not kept
    assert points[1]["netin"] == pytest.approx(100.0)     # 6000 B / 60 s
    assert points[1]["diskwrite"] == pytest.approx(10.0)
    assert points[2]["netin"] == pytest.approx(50.0)
    assert points[2]["diskwrite"] == 0.0


def test_counter_reset_gives_no_rate_for_that_sample(store):
    for t, v in ((0, 5000), (60, 11000), (120, 300), (180, 1500)):
        store.add({NODE: {"netout": v}}, now=T0 + t)
    assert _values(store.fetch(NODE, "hour", now=T0 + 180), "netout") == {
        T0 + 60: pytest.approx(100.0), T0 + 180: pytest.approx(20.0)}


def test_series_are_apart(store):
    store.add({NODE: {"cpu": 0.9}, guest_series(100): {"cpu": 0.1},
               guest_series(101): {"cpu": 0.2}}, now=T0)
    assert store.fetch(guest_series(100), "hour", now=T0)[-1] == {"time": T0, "cpu": 0.1}
    assert store.fetch(guest_series(101), "hour", now=T0)[-1] == {"time": T0, "cpu": 0.2}
    assert store.fetch(guest_series(102), "hour", now=T0)[-1] == {"time": T0}


def test_history_survives_a_restart_and_the_open_minute_is_folded_after_it(tmp_path):
    path = tmp_path / "rrd.sqlite"
    first = RrdStore(path)
    first.add({NODE: {"cpu": 0.2}}, now=T0 + 1)
    first.add({NODE: {"cpu": 0.4}}, now=T0 + 61)
    first.close()                         # the daemon stops with minute T0+60 still open
    second = RrdStore(path)
    try:
        assert _values(second.fetch(NODE, "hour", now=T0 + 200), "cpu") == {
            T0: pytest.approx(0.2), T0 + 60: pytest.approx(0.4)}
        second.add({NODE: {"cpu": 0.9}}, now=T0 + 300)
        # the minute left open by the first daemon is in the day row now
        assert _values(second.fetch(NODE, "day", now=T0 + 300), "cpu") == {
            T0: pytest.approx(0.3)}
    finally:
        second.close()


def test_history_survives_a_crash_without_close(tmp_path):
    """Each step is a committed WAL transaction: a killed daemon loses nothing written."""
    import subprocess
    import sys

    path = tmp_path / "rrd.sqlite"
    code = (f"import os; from binome.daemon.rrd import RrdStore\n"
            f"s = RrdStore(__import__('pathlib').Path({str(path)!r}))\n"
            f"s.add({{'node': {{'cpu': 0.25}}}}, now={T0 + 1})\n"
            f"os._exit(0)\n")                # no close, no checkpoint
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    after = RrdStore(path)
    try:
        assert after.fetch(NODE, "hour", now=T0 + 1)[-1] == {"time": T0, "cpu": 0.25}
    finally:
        after.close()


def test_size_stays_bounded_over_two_simulated_years(tmp_path):
    path = tmp_path / "rrd.sqlite"
    store = RrdStore(path)
    fields = {"cpu": 0.5, "mem": 1e9, "maxmem": 2e9}
    full = ROWS * 2 * len(fields)                 # 70 rows per series and field
    try:
        for i in range(200):                      # 200 minutes: the hour archive is full
            store.add({NODE: fields, guest_series(100): fields}, now=T0 + i * 60)
        assert store.size()["hour"] == full
        assert store.size()["day"] == 2 * len(fields) * 7        # 200 min: 7 day rows
        sizes = []
        start = T0 + 200 * 60
        for day in range(2 * 365):                # then one sample a day for two years
            store.add({NODE: fields, guest_series(100): fields}, now=start + day * 86400)
            if day % 90 == 0:
                sizes.append(path.stat().st_size
                             + path.with_name(path.name + "-wal").stat().st_size)
        rows = store.size()
        assert all(rows[tf] <= full for tf in TIMEFRAMES), rows
        assert rows["year"] == full               # two years fill the 70-week archive
        # the files stop growing once the archives are full (the year's after 70 weeks)
        assert sizes[-1] <= sizes[len(sizes) // 2] * 1.05, sizes
        assert sizes[-1] < 2 << 20
    finally:
        store.close()


def test_rows_ahead_of_a_clock_that_stepped_back_are_dropped(store):
    store.add({NODE: {"cpu": 0.5}}, now=T0 + 86400)
    store.add({NODE: {"cpu": 0.7}}, now=T0)            # the clock went back a day
    times = [p["time"] for p in store.fetch(NODE, "hour", now=T0) if "cpu" in p]
    assert times == [T0]
    assert store.size()["hour"] == 1


def test_fetch_unknown_timeframe(store):
    with pytest.raises(KeyError):
        store.fetch(NODE, "decade")


def test_sampler_records_node_guests_and_storages(tmp_path):
    store = RrdStore(tmp_path / "rrd.sqlite", clock=lambda: T0 + 5)

    async def storages():
        return {"local": {"total": 100, "used": 40, "type": "dir"}}

    async def scenario():
        task = asyncio.create_task(sample_forever(
            store, lambda: {"cpu": 0.3, "memtotal": 8.0, "bogus": 1.0},
            lambda: {101: {"cpu": 0.1, "mem": 5, "cpus": 2, "status": "running", "name": "vm"}},
            storages, interval=0.01))
        try:
            for _ in range(500):
                if store.fetch("storage/local", "hour")[-1].get("used") == 40:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    try:
        asyncio.run(scenario())
        assert store.fetch(NODE, "hour")[-1].keys() >= {"cpu", "memtotal"}
        assert "bogus" not in store.fetch(NODE, "hour")[-1]     # not a PVE node field
        assert store.fetch(guest_series(101), "hour")[-1] == {
            "time": store.fetch(NODE, "hour")[-1]["time"], "cpu": 0.1, "mem": 5.0,
            "maxcpu": 2.0}                                      # PVE's name for `cpus`
        assert store.fetch("storage/local", "hour")[-1] == {
            "time": store.fetch(NODE, "hour")[-1]["time"], "total": 100.0, "used": 40.0}
    finally:
        store.close()
