"""RRD-like series: per-slot average and max, counters as rates, bounded memory."""

import pytest

from binome.daemon.rrd import COUNTERS, TIMEFRAMES, RrdStore, Series

T0 = 604800 * 2800          # aligned to every timeframe's step
HOUR_STEP, HOUR_KEEP = TIMEFRAMES["hour"]


def test_timeframes_as_pve():
    assert HOUR_STEP == 60
    assert TIMEFRAMES["day"][0] == 1800
    assert all(keep == 70 for _, keep in TIMEFRAMES.values())
    assert set(COUNTERS) == {"netin", "netout", "diskread", "diskwrite"}


def test_average_and_max_per_slot():
    s = Series()
    s.add({"cpu": 0.2, "mem": 100}, now=T0 + 1)
    s.add({"cpu": 0.6, "mem": 300}, now=T0 + 30)
    s.add({"cpu": 1.0, "mem": 200}, now=T0 + 59)
    s.add({"cpu": 0.5, "mem": 50}, now=T0 + 60)           # next hour slot
    avg = s.fetch("hour")
    assert [p["time"] for p in avg] == [T0, T0 + 60]
    assert avg[0]["cpu"] == pytest.approx(0.6)
    assert avg[0]["mem"] == pytest.approx(200)
    assert avg[1] == {"time": T0 + 60, "cpu": 0.5, "mem": 50}
    mx = s.fetch("hour", "MAX")
    assert mx[0] == {"time": T0, "cpu": 1.0, "mem": 300}
    assert mx[1] == {"time": T0 + 60, "cpu": 0.5, "mem": 50}
    # the day slot holds all four samples
    day = s.fetch("day")
    assert len(day) == 1
    assert day[0]["time"] == T0
    assert day[0]["cpu"] == pytest.approx((0.2 + 0.6 + 1.0 + 0.5) / 4)
    assert s.fetch("day", "MAX")[0]["mem"] == 300


def test_max_of_negative_values():
    s = Series()
    s.add({"x": -5}, now=T0)
    s.add({"x": -2}, now=T0 + 1)
    assert s.fetch("hour", "MAX")[0]["x"] == -2


def test_time_is_slot_start():
    s = Series()
    s.add({"cpu": 1}, now=T0 + 3 * 3600 + 125.7)
    assert s.fetch("hour")[0]["time"] == T0 + 3 * 3600 + 120
    assert s.fetch("day")[0]["time"] == T0 + 3 * 3600 - (3 * 3600) % 1800
    assert s.fetch("week")[0]["time"] == T0 + 10800        # 3 h slots
    assert s.fetch("month")[0]["time"] == T0
    assert s.fetch("year")[0]["time"] == T0
    assert all(isinstance(p["time"], int) for tf in TIMEFRAMES for p in s.fetch(tf))


def test_counters_become_rates_from_the_second_sample():
    s = Series()
    s.add({"netin": 1000, "diskwrite": 0, "cpu": 0.1}, now=T0)
    s.add({"netin": 7000, "diskwrite": 600, "cpu": 0.1}, now=T0 + 60)
    s.add({"netin": 10000, "diskwrite": 600, "cpu": 0.1}, now=T0 + 120)
    points = s.fetch("hour")
    assert points[0] == {"time": T0, "cpu": 0.1}         # no rate yet, raw value not stored
    assert points[1]["netin"] == pytest.approx(100.0)    # 6000 B / 60 s
    assert points[1]["diskwrite"] == pytest.approx(10.0)
    assert points[2]["netin"] == pytest.approx(50.0)
    assert points[2]["diskwrite"] == 0.0


def test_counter_reset_gives_no_rate_for_that_sample():
    s = Series()
    s.add({"netout": 5000}, now=T0)
    s.add({"netout": 11000}, now=T0 + 60)     # +6000 -> 100 B/s
    s.add({"netout": 300}, now=T0 + 120)      # reset (guest rebooted): no rate
    s.add({"netout": 1500}, now=T0 + 180)     # rate from the new base: 20 B/s
    points = s.fetch("hour")
    assert points[1]["netout"] == pytest.approx(100.0)
    assert points[2] == {"time": T0 + 120}
    assert points[3]["netout"] == pytest.approx(20.0)


def test_counter_reset_only_affects_that_counter():
    s = Series()
    s.add({"netin": 100, "netout": 100}, now=T0)
    s.add({"netin": 50, "netout": 700}, now=T0 + 60)
    p = s.fetch("hour")[1]
    assert "netin" not in p
    assert p["netout"] == pytest.approx(10.0)


def test_no_rate_when_time_does_not_advance():
    s = Series()
    s.add({"netin": 100}, now=T0 + 10)
    s.add({"netin": 200}, now=T0 + 10)
    assert s.fetch("hour") == [{"time": T0}]


def test_average_counts_only_samples_that_have_the_key():
    s = Series()
    s.add({"netin": 0}, now=T0)
    s.add({"netin": 1000}, now=T0 + 10)
    s.add({"netin": 3000}, now=T0 + 20)
    point = s.fetch("hour")[0]
    assert point["netin"] == pytest.approx(150.0)


def test_slots_beyond_keep_are_dropped():
    s = Series()
    n = HOUR_KEEP + 30
    for i in range(n):
        s.add({"cpu": float(i)}, now=T0 + i * HOUR_STEP + 5)
    hour = s.fetch("hour")
    assert len(hour) == HOUR_KEEP
    assert [p["time"] for p in hour] == [T0 + i * HOUR_STEP for i in range(n - HOUR_KEEP, n)]
    assert hour[0]["cpu"] == float(n - HOUR_KEEP)
    assert hour[-1]["cpu"] == float(n - 1)
    for tf in TIMEFRAMES:
        assert len(s._slots[tf]) <= TIMEFRAMES[tf][1]


def test_memory_stays_bounded_over_a_long_run():
    s = Series()
    step = 1800
    for i in range(2000):                       # ~41 days, one sample per day slot
        s.add({"cpu": 1.0, "netin": i * 1000}, now=T0 + i * step)
    for tf, (_, keep) in TIMEFRAMES.items():
        assert len(s.fetch(tf)) <= keep
    assert len(s.fetch("hour")) == 70
    assert len(s.fetch("day")) == 70


def test_fetch_is_time_ordered():
    s = Series()
    for i in range(10):
        s.add({"cpu": 0.5}, now=T0 + i * 45)
    for tf in TIMEFRAMES:
        times = [p["time"] for p in s.fetch(tf)]
        assert times == sorted(times)
        assert len(times) == len(set(times))


def test_fetch_empty_series():
    s = Series()
    assert all(s.fetch(tf) == [] for tf in TIMEFRAMES)


def test_fetch_unknown_timeframe():
    with pytest.raises(KeyError):
        Series().fetch("decade")


def test_add_uses_wall_clock_by_default(monkeypatch):
    import binome.daemon.rrd as rrd

    monkeypatch.setattr(rrd.time, "time", lambda: T0 + 61.5)
    s = Series()
    s.add({"cpu": 1})
    assert s.fetch("hour") == [{"time": T0 + 60, "cpu": 1.0}]


def test_store_keeps_one_series_per_guest():
    store = RrdStore()
    assert store.guest(100) is store.guest(100)
    assert store.guest(100) is not store.guest(101)
    assert store.node is not store.guest(100)
    assert sorted(store.guests) == [100, 101]


def test_fetch_stays_time_ordered_when_the_clock_steps_back():
    s = Series()
    s.add({"cpu": 0.5}, now=T0 + 600)
    s.add({"cpu": 0.7}, now=T0)
    times = [p["time"] for p in s.fetch("hour")]
    assert times == sorted(times)
