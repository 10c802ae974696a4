"""The dispatcher's delivery history and counts: per message and target, its outcome."""

from __future__ import annotations

import asyncio
import json

from prometheus_client.core import Metric

from binome.metrics.families import build
from binome.metrics.snapshot import Snapshot
from binome.notify.config import NotificationConfig, validate_entry
from binome.notify.dispatch import Dispatcher
from binome.notify.events import make_event
from binome.notify.history import FILE_NAME, HISTORY_SIZE, INTERRUPTED, DeliveryHistory
from binome.notify.senders import DeliveryError, Notification


def _config() -> NotificationConfig:
    cfg = NotificationConfig()
    for name in ("up", "down"):
        cfg.add(validate_entry("webhook", name, {"url": f"http://{name}.invalid/",
                                                 "method": "post"}))
    cfg.add(validate_entry("matcher", "all", {"target": ["up", "down"]}))
    return cfg


async def _send(target, note: Notification) -> None:
    if target.name == "down":
        raise DeliveryError("smtp 127.0.0.1:25: connection refused\n(second line)")


async def test_each_delivery_is_kept_with_its_outcome_and_reason() -> None:
    d = Dispatcher(_config, _send, group_window=0.01, max_attempts=2, first_retry=0.01)
    d.start()
    try:
        d.emit(make_event("split-brain-detected", "n1", volume="v1", peer="n2",
                          policy="after-sb-0pri disconnect"))
        await asyncio.wait_for(d.drain(), 5)
    finally:
        await d.stop()
    by_target = {r.target: r for r in d.history}
    up, down = by_target["up"], by_target["down"]
    assert (up.status, up.attempts, up.error) == ("delivered", 1, None)
    assert up.title == "Split brain on volume v1" and up.type == "split-brain"
    assert up.severity == "error" and up.updated is not None and up.updated >= up.time
    assert (down.status, down.attempts) == ("failed", 2)
    assert down.error == "smtp 127.0.0.1:25: connection refused (second line)"
    assert d.status["down"].attempts_failed == 2 and d.status["down"].failed == 1
    assert d.status["up"].delivered == 1 and d.status["up"].attempts_failed == 0
    assert "error" not in up.as_dict() and down.as_dict()["target_type"] == "webhook"


async def test_the_history_is_bounded_to_the_newest() -> None:
    d = Dispatcher(_config, _send, group_window=0.0, max_attempts=1)
    d.start()
    try:
        for i in range(HISTORY_SIZE):     # to several targets each: over the bound
            d.emit(make_event("test", "n1", target=f"t{i}"))
        await asyncio.wait_for(d.drain(), 10)
    finally:
        await d.stop()
    routed = sum(st.delivered + st.failed for st in d.status.values())
    assert routed > HISTORY_SIZE and len(d.history) == HISTORY_SIZE
    assert [r.id for r in d.history] == list(range(routed - HISTORY_SIZE + 1, routed + 1))


def _samples(snap: Snapshot) -> dict[tuple[str, tuple[str, ...]], float]:
    out = {}
    fam: Metric
    for fam in build(snap):
        for s in fam.samples:
            out[(s.name, tuple(s.labels.values()))] = s.value
    return out


def test_delivery_counts_are_exported_per_target() -> None:
    snap = Snapshot(node="n1", role="node", notifications=(3, {
        "mail": {"delivered": 4, "failed": 1, "attempts_failed": 6, "pending": 1,
                 "last_failure": 1700000000.0},
        "hook": {"delivered": 2, "failed": 0, "attempts_failed": 0, "pending": 0,
                 "last_failure": None}}))
    s = _samples(snap)
    assert s[("binome_notification_deliveries_total", ("mail", "delivered"))] == 4
    assert s[("binome_notification_deliveries_total", ("mail", "failed"))] == 1
    assert s[("binome_notification_delivery_attempt_failures_total", ("mail",))] == 6
    assert s[("binome_notification_deliveries_pending", ("mail",))] == 1
    assert s[("binome_notification_last_failure_timestamp_seconds", ("mail",))] == 1.7e9
    assert ("binome_notification_last_failure_timestamp_seconds", ("hook",)) not in s
    assert s[("binome_notification_events_dropped_total", ())] == 3


# -- kept in a file across restarts (binome.notify.history) ----------------------------


async def test_the_history_survives_a_restart_and_unfinished_ones_are_interrupted(
        tmp_path) -> None:
    path = tmp_path / FILE_NAME
    gate = asyncio.Event()

    async def send(target, note: Notification) -> None:
        if target.name == "down":
            raise DeliveryError("connection refused")
        if note.title.startswith("Node n2"):
            await gate.wait()        # still being delivered when the daemon stops

    d = Dispatcher(_config, send, group_window=0.01, max_attempts=3, first_retry=30,
                   history=DeliveryHistory(path, save_delay=0.01))
    d.start()
    d.emit(make_event("fence-failed", "n1", node="n2", error="BMC timeout"))
    await asyncio.sleep(0.2)
    # written within the save delay, off the loop: one delivered, one retrying
    saved = {e["target"]: e for e in json.loads(path.read_text())["deliveries"]}
    assert saved["up"]["status"] == "delivered"
    assert saved["down"]["status"] == "retrying" and saved["down"]["attempts"] == 1
    d.emit(make_event("node-offline", "n1", node="n2"))
    await asyncio.sleep(0.2)
    await d.stop()     # the daemon stops: nothing pending is lost from the record

    again = DeliveryHistory(path)
    rows = [r.as_dict() for r in again if r.target in ("up", "down")]
    assert [(r["title"], r["target"], r["status"]) for r in rows] == [
        ("Fencing node n2 FAILED", "up", "delivered"),
        ("Fencing node n2 FAILED", "down", "interrupted"),
        ("Node n2 offline", "up", "interrupted"),
        ("Node n2 offline", "down", "interrupted")]
    assert rows[1]["error"] == f"connection refused; {INTERRUPTED}"
    assert rows[2]["error"] == INTERRUPTED and rows[0].get("error") is None
    # the next daemon numbers on, and the API shape is the same
    d2 = Dispatcher(_config, _send, group_window=0.01, max_attempts=1,
                    history=DeliveryHistory(path, save_delay=0.01))
    d2.start()
    try:
        d2.emit(make_event("node-online", "n1", node="n2"))
        await asyncio.wait_for(d2.drain(), 5)
    finally:
        await d2.stop()
    ids = [r.id for r in DeliveryHistory(path)]
    assert len(ids) > len(again) and ids == list(range(1, len(ids) + 1))


def test_a_crash_mid_delivery_reads_back_interrupted(tmp_path) -> None:
    """The file as a crashed daemon left it (a delivery retrying): interrupted, with the
    last reason kept; entries of another shape are skipped, not fatal."""
    path = tmp_path / FILE_NAME
    path.write_text(json.dumps({"format": 1, "deliveries": [
        {"id": 7, "time": 1.0, "target": "mail", "target_type": "smtp", "title": "t",
         "severity": "error", "type": "fencing", "events": 1, "status": "retrying",
         "attempts": 2, "error": "timeout", "updated": 2.0},
        {"id": 8, "bogus": 1}, "nonsense"]}))
    (rec,) = DeliveryHistory(path)
    assert (rec.id, rec.status, rec.attempts) == (7, "interrupted", 2)
    assert rec.error == f"timeout; {INTERRUPTED}"
    assert DeliveryHistory(path).new(time=3.0, target="m", target_type="smtp", title="x",
                                     severity="info", type="test", events=1).id == 8


def test_an_unreadable_file_starts_empty(tmp_path) -> None:
    path = tmp_path / FILE_NAME
    path.write_text("{not json")
    assert len(DeliveryHistory(path)) == 0
    path.write_text("[]")
    assert len(DeliveryHistory(path)) == 0


async def test_the_file_is_bounded(tmp_path) -> None:
    path = tmp_path / FILE_NAME
    hist = DeliveryHistory(path, size=5, save_delay=0.01)
    for i in range(12):
        hist.new(time=float(i), target="m", target_type="smtp", title=f"t{i}",
                 severity="info", type="test", events=1)
    await hist.close()
    saved = json.loads(path.read_text())["deliveries"]
    assert [e["title"] for e in saved] == [f"t{i}" for i in range(7, 12)]
    assert [r.id for r in DeliveryHistory(path, size=5)] == [8, 9, 10, 11, 12]
