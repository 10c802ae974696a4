"""The dispatcher's delivery history and counts: per message and target, its outcome."""

from __future__ import annotations

import asyncio

from prometheus_client.core import Metric

from binome.metrics.families import build
from binome.metrics.snapshot import Snapshot
from binome.notify.config import NotificationConfig, validate_entry
from binome.notify.dispatch import HISTORY_SIZE, Dispatcher
from binome.notify.events import make_event
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
