"""The lease bridge (`binome.ha.agent.lease_bridge`) against a real etcd with mutual TLS,
through its JSON gateway, as a restarted binomed uses it before its own code is loaded.

- it renews a live lease past its TTL, rewrites the heartbeat key bound to it and moves
  an armed watchdog's deadline, going past a member that does not answer;
- after `stop()` it writes nothing more;
- a lease that is gone (revoked: a clean stop) ends it at once, watchdog untouched;
- a watchdog that has fired is left alone;
- the record file: saved by the keeper, too old or absent means nothing to bridge.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from binome.fence.watchdog import Watchdog
from binome.ha.agent import lease_bridge
from binome.ha.agent.lease_bridge import LeaseBridge, LeaseRecord
from binome.store import keys
from binome.store.client import Store
from tests.integration.single_etcd import empty_store, single_etcd

pytestmark = pytest.mark.integration

ADDRESS = f"127.{os.getpid() % 200 + 20}.85.1"
DEAD = f"https://127.{os.getpid() % 200 + 20}.85.9:2379"   # nothing listens there
HEARTBEAT = keys.ha_heartbeat("n1")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with single_etcd(tmp_path_factory.mktemp("etcd"), ADDRESS, "bridge-test") as paths:
        yield paths


@pytest.fixture
async def store(etcd: dict[str, Path]) -> AsyncIterator[Store]:
    s = await empty_store(etcd, ADDRESS)
    try:
        yield s
    finally:
        await s.close()


def record(etcd: dict[str, Path], run: Path, lease: int, ttl: float = 3.0) -> LeaseRecord:
    return LeaseRecord(
        node="n1", lease=lease, heartbeat_key=HEARTBEAT,
        urls=[DEAD, f"https://{ADDRESS}:2379"], ca=str(etcd["ca"]), cert=str(etcd["cert"]),
        key=str(etcd["key"]), watchdog_state=str(run / "ha-watchdog.state"),
        watchdog_pid=str(run / "ha-watchdog.pid"), keepalive_interval=0.5,
        self_fence_deadline=2.0, lease_ttl=ttl)


def state(run: Path) -> dict[str, Any]:
    return json.loads((run / "ha-watchdog.state").read_text())


async def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.05)


async def test_renews_past_the_ttl_and_moves_the_watchdog(etcd, store, tmp_path) -> None:
    lease = await store.grant_lease(3)
    rec = record(etcd, tmp_path, lease)
    wd = Watchdog(rec.watchdog_state, rec.watchdog_pid, device=None)
    first = time.monotonic() + 2.0
    wd.arm_sync(first, [100, 101], tmp_path / "qemu")
    bridge = LeaseBridge(rec)
    bridge.start()
    try:
        began = time.monotonic()
        revisions = set()
        while time.monotonic() - began < 4.5:      # 1.5 x the TTL
            beats, _ = await store.range_leased(HEARTBEAT)
            for beat in beats:
                assert beat.lease == lease and set(beat.value) == {"seq", "time"}
                revisions.add(beat.mod_revision)
            await asyncio.sleep(0.2)
        assert await store.refresh_lease(lease) > 0, "the lease expired under the bridge"
        assert len(revisions) >= 4, revisions
        now = state(tmp_path)
        assert now["armed"] and now["vmids"] == [100, 101]
        assert now["deadline"] > first + 2.0
        assert now["deadline"] - time.monotonic() <= rec.self_fence_deadline
        assert bridge.extended >= 5 and bridge.running and bridge.guarding is True
    finally:
        bridge.stop("test over")
    frozen = (tmp_path / "ha-watchdog.state").read_text()
    renewals = bridge.renewals
    await asyncio.sleep(1.2)
    assert (tmp_path / "ha-watchdog.state").read_text() == frozen, "written after stop()"
    assert bridge.renewals == renewals
    bridge.join(2)
    assert not bridge.running and bridge.ended == "test over"
    await store.revoke_lease(lease)


async def test_a_disarmed_watchdog_is_not_carried(etcd, store, tmp_path) -> None:
    """A node without HA guests: the lease and heartbeat only (the agent's keeper ends the
    bridge at its first renewal, seeing `guarding` False)."""
    lease = await store.grant_lease(3)
    rec = record(etcd, tmp_path, lease)
    Watchdog(rec.watchdog_state, rec.watchdog_pid, device=None).disarm_sync()
    before = (tmp_path / "ha-watchdog.state").read_text()
    bridge = LeaseBridge(rec)
    assert bridge.guarding is None
    bridge.start()
    try:
        await wait(lambda: bridge.renewals >= 2, 5, "two renewals")
        assert bridge.guarding is False and bridge.extended == 0
        assert (tmp_path / "ha-watchdog.state").read_text() == before
        beats, _ = await store.range_leased(HEARTBEAT)
        assert [b.lease for b in beats] == [lease]
    finally:
        bridge.stop("test over")
        await store.revoke_lease(lease)


async def test_a_revoked_lease_ends_it_and_the_watchdog_is_left_alone(etcd, store,
                                                                      tmp_path) -> None:
    lease = await store.grant_lease(3)
    await store.revoke_lease(lease)   # what a clean stop does
    rec = record(etcd, tmp_path, lease)
    wd = Watchdog(rec.watchdog_state, rec.watchdog_pid, device=None)
    deadline = time.monotonic() + 2.0
    wd.arm_sync(deadline, [100], tmp_path / "qemu")
    bridge = LeaseBridge(rec)
    bridge.start()
    await wait(lambda: not bridge.running, 5, "the bridge to give up")
    assert "the lease is gone" in bridge.ended
    assert state(tmp_path)["deadline"] == deadline
    assert await store.get(HEARTBEAT) is None
    assert bridge.extended == 0


async def test_a_fired_watchdog_is_left_alone(etcd, store, tmp_path) -> None:
    lease = await store.grant_lease(3)
    rec = record(etcd, tmp_path, lease)
    # the real supervisor, armed with a deadline already past: it fires at once (no
    # guest runs here: it finds nothing to kill)
    wd = Watchdog(rec.watchdog_state, rec.watchdog_pid, device=None)
    deadline = time.monotonic() - 1.0
    await wd.arm(deadline, [100], tmp_path / "qemu")
    try:
        await wait(lambda: wd.read_status().fired, 5, "the supervisor to fire")
        bridge = LeaseBridge(rec)
        bridge.start()
        await wait(lambda: not bridge.running, 5, "the bridge to stop")
        assert "already fired" in bridge.ended, bridge.ended
        assert state(tmp_path)["deadline"] == deadline
        assert wd.read_status().fired
    finally:
        await wd.stop()
        await store.revoke_lease(lease)


def test_the_record_file(etcd, tmp_path) -> None:
    path = lease_bridge.record_path(tmp_path)
    assert lease_bridge.load_record(path) is None
    rec = record(etcd, tmp_path, 0x1234)
    lease_bridge.save_record(path, rec)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = lease_bridge.load_record(path)
    assert again is not None and again.same_as(rec) and again.lease == 0x1234
    # older than the lease can live: the daemon stopped renewing before that
    assert lease_bridge.load_record(path, now=rec.saved_at + 1.5 * rec.lease_ttl + 0.1) is None
    assert lease_bridge.load_record(path, now=rec.saved_at + rec.lease_ttl) is not None
    assert lease_bridge.load_record(path, now=rec.saved_at - 5) is None   # clock went back
    path.write_text("{not json")
    assert lease_bridge.load_record(path) is None
    lease_bridge.forget_record(path)
    assert not path.exists()
