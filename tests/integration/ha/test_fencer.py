"""The CRM's fencer against a real etcd: it acts only on a decision it still owns.

Issue 16: a master paused across a lock change must not fence on its old decision,
a node that renewed since the decision is left alone, a node never fences itself,
and a `reboot` fence whose power-on fails leaves a debt the master keeps retrying.
The etcd is real (mutual TLS, its own loopback address); the fence device is a
recording stand-in, since what is tested is what reaches it (the lab's IPMI BMC is
driven by tests/integration/ha/test_ha_admin.py and tests/lab).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from binome.fence.result import FenceResult
from binome.ha.agent import fencer as fencer_mod
from binome.ha.agent.fencer import Fencer, Guard
from binome.ha.model import FenceState
from binome.store import keys
from binome.store.client import Store
from tests.integration.single_etcd import empty_store, single_etcd

ADDRESS = f"127.{os.getpid() % 200 + 20}.84.1"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory) -> Iterator[dict[str, Path]]:
    with single_etcd(tmp_path_factory.mktemp("etcd"), ADDRESS, "fencer-test") as paths:
        yield paths


@pytest.fixture
async def store(etcd) -> AsyncIterator[Store]:
    s = await empty_store(etcd, ADDRESS)
    yield s
    await s.close()


class Device:
    """Records what reached the fence device; `on_ok` scripts the power-on results."""

    kind = "ipmi"

    def __init__(self, calls: list[str], on_ok: list[bool], power: dict[str, Any]) -> None:
        self.calls, self.on_ok, self.power = calls, on_ok, power

    async def status(self) -> FenceResult:
        self.calls.append("status")
        during = self.power.get("during")
        if during is not None:     # what happens while the BMC answers
            await during()
        state = self.power.get("state", "on")
        return FenceResult(True, "status", state, f"chassis power {state}", 0.01)

    async def fence(self, node: str) -> FenceResult:
        self.calls.append(f"off {node}")
        return FenceResult(True, "off", "off", "power off confirmed", 0.01)

    async def power_on(self, confirm: bool = True) -> FenceResult:
        ok = self.on_ok.pop(0) if self.on_ok else True
        self.calls.append("on" if ok else "on failed")
        return FenceResult(ok, "on", "on" if ok else None,
                           "power on confirmed" if ok else "BMC did not answer", 0.01)


@pytest.fixture
def world(monkeypatch, store):
    calls: list[str] = []
    on_ok: list[bool] = []
    logs: list[tuple[str, str]] = []
    power: dict[str, Any] = {}
    monkeypatch.setattr(fencer_mod, "make_device", lambda cfg: Device(calls, on_ok, power))
    hub = SimpleNamespace(node="n1", store=store, timers=SimpleNamespace(fence_retry=0.2),
                          log=lambda level, source, msg: logs.append((level, msg)),
                          wake=lambda: None)
    return SimpleNamespace(fencer=Fencer(hub), calls=calls, on_ok=on_ok, logs=logs,
                           store=store, power=power)


async def decision(store: Store, target: str = "n2") -> Guard:
    """n1 holds the manager lock; `target` has a heartbeat: what a CRM round reads."""
    await store.put(keys.HA_MANAGER_LOCK, "n1")
    await store.put(keys.ha_heartbeat(target), {"node": target})
    await store.put(keys.ha_fence(target), {"type": "ipmi", "ip": "192.0.2.1",
                                            "username": "admin", "password": "x",
                                            "action": "reboot"})
    lock = await store.get(keys.HA_MANAGER_LOCK)
    beat = await store.get(keys.ha_heartbeat(target))
    assert lock is not None and beat is not None
    return Guard(lock.mod_revision, beat.mod_revision)


async def settle(w: Any, node: str = "n2") -> None:
    for _ in range(100):
        task = w.fencer._tasks.get(node)
        power = w.fencer._power_tasks.get(node)
        if (task is None or task.done()) and (power is None or power.done()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("fencer tasks did not finish")


async def record(store: Store, node: str = "n2") -> dict[str, Any]:
    raw = await store.get(keys.ha_fence_request(node))
    assert raw is not None
    return raw.value


async def test_a_decision_still_owned_fences_then_powers_on(world) -> None:
    guard = await decision(world.store)
    rid = world.fencer.request("n2", guard)
    await settle(world)
    assert world.calls == ["off n2", "on"]
    assert world.fencer.status("n2").request_id == rid
    assert world.fencer.status("n2").state == FenceState.CONFIRMED
    rec = await record(world.store)
    assert rec["power_on"] == "done" and rec["action"] == "reboot" and rec["by"] == "n1"
    # counted for the metrics (binome_ha_fence_device_runs_total) by the node that ran it
    assert list(world.fencer.stats.device_runs) == [("n2", "reboot", "confirmed")]
    assert world.fencer.stats.device_runs[("n2", "reboot", "confirmed")].count == 1


async def test_a_lost_lock_drops_the_request(world) -> None:
    guard = await decision(world.store)
    await world.store.put(keys.HA_MANAGER_LOCK, "n3")   # another master since
    world.fencer.request("n2", guard)
    await settle(world)
    assert world.calls == []
    status = world.fencer.status("n2")
    assert status.state == FenceState.FAILED
    assert "the manager lock is no longer ours" in status.detail
    assert world.fencer.stats.device_runs == {}    # the device was never run


async def test_a_renewal_since_the_decision_drops_the_request(world) -> None:
    guard = await decision(world.store)
    await world.store.put(keys.ha_heartbeat("n2"), {"node": "n2"})   # it renewed
    world.fencer.request("n2", guard)
    await settle(world)
    assert world.calls == []
    assert "n2 renewed its lease since the decision" in world.fencer.status("n2").detail


async def test_an_expiry_since_the_decision_only_confirms_it(world) -> None:
    guard = await decision(world.store)
    await world.store.delete(keys.ha_heartbeat("n2"))   # its lease expired meanwhile
    world.fencer.request("n2", guard)
    await settle(world)
    assert world.calls == ["off n2", "on"]


async def test_a_node_never_fences_itself(world) -> None:
    guard = await decision(world.store, target="n1")
    world.fencer.request("n1", guard)
    await settle(world, "n1")
    assert world.calls == []
    assert "never fences itself" in world.fencer.status("n1").detail


async def test_action_off_leaves_it_off(world) -> None:
    guard = await decision(world.store)
    await world.store.put(keys.ha_fence("n2"), {"type": "ipmi", "ip": "192.0.2.1",
                                                "username": "admin", "password": "x",
                                                "action": "off"})
    world.fencer.request("n2", guard)
    await settle(world)
    assert world.calls == ["off n2"]
    assert "power_on" not in await record(world.store)


async def test_a_failed_power_on_is_a_debt_the_master_retries(world) -> None:
    guard = await decision(world.store)
    world.on_ok.extend([False, False])
    world.fencer.request("n2", guard)
    await settle(world)
    assert world.calls == ["off n2", "on failed"]
    assert (await record(world.store))["power_on"] == "owed"
    alerts = [m for level, m in world.logs if level == "alert"]
    assert len(alerts) == 1 and "stays powered off" in alerts[0], world.logs
    records = {"n2": await record(world.store)}
    # not master: nothing; master but the retry is not due yet: nothing
    world.fencer.settle_power_debts(records, None)
    world.fencer.settle_power_debts(records, guard.lock_revision)
    await settle(world)
    assert world.calls == ["off n2", "on failed"]
    await asyncio.sleep(0.25)   # fence_retry
    world.fencer.settle_power_debts(records, guard.lock_revision)
    await settle(world)
    assert world.calls == ["off n2", "on failed", "on failed"]
    assert len([m for level, m in world.logs if level == "alert"]) == 1   # not every retry
    await asyncio.sleep(0.25)
    # a master whose lock changed leaves the debt to the next one
    await world.store.put(keys.HA_MANAGER_LOCK, "n1")
    world.fencer.settle_power_debts(records, guard.lock_revision)
    await settle(world)
    assert world.calls == ["off n2", "on failed", "on failed"]
    lock = await world.store.get(keys.HA_MANAGER_LOCK)
    await asyncio.sleep(0.25)
    world.fencer.settle_power_debts(records, lock.mod_revision)
    await settle(world)
    assert world.calls[-1] == "on"
    assert (await record(world.store))["power_on"] == "done"


async def test_a_power_on_by_hand_settles_the_debt(store) -> None:
    """`binome fence NODE --power-on` (api fence_power_on) marks an owed power-on done, so
    no master powers the node on again later; other records are left as they are."""
    from binome.ha.config import HaConfig

    config = HaConfig(store)
    await config.settle_power_on("n2")   # no record: nothing to do
    assert await store.get(keys.ha_fence_request("n2")) is None
    await store.put(keys.ha_fence_request("n2"), {"request": "r1", "state": "confirmed",
                                                   "power_on": "owed"})
    await config.settle_power_on("n2")
    assert (await record(store))["power_on"] == "done by hand"
    await store.put(keys.ha_fence_request("n2"), {"request": "r2", "state": "failed"})
    await config.settle_power_on("n2")
    assert await record(store) == {"request": "r2", "state": "failed"}


# ------------------------------------------------------------ power probes (ha.probe)

async def silent_node(store: Store, target: str = "n2") -> tuple[int, int, int]:
    """n1 is master; `target`'s heartbeat is bound to a real lease, as binomed writes it.
    Returns (lock revision, heartbeat revision, lease id): what the CRM's snapshot saw."""
    await decision(store, target)
    lease = await store.grant_lease(30)
    await store.put(keys.ha_heartbeat(target), {"seq": 1}, lease=lease)
    lock = await store.get(keys.HA_MANAGER_LOCK)
    beat = await store.get(keys.ha_heartbeat(target))
    assert lock is not None and beat is not None
    return lock.mod_revision, beat.mod_revision, lease


async def probed(w: Any, node: str = "n2") -> Any:
    for _ in range(100):
        task = w.fencer._probe_tasks.get(node)
        if task is not None and task.done():
            return w.fencer.probe_status(node)
        await asyncio.sleep(0.02)
    raise AssertionError("probe did not finish")


async def test_a_chassis_read_off_revokes_the_silent_nodes_lease(world) -> None:
    lock, beat, lease = await silent_node(world.store)
    world.power["state"] = "off"
    rid = world.fencer.probe("n2", lock, beat, lease)
    st = await probed(world)
    assert (st.request_id, st.state, st.detail) == (rid, FenceState.CONFIRMED,
                                                    "chassis power off")
    assert world.calls == ["status"]                   # a read: never an action
    assert await world.store.get(keys.ha_heartbeat("n2")) is None   # lease revoked
    assert ("n2", "status", "confirmed") in world.fencer.stats.device_runs


async def test_a_chassis_read_on_changes_nothing(world) -> None:
    lock, beat, lease = await silent_node(world.store)
    world.power["state"] = "on"
    world.fencer.probe("n2", lock, beat, lease)
    st = await probed(world)
    assert st.state == FenceState.FAILED and st.detail == "chassis power on"
    raw = await world.store.get(keys.ha_heartbeat("n2"))
    assert raw is not None and raw.mod_revision == beat     # lease and heartbeat intact


async def test_a_renewal_before_the_read_skips_the_device(world) -> None:
    lock, beat, lease = await silent_node(world.store)
    await world.store.put(keys.ha_heartbeat("n2"), {"seq": 2}, lease=lease)   # it renewed
    world.power["state"] = "off"
    world.fencer.probe("n2", lock, beat, lease)
    st = await probed(world)
    assert st.state == FenceState.FAILED and "renewed" in st.detail
    assert world.calls == []


async def test_a_renewal_during_the_read_keeps_the_lease(world) -> None:
    """The node renews while the BMC answers "off" (a stale or wrong reading): the second
    check sees the renewal and nothing is revoked."""
    lock, beat, lease = await silent_node(world.store)

    async def renew() -> None:
        await world.store.put(keys.ha_heartbeat("n2"), {"seq": 2}, lease=lease)
    world.power.update(state="off", during=renew)
    world.fencer.probe("n2", lock, beat, lease)
    st = await probed(world)
    assert st.state == FenceState.FAILED and st.detail.startswith("read off, but")
    assert await world.store.get(keys.ha_heartbeat("n2")) is not None


async def test_a_master_that_lost_its_lock_does_not_probe(world) -> None:
    lock, beat, lease = await silent_node(world.store)
    await world.store.put(keys.HA_MANAGER_LOCK, "n3")   # another master since
    world.power["state"] = "off"
    world.fencer.probe("n2", lock, beat, lease)
    st = await probed(world)
    assert "the manager lock is no longer ours" in st.detail
    assert world.calls == [] and await world.store.get(keys.ha_heartbeat("n2")) is not None


async def test_a_candidate_probes_the_masters_node_without_a_lock(world) -> None:
    """Not master (lock_revision None): the probe of the master's node frees its lock."""
    _lock, beat, lease = await silent_node(world.store)
    await world.store.put(keys.HA_MANAGER_LOCK, "n2", lease=lease)   # n2 is the master
    world.power["state"] = "off"
    world.fencer.probe("n2", None, beat, lease)
    st = await probed(world)
    assert st.state == FenceState.CONFIRMED
    assert await world.store.get(keys.HA_MANAGER_LOCK) is None
