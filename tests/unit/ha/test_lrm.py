"""The LRM: exactly once per uid, the agent lock (quorum + fresh lease), watchdog ordering."""

from __future__ import annotations

import pytest

from binome.ha.lrm import Lrm
from binome.ha.model import (
    DisarmMode,
    ExitCode,
    LeaseInfo,
    LrmMode,
    LrmResult,
    LrmState,
    LrmStatus,
    ManagerStatus,
    NodeRecord,
    NodeState,
    ServiceState,
    ServiceStatus,
    ShutdownPolicy,
)
from binome.ha.timers import HaTimers

from .fakes import FakeEnv

S = ServiceState
OK = LrmResult("vm:100", "start", ExitCode.SUCCESS)


def env_with(state: ServiceState, uid: str = "u1", **kw) -> FakeEnv:
    env = FakeEnv(**kw)
    env.status = ManagerStatus(service_status={"vm:100": ServiceStatus(state, "n1", uid)})
    return env


def lrm(env: FakeEnv) -> Lrm:
    return Lrm(env, HaTimers())


def test_start_runs_once_per_uid():
    env = env_with(S.STARTING)
    agent = lrm(env)
    agent.step()
    agent.step()
    assert env.executed("start") == [("start", "vm:100", "u1")]
    env.finish("u1", OK)
    env.running.add("vm:100")
    agent.step()
    agent.step()
    assert len(env.executed("start")) == 1
    assert env.own_status.results["u1"].exit_code == ExitCode.SUCCESS


def test_a_new_uid_is_a_new_command():
    env = env_with(S.STARTING)
    agent = lrm(env)
    agent.step()
    env.finish("u1", LrmResult("vm:100", "start", ExitCode.ERROR, "boom"))
    agent.step()
    env.status.service_status["vm:100"].uid = "u2"
    agent.step()
    assert [c[2] for c in env.executed("start")] == ["u1", "u2"]


def test_watchdog_is_armed_before_the_first_start():
    env = env_with(S.STARTING)
    lrm(env).step()
    kinds = [c[0] for c in env.calls]
    assert kinds.index("watchdog_arm") < kinds.index("start")
    _, deadline, sids = env.calls[kinds.index("watchdog_arm")]
    assert deadline == pytest.approx(99.5 + HaTimers().self_fence_deadline)   # from the renewal
    assert sids == {"vm:100"}                       # listed before it starts


def test_a_migration_target_protects_the_incoming_guest():
    env = env_with(S.MIGRATE)
    env.name = "n2"
    env.status.service_status["vm:100"].target = "n2"
    lrm(env).step()
    assert env.executed("watchdog_arm")[0][2] == {"vm:100"}


def test_stale_lease_stops_petting_and_acting():
    env = env_with(S.STARTED)
    env.running.add("vm:100")
    agent = lrm(env)
    agent.step()
    assert agent.state == LrmState.ACTIVE
    env.calls.clear()
    env.lease = LeaseInfo(True, env.t - HaTimers().self_fence_deadline - 0.01)   # deadline passed
    env.status.service_status["vm:100"] = ServiceStatus(S.MIGRATE, "n1", "u9", target="n2")
    agent.step()
    assert agent.state == LrmState.LOST_AGENT_LOCK
    assert not env.executed("watchdog_arm") and not env.executed("migrate")


def test_nothing_happens_without_quorum():
    env = env_with(S.STARTING, is_quorate=False)
    agent = lrm(env)
    agent.step()
    assert not env.executed("start") and not env.executed("watchdog_arm")


def test_disarm_is_reported_before_the_watchdog_is_released():
    env = env_with(S.STARTED)
    env.running.add("vm:100")
    agent = lrm(env)
    agent.step()
    env.calls.clear()
    env.status.disarm = DisarmMode.FREEZE
    agent.step()
    kinds = [c for c in env.calls if c[0] in ("write_lrm_status", "watchdog_disarm")]
    assert kinds[0] == ("write_lrm_status", False)
    assert ("watchdog_disarm",) in kinds
    assert agent.mode == LrmMode.DISARM


def test_disarm_keeps_the_watchdog_if_the_report_fails():
    env = env_with(S.STARTED)
    env.running.add("vm:100")
    agent = lrm(env)
    agent.step()
    env.status.disarm = DisarmMode.FREEZE
    env.own_revision = 99   # someone else wrote: our CAS fails
    agent.step()
    assert not env.executed("watchdog_disarm")


def test_stopped_is_reapplied_when_found_running():
    env = env_with(S.STOPPED)
    env.running.add("vm:100")
    lrm(env).step()
    assert env.executed("stop") == [("stop", "vm:100", "u1:ensure-stopped")]


def test_results_of_a_previous_life_are_not_rerun():
    env = env_with(S.MIGRATE)
    env.status.service_status["vm:100"].target = "n2"
    env.running.add("vm:100")
    env.own_status = LrmStatus("n1", results={
        "u1": LrmResult("vm:100", "migrate", ExitCode.SUCCESS)})
    lrm(env).step()
    assert not env.executed("migrate")


def test_a_fired_watchdog_resets_the_agent():
    env = env_with(S.STARTED)
    env.running.add("vm:100")
    agent = lrm(env)
    agent.step()
    env.watchdog_has_fired = True
    env.running.clear()
    agent.step()
    assert "watchdog fired" in env.log_text()
    assert agent.state == LrmState.ACTIVE   # re-armed at once: it still has a service


def test_no_command_runs_while_the_manager_fences_this_node():
    env = env_with(S.STARTING)
    env.status.node_status["n1"] = NodeRecord(NodeState.FENCE)
    lrm(env).step()
    assert not env.executed("start")


@pytest.mark.parametrize("policy, request_, mode", [
    (ShutdownPolicy.CONDITIONAL, "reboot", LrmMode.RESTART),
    (ShutdownPolicy.CONDITIONAL, "poweroff", LrmMode.SHUTDOWN),
    (ShutdownPolicy.FREEZE, "poweroff", LrmMode.RESTART),
    (ShutdownPolicy.FAILOVER, "reboot", LrmMode.SHUTDOWN),
    (ShutdownPolicy.MIGRATE, "reboot", LrmMode.MAINTENANCE),
])
def test_shutdown_policy_sets_the_mode(policy, request_, mode):
    env = env_with(S.STARTED, shutdown=request_)
    env.settings.shutdown_policy = policy
    agent = lrm(env)
    agent.step()
    assert agent.mode == mode


def test_failover_shutdown_stops_guests_then_declares_ready():
    env = env_with(S.STARTED, shutdown="poweroff")
    env.running.add("vm:100")
    agent = lrm(env)
    agent.step()
    assert env.executed("stop") and not env.executed("shutdown_ready")
    env.running.clear()
    env.finish("shutdown:vm:100", LrmResult("vm:100", "stop", ExitCode.SUCCESS))
    agent.step()
    assert env.executed("shutdown_ready")
    assert env.own_status.shutdown_done


def test_a_new_life_reports_before_it_acts():
    env = env_with(S.STARTING)
    env.own_status = LrmStatus("n1", shutdown_done=True)   # the report of its previous life
    lrm(env).step()
    kinds = [c[0] for c in env.calls]
    assert kinds[0] == "write_lrm_status" and kinds.index("write_lrm_status") < kinds.index(
        "watchdog_arm") < kinds.index("start")
    assert env.own_status.shutdown_done is False
