"""Availability from a transition log (binome.ha.availability): pure, no store."""

from __future__ import annotations

import datetime as dt

import pytest

from binome.ha import availability as av
from binome.ha.availability import Transition as T
from binome.units import human_duration


def rep(log, since=0.0, until=1000.0, now=None, target=None):
    return av.report("vm:100", log, since, until, until if now is None else now, target)


def test_fence_recovery_start_is_one_outage_with_its_phases() -> None:
    log = [T(0, "request_start", "n1"), T(5, "started", "n1"), T(100, "fence", "n1"),
           T(130, "recovery", "n1"), T(132, "starting", "n2"), T(140, "started", "n2")]
    r = rep(log, 0, 1000)
    assert r["outages"] == 1
    out = r["outage_list"][0]
    assert (out["start"], out["end"], out["cause"], out["node"]) == (100, 140, "fencing", "n1")
    # the start after the recovery belongs to the recovery phase
    assert out["phases"] == [{"cause": "fencing", "duration": 30},
                             {"cause": "recovery", "duration": 10}]
    assert r["downtime"] == 40 and r["longest"] == 40 and r["mttr"] == 40
    # the initial start is planned (the service did not exist before), not an outage
    assert r["planned_downtime"] == 5 and r["monitored"] == 1000
    assert r["availability"] == pytest.approx(100 * (1 - 40 / 995), abs=1e-5)


def test_admin_stop_is_planned_and_not_counted() -> None:
    log = [T(0, "started", "n1"), T(100, "request_stop", "n1"), T(101, "stopping", "n1"),
           T(110, "stopped", "n1"), T(500, "request_start", "n1"), T(502, "starting", "n1"),
           T(510, "started", "n1")]
    r = rep(log, 0, 1000)
    assert r["outages"] == 0 and r["downtime"] == 0 and r["availability"] == 100.0
    assert r["class"] == "99.999 %"
    [stop] = r["planned_list"]
    # the start the administrator asked for ends the planned stop, not an outage
    assert (stop["start"], stop["end"], stop["cause"]) == (100, 510, "admin-stop")
    assert r["planned_downtime"] == 410


def test_error_relocate_and_restart_causes() -> None:
    log = [T(0, "started", "n1"), T(10, "relocate", "n1"), T(20, "started", "n2"),
           T(30, "starting", "n2"), T(35, "started", "n2"), T(40, "error", "n2")]
    r = rep(log, 0, 100, now=100)
    causes = [(o["cause"], o["start"], o["end"], o["ongoing"]) for o in r["outage_list"]]
    assert causes == [("migration", 10, 20, 0), ("restart", 30, 35, 0), ("error", 40, 100, 1)]
    assert r["downtime"] == 75 and r["longest"] == 60 and r["mttr"] == 25


def test_live_migration_and_freeze_are_up() -> None:
    log = [T(0, "started", "n1"), T(10, "migrate", "n1"), T(15, "started", "n2"),
           T(20, "freeze", "n2"), T(30, "started", "n2")]
    assert rep(log, 0, 100)["outages"] == 0


def test_open_interval_lasts_until_now_not_the_period_end() -> None:
    log = [T(0, "started", "n1"), T(50, "fence", "n1")]
    r = rep(log, 0, 1000, now=80)
    assert r["downtime"] == 30 and r["monitored"] == 80
    assert r["outage_list"][0]["ongoing"] == 1
    # a report of a past window that ends inside the outage: not ongoing there
    past = rep(log, 0, 60, now=80)
    assert past["downtime"] == 10 and past["outage_list"][0]["ongoing"] == 0


def test_period_boundaries_clip_outages() -> None:
    log = [T(0, "started", "n1"), T(90, "fence", "n1"), T(120, "started", "n2"),
           T(190, "error", "n2"), T(260, "started", "n2")]
    r = rep(log, 100, 200, now=1000)
    assert [(o["start"], o["end"]) for o in r["outage_list"]] == [(100, 120), (190, 200)]
    assert r["downtime"] == 30 and r["monitored"] == 100


def test_nothing_known_before_the_first_transition() -> None:
    r = rep([T(500, "started", "n1")], 0, 1000)
    assert r["monitored"] == 500 and r["availability"] == 100.0
    empty = rep([], 0, 1000)
    assert empty["availability"] is None and empty["class"] == "n/a"


def test_times_going_backwards_keep_the_append_order() -> None:
    # a new master whose clock is 5 s behind stamps the recovery before the fence
    log = [T(0, "started", "n1"), T(100, "fence", "n1"), T(95, "recovery", "n1"),
           T(110, "started", "n2")]
    r = rep(log, 0, 200)
    assert r["outages"] == 1
    out = r["outage_list"][0]
    assert (out["start"], out["end"]) == (100, 110)
    assert [p["cause"] for p in out["phases"]] == ["fencing", "recovery"]
    assert out["phases"][0]["duration"] == 0


def test_removed_service_is_unmanaged_planned() -> None:
    log = [T(0, "started", "n1"), T(50, av.REMOVED, "n1")]
    r = rep(log, 0, 100)
    assert r["outages"] == 0 and r["planned_list"][0]["cause"] == "unmanaged"


def test_diff_states() -> None:
    recorded = {"vm:1": ("started", "n1"), "vm:2": ("started", "n1"),
                "vm:3": (av.REMOVED, "n1")}
    current = {"vm:1": ("started", "n1"), "vm:2": ("fence", "n1"), "vm:4": ("request_start", "n2")}
    got = av.diff_states(recorded, current, 7.0)
    assert got == [("vm:2", T(7.0, "fence", "n1")), ("vm:4", T(7.0, "request_start", "n2")),
                   ]
    # a service gone from the status is recorded as removed, once
    assert av.diff_states({"vm:9": ("started", "n1")}, {}, 3.0) == [
        ("vm:9", T(3.0, av.REMOVED, "n1"))]
    # a node change alone (started on n1 -> started on n2) is a transition
    assert av.diff_states({"vm:1": ("started", "n1")}, {"vm:1": ("started", "n2")}, 1.0) == [
        ("vm:1", T(1.0, "started", "n2"))]


@pytest.mark.parametrize(("percent", "cls"), [
    (100.0, "99.999 %"), (99.9995, "99.999 %"), (99.995, "99.99 %"), (99.9, "99.9 %"),
    (99.5, "99 %"), (98.0, "< 99 %")])
def test_classes(percent: float, cls: str) -> None:
    assert av.availability_class(percent) == cls


def test_class_allowance_per_year_is_the_seeds_figure() -> None:
    assert human_duration(av.allowed_per_year(99.9)) == "8 h 45 min 36 s"
    assert human_duration(av.allowed_per_year(99.99)) == "52 min 34 s"
    assert human_duration(av.allowed_per_year(99.0)) == "3 d 15 h 36 min"


def test_budget_over_the_whole_period() -> None:
    # 99.9 % of a 30-day month allows 2592 s; 2100 s down is 81 % of it
    since = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    start, until = av.period_bounds("month", since + 86400)
    assert until - start == 30 * 86400 and start == since
    log = [T(since, "started", "n1"), T(since + 1000, "fence", "n1"),
           T(since + 3100, "started", "n2")]
    r = av.report("vm:1", log, since, until, since + 86400, target=99.9)
    assert r["budget"] == {"target": 99.9, "allowed": 2592.0, "used": 2100.0,
                           "used_percent": 81.02, "left": 492.0}


def test_period_bounds() -> None:
    t = dt.datetime(2026, 2, 18, 13, 5, tzinfo=dt.UTC).timestamp()   # a Wednesday
    day = av.period_bounds("day", t)
    assert day[1] - day[0] == 86400
    week = av.period_bounds("week", t)
    assert dt.datetime.fromtimestamp(week[0], dt.UTC) == dt.datetime(2026, 2, 16, tzinfo=dt.UTC)
    month = av.period_bounds("month", t)
    assert (month[1] - month[0]) == 28 * 86400
    assert av.period_label("month", month[0]) == "2026-02"
    year = av.period_bounds("year", t)
    assert (year[1] - year[0]) == 365 * 86400
    with pytest.raises(ValueError, match="unknown period"):
        av.period_bounds("fortnight", t)


def test_diff_states_backdates_a_fence_to_the_nodes_last_sign_of_life() -> None:
    got = av.diff_states({"vm:1": ("started", "n1")}, {"vm:1": ("fence", "n1")}, 100.0,
                         lost_since={"n1": 88.5}, recorded_at={"vm:1": 50.0})
    assert got == [("vm:1", T(88.5, "fence", "n1"))]
    # never before the service's previous transition, never in the future
    got = av.diff_states({"vm:1": ("started", "n1")}, {"vm:1": ("fence", "n1")}, 100.0,
                         lost_since={"n1": 40.0}, recorded_at={"vm:1": 60.0})
    assert got == [("vm:1", T(60.0, "fence", "n1"))]
    got = av.diff_states({}, {"vm:1": ("fence", "n1")}, 100.0, lost_since={"n1": 140.0})
    assert got == [("vm:1", T(100.0, "fence", "n1"))]
    # other states and other nodes are stamped now
    got = av.diff_states({"vm:1": ("fence", "n1")}, {"vm:1": ("recovery", "n1")}, 100.0,
                         lost_since={"n1": 88.5})
    assert got == [("vm:1", T(100.0, "recovery", "n1"))]


def test_diff_states_inserts_the_fence_a_new_master_did_within_one_round() -> None:
    got = av.diff_states({"vm:1": ("started", "n1")}, {"vm:1": ("starting", "n2")}, 25.0,
                         lost_since={"n1": 20.0})
    assert got == [("vm:1", T(20.0, "fence", "n1")), ("vm:1", T(25.0, "starting", "n2"))]
    r = rep([T(0, "started", "n1"), *[t for _, t in got], T(28.0, "started", "n2")], 0, 100)
    assert [(o["cause"], o["start"], o["end"]) for o in r["outage_list"]] == [
        ("fencing", 20.0, 28.0)]
    # a planned move (the node is not lost) is no fence
    got = av.diff_states({"vm:1": ("stopped", "n1")}, {"vm:1": ("stopped", "n2")}, 25.0)
    assert got == [("vm:1", T(25.0, "stopped", "n2"))]


def test_api_window_validation() -> None:
    from binome.api.errors import ApiError
    from binome.api.methods.ha import availability_window

    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC).timestamp()
    since, until, period = availability_window({}, now)
    assert until - since == 31 * 86400
    assert period == "month" and av.period_label("month", since) == "2026-12"
    assert availability_window({"since": 100, "until": 200}, now) == (100.0, 200.0, "")
    assert availability_window({"since": 100}, now) == (100.0, now, "")
    for bad, param in (({"since": 300, "until": 200}, "since"),
                       ({"period": "year", "until": 200}, "period")):
        with pytest.raises(ApiError) as exc:
            availability_window(bad, now)
        assert exc.value.status == 400 and param in (exc.value.errors or {})


def test_availability_target_setting_round_trip() -> None:
    from binome.api.methods.ha import HA_OPTION
    from binome.ha.model import HaSettings

    parsed = HA_OPTION.parse("shutdown_policy=freeze,availability_target=99.95")
    settings = HaSettings.from_dict(parsed)
    assert settings.availability_target == 99.95
    assert HaSettings.from_dict(settings.to_dict()) == settings
    assert "availability_target" not in HaSettings().to_dict()
    with pytest.raises(ValueError, match="minimum value of 90"):
        HA_OPTION.parse("availability_target=80")


def test_a_resource_may_have_its_own_availability_target() -> None:
    from binome.ha.config import merge_resource
    from binome.ha.model import ResourceConfig

    entry = merge_resource({"state": "started"}, {"availability_target": 99.99})
    assert ResourceConfig.from_dict("vm:100", entry).availability_target == 99.99
    assert "availability_target" not in ResourceConfig("vm:100").to_dict()
    entry = merge_resource(entry, {}, delete=["availability_target"])
    assert ResourceConfig.from_dict("vm:100", entry).availability_target is None
