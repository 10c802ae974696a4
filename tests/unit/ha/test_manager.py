"""The manager round: fencing proofs before recovery, replicas, CAS writes, restarts, commands."""

from __future__ import annotations

import pytest

from binome.ha.crm import Crm
from binome.ha.env import Conflict
from binome.ha.manager import Manager
from binome.ha.model import (
    CrmState,
    ExitCode,
    FenceState,
    FenceStatus,
    LrmResult,
    LrmState,
    LrmStatus,
    ManagerStatus,
    NodeFacts,
    NodeInfo,
    NodeRecord,
    NodeState,
    ResourceConfig,
    ServiceState,
    ServiceStatus,
)
from binome.ha.timers import HaTimers

from .fakes import FakeEnv

S = ServiceState


def cluster(**n2_info) -> FakeEnv:
    """n1 (master) and n2, both online; vm:101 started on n2."""
    env = FakeEnv()
    env.nodes["n2"] = NodeInfo("n2", **n2_info)
    env.alive("n1", "n2")
    env.resources = {"vm:101": ResourceConfig("vm:101")}
    env.owners = {"vm:101": "n2"}
    env.status = ManagerStatus(
        node_status={"n1": NodeRecord(NodeState.ONLINE), "n2": NodeRecord(NodeState.ONLINE)},
        service_status={"vm:101": ServiceStatus(S.STARTED, "n2", "u1")}, next_uid=2)
    env.lrms = {"n2": LrmStatus("n2", LrmState.ACTIVE, watchdog_armed=True, running=["vm:101"],
                                results={"u1": LrmResult("vm:101", "start", ExitCode.SUCCESS)})}
    return env


def manager(env: FakeEnv) -> Manager:
    m = Manager(env, HaTimers())
    m.since = 0.0   # master for a long time already
    return m


def svc(env: FakeEnv, sid: str = "vm:101") -> ServiceStatus:
    return env.status.service_status[sid]


def test_a_silent_node_with_a_live_lease_is_fenced_but_not_recovered():
    env = cluster()
    env.alive("n2", renewed=env.t - 4.5)
    manager(env).round()
    assert svc(env).state == S.FENCE
    assert env.status.node_status["n2"].state == NodeState.FENCE
    assert not env.executed("move_config")
    assert "waiting for its lease to expire" in env.log_text()


def test_lease_expiry_is_the_watchdog_proof():
    env = cluster()
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert env.executed("move_config") == [("move_config", "vm:101", "n2", "n1")]
    assert svc(env).state == S.STARTING and svc(env).node == "n1"
    assert "fenced (watchdog" in env.log_text()


def test_no_watchdog_and_a_failed_device_block_recovery_loudly():
    env = cluster(watchdog=False, fence_device=True)
    env.expired("n2", at=env.t - 0.1)
    m = manager(env)
    m.round()
    assert env.executed("fence") == [("fence", "n2")]
    env.fences["n2"] = FenceStatus(env.fences["n2"].request_id, FenceState.FAILED, "timeout")
    env.t += 1
    m.round()
    assert svc(env).state == S.FENCE and not env.executed("move_config")
    assert any(lvl == "alert" and "recovery of vm:101 blocked" in msg for lvl, msg in env.logs)
    assert "timeout" in svc(env).reason


def test_a_confirmed_power_off_is_the_device_proof():
    env = cluster(watchdog=False, fence_device=True)
    env.alive("n2", renewed=env.t - 4.5)
    m = manager(env)
    m.round()
    env.fences["n2"] = FenceStatus(env.fences["n2"].request_id, FenceState.CONFIRMED)
    m.round()
    assert svc(env).node == "n1" and svc(env).state == S.STARTING


def test_a_confirmation_for_an_older_request_proves_nothing():
    env = cluster(watchdog=False, fence_device=True)
    env.alive("n2", renewed=env.t - 4.5)
    env.status.node_status["n2"] = NodeRecord(NodeState.FENCE, env.t - 1, "n2#2", env.t - 1)
    svc(env).state = S.FENCE
    env.fences["n2"] = FenceStatus("n2#1", FenceState.CONFIRMED)
    manager(env).round()
    assert svc(env).state == S.FENCE and not env.executed("move_config")


def test_a_watchdog_released_while_guests_ran_is_not_trusted():
    env = cluster()
    env.lrms["n2"].watchdog_armed = False   # HA was disarmed with vm:101 running
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert svc(env).state == S.FENCE and not env.executed("move_config")
    assert "released while guests ran" in env.log_text()


def test_recovery_waits_for_an_uptodate_replica_and_says_why():
    env = cluster()
    env.replicas["vm:101"] = {"vm-101-disk-0": {"n1": "Outdated", "n2": "UpToDate"}}
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert svc(env).state == S.RECOVERY and not env.executed("move_config")
    assert "UpToDate only on n2" in svc(env).reason


def test_a_node_never_seen_gets_fence_delay_before_fencing():
    env = cluster()
    env.facts.pop("n2")
    env.status = ManagerStatus()
    env.lrms = {}
    m = manager(env)
    m.round()
    assert svc(env).state == S.REQUEST_START and env.status.node_status["n2"].state == "unknown"
    env.t += 4.1
    env.alive("n1")
    m.round()
    assert svc(env).node == "n1"   # no lease at all: its watchdog cannot be armed


def test_a_node_back_before_any_proof_keeps_its_services():
    env = cluster()
    env.alive("n2", renewed=env.t - 4.5)
    m = manager(env)
    m.round()
    env.t += 1
    env.alive("n1", "n2")
    m.round()
    assert env.status.node_status["n2"].state == NodeState.ONLINE
    assert svc(env).state == S.STARTING and svc(env).node == "n2"
    assert not env.executed("move_config")


def test_start_failures_restart_then_relocate_then_error():
    env = cluster()
    env.resources["vm:101"] = ResourceConfig("vm:101", max_restart=1, max_relocate=1)
    svc(env).state = S.STARTING
    m = manager(env)

    def fail():
        sd = svc(env)
        env.lrms[sd.node] = LrmStatus(sd.node, LrmState.ACTIVE, results={
            sd.uid: LrmResult("vm:101", "start", ExitCode.ERROR, "boom")})
        m.round()
        return svc(env).state, svc(env).node

    assert fail() == (S.STARTING, "n2")          # restart 1 of 1
    assert fail() == (S.RELOCATE, "n2")          # relocate 1 of 1 ...
    assert svc(env).target == "n1"
    sd = svc(env)
    env.lrms["n2"] = LrmStatus("n2", results={sd.uid: LrmResult("vm:101", "relocate",
                                                                ExitCode.SUCCESS)})
    m.round()
    assert (svc(env).state, svc(env).node) == (S.STARTING, "n1")
    assert fail() == (S.STARTING, "n1")
    assert fail() == (S.ERROR, "n1")
    assert "max_restart=1, max_relocate=1" in svc(env).reason


def test_the_write_compares_the_revision_read():
    env = cluster()
    env.expired("n2", at=env.t)

    def read():  # someone wrote after this round's read
        return ManagerStatus.from_dict(env.status.to_dict()), env.revision - 1

    env.read_manager_status = read
    with pytest.raises(Conflict):
        manager(env).round()


def test_crm_steps_down_when_its_write_loses():
    env = cluster()
    env.expired("n2", at=env.t)
    crm = Crm(env, HaTimers())
    crm.step()
    assert crm.state == CrmState.MASTER
    env.lock = False
    crm.step()
    assert crm.state == CrmState.LOST_MANAGER_LOCK


def test_crm_does_nothing_without_quorum():
    env = cluster()
    env.is_quorate = False
    crm = Crm(env, HaTimers())
    crm.step()
    assert crm.state == CrmState.WAIT_FOR_QUORUM
    assert not env.calls


def test_commands_are_deleted_in_the_same_write():
    env = cluster()
    env.commands = [("c1", "migrate vm:101 n1"), ("c2", "bogus")]
    manager(env).round()
    assert env.executed("write_manager_status")[-1][2] == ("c1", "c2")
    assert svc(env).state == S.MIGRATE and svc(env).target == "n1"
    assert not env.commands


def test_migrate_onto_an_outdated_copy_is_refused():
    env = cluster()
    env.replicas["vm:101"] = {"vm-101-disk-0": {"n1": "Inconsistent", "n2": "UpToDate"}}
    env.commands = [("c1", "migrate vm:101 n1")]
    manager(env).round()
    assert svc(env).state == S.STARTED
    assert "refused: no UpToDate replica of vm-101-disk-0 on n1" in env.log_text()


def test_a_completed_migration_is_adopted_not_recovered_twice():
    env = cluster()
    env.owners["vm:101"] = "n1"   # n2 -> n1 switched over, then n2 died before reporting
    svc(env).state, svc(env).target = S.MIGRATE, "n1"
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert (svc(env).state, svc(env).node) == (S.STARTING, "n1")
    assert not env.executed("move_config")


def test_a_config_on_another_lost_node_is_fenced_there_first():
    env = cluster()
    env.nodes["n3"] = NodeInfo("n3")
    env.status.node_status["n3"] = NodeRecord(NodeState.ONLINE)
    env.alive("n3", renewed=env.t - 4.5)     # silent, lease still valid: maybe alive
    env.owners["vm:101"] = "n3"              # migrated n2 -> n3, then both were lost
    svc(env).state, svc(env).target = S.MIGRATE, "n3"
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert (svc(env).state, svc(env).node) == (S.FENCE, "n3")
    assert not env.executed("move_config")


def test_a_migration_rerun_after_a_lost_result_is_recognised():
    """The source reset after the switch-over: its re-run finds the config gone (EWRONG_NODE)."""
    env = cluster()
    svc(env).state, svc(env).target, svc(env).uid = S.MIGRATE, "n1", "u5"
    env.owners["vm:101"] = "n1"
    env.lrms["n2"].results = {"u5": LrmResult("vm:101", "migrate", ExitCode.EWRONG_NODE, "x")}
    manager(env).round()
    assert (svc(env).state, svc(env).node) == (S.STARTED, "n1")


def test_a_clean_shutdown_report_proves_nothing_once_the_lease_expired():
    """Only a released lease follows the report; an expired one may belong to a later life."""
    env = cluster(watchdog=False)
    env.lrms["n2"] = LrmStatus("n2", shutdown_done=True)
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert svc(env).state == S.FENCE and not env.executed("move_config")
    env.facts["n2"] = NodeFacts("n2", False, lease_gone_at=env.t, lease_expired=False)
    manager(env).round()
    assert svc(env).state == S.STARTING and svc(env).node == "n1"


def test_a_start_refused_for_now_counts_no_restart_and_is_retried():
    """Soak finding: a copy still marked Outdated (its resync not finished) refused the
    start, which burned the only restart and left the service in `error` for good."""
    env = cluster()
    env.resources["vm:101"] = ResourceConfig("vm:101", max_restart=0, max_relocate=0)
    svc(env).state = S.STARTING
    m = manager(env)

    def not_ready():
        sd = svc(env)
        env.lrms["n2"] = LrmStatus("n2", LrmState.ACTIVE, results={
            sd.uid: LrmResult("vm:101", "start", ExitCode.ETRY_AGAIN, "copy is Outdated")})
        m.round()

    for attempt in range(4):
        not_ready()
        sd = svc(env)
        assert (sd.state, sd.node, sd.restarts) == (S.REQUEST_START, "n2", 0)
        assert "cannot start it yet (copy is Outdated)" in sd.reason
        assert sd.start_retry_at is not None
        wait = sd.start_retry_at - env.t
        assert wait == min(2 * 2 ** attempt, 30)   # manager rounds of 1 s, doubling
        m.round()
        assert svc(env).state == S.REQUEST_START   # not before its time
        env.t = sd.start_retry_at
        env.alive("n1", "n2")
        m.round()
        assert (svc(env).state, svc(env).node) == (S.STARTING, "n2")
    sd = svc(env)
    env.lrms["n2"] = LrmStatus("n2", LrmState.ACTIVE, running=["vm:101"], results={
        sd.uid: LrmResult("vm:101", "start", ExitCode.SUCCESS)})
    m.round()
    assert (svc(env).state, svc(env).deferrals) == (S.STARTED, 0)


def test_a_start_refused_for_now_goes_where_the_data_is_uptodate():
    env = cluster()
    svc(env).state = S.STARTING
    m = manager(env)
    env.replicas["vm:101"] = {"vm-101-disk-0": {"n1": "UpToDate", "n2": "Outdated"}}
    env.lrms["n2"] = LrmStatus("n2", LrmState.ACTIVE, results={
        svc(env).uid: LrmResult("vm:101", "start", ExitCode.ETRY_AGAIN, "copy is Outdated")})
    m.round()
    env.t = svc(env).start_retry_at
    env.alive("n1", "n2")
    m.round()
    assert (svc(env).state, svc(env).target, svc(env).restarts) == (S.RELOCATE, "n1", 0)
