"""The watch filter and debounce of the event-driven HA rounds (`ha.agent.wake`, pure)."""

from __future__ import annotations

from binome.ha.agent.wake import MIN_WAKE_GAP, WATCH_PREFIXES, Debouncer, wakes_rounds
from binome.storage.replica.node import records as vkeys
from binome.store import keys
from binome.store.client import LeasedEntry, WatchEvent


def put(key: str, value=None, lease: int = 0, prev: LeasedEntry | None = None) -> WatchEvent:
    return WatchEvent("put", key, value, 10, lease, 2 if prev else 1, prev)


def delete(key: str) -> WatchEvent:
    return WatchEvent("delete", key, None, 11, 0, 0, None)


def prev(key: str, value=None, lease: int = 0) -> LeasedEntry:
    return LeasedEntry(key, value, 9, lease)


def test_heartbeat_renewal_put_wakes_nobody_but_loss_and_return_do() -> None:
    hb = keys.ha_heartbeat("n1")
    assert not wakes_rounds(put(hb, {"seq": 8}, 7, prev(hb, {"seq": 7}, 7)))   # renewal
    assert wakes_rounds(delete(hb))                                           # lease gone
    assert wakes_rounds(put(hb, {"seq": 0}, 7))                               # created: back
    assert wakes_rounds(put(hb, {"seq": 0}, 9, prev(hb, {"seq": 7}, 7)))      # new lease


def test_ha_keys_wake() -> None:
    ms = keys.HA_MANAGER_STATUS
    for ev in (put(ms, {}, 0, prev(ms, {})), put(keys.ha_lrm("n2"), {}, 0, prev(keys.ha_lrm("n2"))),
               put(keys.ha_command("0001"), "migrate vm:100 n2"), delete(keys.ha_command("0001")),
               put(keys.HA_RESOURCES, {}, 0, prev(keys.HA_RESOURCES)),
               delete(keys.HA_MANAGER_LOCK), put(keys.ha_released("n1"), {"lease": 7}),
               put(keys.vmid(100), {"node": "n2"}, 0, prev(keys.vmid(100), {"node": "n1"}))):
        assert wakes_rounds(ev), ev.key


def test_volume_state_wakes_only_when_the_disk_state_changes() -> None:
    key = vkeys.state("vm-100-disk-0", "n2")
    old = {"up": True, "disk": "Inconsistent", "out_of_sync_kib": 900}
    assert not wakes_rounds(put(key, {**old, "out_of_sync_kib": 100}, 0, prev(key, old)))
    assert wakes_rounds(put(key, {**old, "disk": "UpToDate"}, 0, prev(key, old)))
    assert wakes_rounds(put(key, {**old, "up": False}, 0, prev(key, old)))
    assert wakes_rounds(put(key, old))            # first report
    assert wakes_rounds(delete(key))
    fencing = vkeys.fencing("vm-100-disk-0")
    assert wakes_rounds(put(fencing, {"outdated": {"n1": {}}}, 0, prev(fencing, {})))


def test_keys_outside_the_snapshot_do_not_wake() -> None:
    assert not wakes_rounds(put(keys.alive("n1"), {}, 7))
    assert not wakes_rounds(put(keys.cluster_log("1"), {}))
    assert all(p.endswith("/") for p in WATCH_PREFIXES)


def test_debounce_coalesces_a_burst_into_one_wake_up() -> None:
    d = Debouncer(window=0.03, min_gap=0.1)
    assert d.event(10.0) == 10.03
    assert d.event(10.01) is None and d.event(10.029) is None   # joined the pending one
    d.fired(10.03)
    # the next burst: not sooner than min_gap after the last wake-up
    assert d.event(10.04) == 10.03 + 0.1
    d.fired(10.13)
    assert d.event(11.0) == 11.03   # quiet for long: only the window


def test_debounce_never_busy_loops() -> None:
    """A key rewritten continuously (every 1 ms) wakes the rounds at most 1/min_gap per s."""
    d = Debouncer()
    fires, pending, t = 0, None, 0.0
    while t < 10.0:
        if pending is not None and t >= pending:
            d.fired(t)
            fires += 1
            pending = None
        at = d.event(t)
        if at is not None:
            pending = at
        t += 0.001
    assert fires <= 10.0 / MIN_WAKE_GAP + 1


def test_reset_forgets_a_pending_wake_up() -> None:
    d = Debouncer(window=0.03, min_gap=0.1)
    assert d.event(1.0) == 1.03
    d.reset()
    assert d.event(1.01) == 1.04
