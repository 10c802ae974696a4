"""Clock skew from the HA heartbeats (ha.agent.clock_skew, LivenessTracker) and its text."""

from __future__ import annotations

from binome.ha.agent.clock_skew import MIN_SAMPLES, SkewEstimator
from binome.ha.agent.etcd_env import LivenessTracker
from binome.notify.events import Severity, make_event
from binome.store.client import LeasedEntry


def test_the_smallest_difference_is_the_skew() -> None:
    est = SkewEstimator(threshold=1.0)
    # n2's clock is 3 s behind; each heartbeat is read 0.05 .. 0.95 s after it was written
    for i in range(MIN_SAMPLES + 5):
        sent = 100.0 + i
        est.observe("n2", sent - 3.0, sent + 0.05 + (i * 0.37) % 0.9)
        # n3 is 2 s ahead
        est.observe("n3", sent + 2.0, sent + 0.1 + (i * 0.53) % 0.9)
        # n4 is right
        est.observe("n4", sent, sent + 0.2)
    assert abs(est.skew("n2") - 3.05) < 1e-9
    assert abs(est.skew("n3") + 1.9) < 1e-9
    assert est.alerts() == [("n2", est.skew("n2")), ("n3", est.skew("n3"))]
    assert est.alerts() == []            # said once


def test_not_before_enough_samples_and_again_only_after_recovering() -> None:
    est = SkewEstimator(threshold=1.0, samples=5)
    for i in range(MIN_SAMPLES - 1):
        est.observe("n2", i - 5.0, i)
    assert est.skew("n2") is None and est.alerts() == []
    est.observe("n2", -1.0, 4.0)
    assert [n for n, _ in est.alerts()] == ["n2"]
    for i in range(5):                    # chrony fixed it
        est.observe("n2", 10.0 + i, 10.1 + i)
    assert est.alerts() == [] and abs(est.skew("n2") - 0.1) < 1e-9
    for i in range(5):                    # and it drifts again: a new report
        est.observe("n2", 20.0 + i, 22.0 + i)
    assert [n for n, _ in est.alerts()] == ["n2"]


def test_liveness_tracker_feeds_new_heartbeats_only() -> None:
    tracker = LivenessTracker()

    def beat(rev: int, sent: float) -> dict[str, LeasedEntry]:
        return {"n2": LeasedEntry("/binome/ha/heartbeat/n2", {"seq": rev, "time": sent}, rev, 7)}

    tracker.observe(0.0, beat(1, 50.0), {}, wall=1000.0)   # first sight: maybe old, skipped
    for rev in range(2, 2 + MIN_SAMPLES):
        tracker.observe(float(rev), beat(rev, 990.0 + rev), {}, wall=1000.0 + rev)
        tracker.observe(float(rev) + 0.5, beat(rev, 990.0 + rev), {}, wall=1000.5 + rev)
    assert tracker.clocks.skew("n2") == 10.0
    tracker.observe(20.0, {}, {}, wall=1020.0)              # lease gone: forgotten
    assert tracker.clocks.skew("n2") is None


def test_clock_skew_event_text() -> None:
    ev = make_event("clock-skew", "n1", node="n2", skew="-3.05", threshold="1",
                    reference="n1")
    assert ev.severity is Severity.WARNING
    assert ev.fields == {"type": "time", "hostname": "n1", "node": "n2", "skew": "-3.05",
                         "threshold": "1", "kind": "clock-skew"}
    assert ev.title == "Clock skew on n2: -3.05 s"
    assert "from the cluster's (n1's; threshold 1 s)" in ev.message
    assert "chronyc tracking" in ev.message
