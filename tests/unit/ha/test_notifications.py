"""The CRM's notifications: which decisions raise which catalogue events, each once.

The pure manager only calls `Env.notify`; these tests read what it raised (FakeEnv.notes)
and check every note is a valid event of `binome.notify.events`."""

from __future__ import annotations

from binome.ha.model import (
    ExitCode,
    FenceState,
    FenceStatus,
    LrmResult,
    LrmState,
    LrmStatus,
    NodeState,
    ServiceState,
)
from binome.notify.events import make_event

from .fakes import FakeEnv
from .test_manager import cluster, manager, svc

S = ServiceState


def kinds(env: FakeEnv) -> list[str]:
    for kind, fields in env.notes:   # every note renders as a catalogue event
        make_event(kind, "n1", **fields)
    return [kind for kind, _ in env.notes]


def test_failover_by_lease_expiry_announces_offline_fence_and_recovery() -> None:
    env = cluster()
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert kinds(env) == ["node-offline", "fence-requested", "fence-succeeded", "ha-recovered"]
    notes = dict(env.notes)
    assert notes["node-offline"]["node"] == "n2"
    assert "watchdog" in str(notes["fence-succeeded"]["agent"])
    assert notes["ha-recovered"] == {"sid": "vm:101", "from_node": "n2", "node": "n1"}


def test_failed_device_without_watchdog_announces_fence_failed_and_blocked_once() -> None:
    env = cluster(watchdog=False, fence_device=True)
    env.expired("n2", at=env.t - 0.1)
    m = manager(env)
    m.round()
    env.notes.clear()
    env.fences["n2"] = FenceStatus(env.fences["n2"].request_id, FenceState.FAILED, "timeout")
    for _ in range(3):     # still failed: said once, not every round
        env.t += 1
        m.round()
    assert kinds(env) == ["fence-failed", "ha-recovery-blocked"]
    blocked = env.notes[1][1]
    assert blocked["reason"] == "fence-failed" and blocked["detail"] == "timeout"
    event = make_event("ha-recovery-blocked", "n1", **blocked)
    assert "could not be fenced (timeout)" in event.message


def test_recovery_waiting_for_a_replica_says_why_once() -> None:
    env = cluster()
    env.replicas["vm:101"] = {"vm-101-disk-0": {"n1": "Outdated", "n2": "UpToDate"}}
    env.expired("n2", at=env.t - 0.1)
    m = manager(env)
    m.round()
    env.t += 1
    m.round()
    assert kinds(env).count("ha-recovery-blocked") == 1
    blocked = dict(env.notes)["ha-recovery-blocked"]
    assert blocked["reason"] == "no-uptodate-replica"
    assert "UpToDate only on n2" in str(blocked["detail"])


def test_a_node_back_is_announced_online() -> None:
    env = cluster()
    env.expired("n2", at=env.t - 0.1)
    env.resources = {}
    env.status.service_status.clear()
    m = manager(env)
    m.round()
    env.t += 1
    env.alive("n1", "n2")
    m.round()
    assert env.status.node_status["n2"].state == NodeState.ONLINE
    assert kinds(env) == ["node-offline", "node-online"]


def test_a_service_given_up_is_announced_in_error() -> None:
    env = cluster()
    svc(env).state = S.STARTING
    env.lrms["n2"] = LrmStatus("n2", LrmState.ACTIVE, results={
        svc(env).uid: LrmResult("vm:101", "start", ExitCode.EWRONG_NODE, "not here")})
    manager(env).round()
    assert svc(env).state == S.ERROR
    (note,) = [fields for kind, fields in env.notes if kind == "ha-error"]
    assert note["sid"] == "vm:101" and note["node"] == "n2"
    assert kinds(env).count("ha-error") == 1
