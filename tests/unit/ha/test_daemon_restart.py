"""binomed restart (LRM mode `restart`, issue 5): freeze, acknowledgement, watchdog release,
unfreeze, and what the CRM may do when the node dies while its watchdog is released."""

from __future__ import annotations

from binome.ha.lrm import Lrm
from binome.ha.manager import Manager
from binome.ha.model import (
    ExitCode,
    FenceState,
    FenceStatus,
    LrmMode,
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
OK = LrmResult("vm:100", "start", ExitCode.SUCCESS)


# ---------------------------------------------------------------- LRM


def restarting_lrm() -> tuple[FakeEnv, Lrm]:
    env = FakeEnv()
    env.status = ManagerStatus(service_status={"vm:100": ServiceStatus(S.STARTED, "n1", "u1")})
    env.running.add("vm:100")
    agent = Lrm(env, HaTimers())
    agent.step()
    assert agent.armed and agent.state == LrmState.ACTIVE
    env.shutdown = "restart"
    return env, agent


def test_restart_mode_reports_and_waits_for_the_freeze():
    env, agent = restarting_lrm()
    env.settings.shutdown_policy = "failover"   # a daemon restart ignores the host policy
    agent.step()
    assert agent.mode == LrmMode.RESTART
    assert env.own_status.mode == LrmMode.RESTART and env.own_status.daemon_restart
    assert env.own_status.watchdog_armed  # still protected until the CRM acknowledged
    assert not env.executed("watchdog_disarm") and not env.executed("shutdown_ready")
    assert not env.executed("stop")       # guests are left running, never stopped


def test_restart_releases_the_watchdog_after_the_freeze_reported_first():
    env, agent = restarting_lrm()
    agent.step()
    env.status.service_status["vm:100"].state = S.FREEZE   # the CRM's acknowledgement
    env.calls.clear()
    agent.step()
    kinds = [c for c in env.calls
             if c[0] in ("write_lrm_status", "watchdog_disarm", "shutdown_ready")]
    assert kinds[0] == ("write_lrm_status", False)   # the CRM learns it first
    assert kinds.index(("watchdog_disarm",)) < kinds.index(("shutdown_ready",))
    assert env.own_status.daemon_restart and not env.own_status.watchdog_armed
    assert env.own_status.running == ["vm:100"]
    assert not env.executed("stop")


def test_restart_runs_nothing_new_and_waits_for_jobs():
    env, agent = restarting_lrm()
    env.job_table["u0"] = "vm:100"      # e.g. a stop still in flight
    env.status.service_status["vm:100"] = ServiceStatus(S.FREEZE, "n1", "u1")
    env.status.service_status["vm:101"] = ServiceStatus(S.STARTING, "n1", "u2")
    agent.step()
    assert not env.executed("start")
    env.status.service_status["vm:101"].state = S.FREEZE
    agent.step()
    assert not env.executed("shutdown_ready")   # the job is not done
    env.finish("u0", LrmResult("vm:100", "stop", ExitCode.SUCCESS))
    agent.step()
    assert env.executed("shutdown_ready")


def test_restart_without_quorum_keeps_the_watchdog():
    env, agent = restarting_lrm()
    env.is_quorate = False
    for _ in range(3):
        agent.step()
    assert not env.executed("watchdog_disarm") and not env.executed("shutdown_ready")


def test_the_next_life_rearms_before_it_acts_and_adopts_the_running_guest():
    env = FakeEnv()
    env.own_status = LrmStatus("n1", mode=LrmMode.RESTART, daemon_restart=True,
                               running=["vm:100"])
    env.status = ManagerStatus(service_status={"vm:100": ServiceStatus(S.STARTING, "n1", "u5")})
    env.running.add("vm:100")
    agent = Lrm(env, HaTimers())
    agent.step()
    first = [c for c in env.calls if c[0] in ("write_lrm_status", "watchdog_arm")]
    assert first[0] == ("write_lrm_status", False)   # the new life's report, not armed yet
    assert first[1][0] == "watchdog_arm"
    assert not env.executed("start")                 # running: adopted, not restarted
    assert env.own_status.results["u5"].message == "already running"
    assert env.own_status.mode == LrmMode.ACTIVE and not env.own_status.daemon_restart


# ---------------------------------------------------------------- CRM


def cluster(**n1_info) -> FakeEnv:
    """n2 is master; vm:100 started on n1; n1's LRM restarting (restart mode, still armed)."""
    env = FakeEnv(name="n2")
    env.nodes["n1"] = NodeInfo("n1", **n1_info)
    env.alive("n1", "n2")
    env.resources = {"vm:100": ResourceConfig("vm:100")}
    env.owners = {"vm:100": "n1"}
    env.status = ManagerStatus(
        node_status={"n1": NodeRecord(NodeState.ONLINE), "n2": NodeRecord(NodeState.ONLINE)},
        service_status={"vm:100": ServiceStatus(S.STARTED, "n1", "u1")}, next_uid=2)
    env.lrms = {"n1": LrmStatus("n1", LrmState.ACTIVE, mode=LrmMode.RESTART,
                                daemon_restart=True, watchdog_armed=True, running=["vm:100"],
                                results={"u1": OK})}
    return env


def manager(env: FakeEnv) -> Manager:
    m = Manager(env, HaTimers())
    m.since = 0.0
    return m


def released(env: FakeEnv) -> None:
    """n1's LRM released its watchdog (reported), then binomed stopped and released its lease."""
    lrm = env.lrms["n1"]
    lrm.watchdog_armed, lrm.state = False, LrmState.WAIT_FOR_AGENT_LOCK
    env.facts["n1"] = NodeFacts("n1", False, lease_gone_at=env.t, lease_expired=False)


def test_the_crm_freezes_a_restarting_node_and_keeps_it_frozen_meanwhile():
    env = cluster()
    m = manager(env)
    m.round()
    sd = env.status.service_status["vm:100"]
    assert sd.state == S.FREEZE and sd.frozen_by == "restart"
    released(env)
    for dt in (1, 5, 10, 29):
        env.t = 100.0 + dt
        m.round()
        assert env.status.service_status["vm:100"].state == S.FREEZE
    assert not env.executed("fence") and not env.executed("move_config")


def test_a_pending_command_is_frozen_only_when_the_lrm_is_not_running_it():
    env = cluster()
    env.status.service_status["vm:100"] = ServiceStatus(S.STARTING, "n1", "u7")
    env.lrms["n1"].jobs = {"u7": "vm:100"}
    manager(env).round()
    assert env.status.service_status["vm:100"].state == S.STARTING
    env.lrms["n1"].jobs = {}
    env.lrms["n1"].results = {"u7": OK}
    manager(env).round()   # the result is read first (started), then frozen
    assert env.status.service_status["vm:100"].state == S.FREEZE


def test_unfrozen_when_the_lrm_is_back_active_in_place():
    env = cluster()
    m = manager(env)
    m.round()
    released(env)
    env.t += 1
    m.round()
    env.t += 7
    env.alive("n1")
    env.lrms["n1"] = LrmStatus("n1", LrmState.ACTIVE, watchdog_armed=True, running=["vm:100"])
    m.round()
    sd = env.status.service_status["vm:100"]
    assert sd.state == S.STARTING and sd.node == "n1" and sd.frozen_by is None
    assert not env.executed("move_config")


def dead_during_restart(env: FakeEnv) -> Manager:
    m = manager(env)
    m.round()
    released(env)
    env.t += 1
    m.round()    # n1 -> unknown
    env.t += HaTimers().restart_grace + 0.5
    env.alive("n2")
    m.round()
    return m


def test_dead_during_restart_without_a_device_stays_frozen_with_an_alert():
    env = cluster()
    dead_during_restart(env)
    sd = env.status.service_status["vm:100"]
    assert sd.state == S.FREEZE
    assert "only a fence device could prove it dead" in (sd.reason or "")
    assert any(lvl == "alert" for lvl, _ in env.logs)
    assert not env.executed("fence") and not env.executed("move_config")


def test_dead_during_restart_is_recovered_only_after_the_device_confirms():
    env = cluster(fence_device=True)
    m = dead_during_restart(env)
    assert env.status.service_status["vm:100"].state == S.FENCE
    assert env.executed("fence") == [("fence", "n1")]
    env.t += HaTimers().lease_ttl * 3   # lease expiry proves nothing: the watchdog was released
    env.alive("n2")
    m.round()
    assert env.status.service_status["vm:100"].state == S.FENCE
    assert not env.executed("move_config")
    env.fences["n1"] = FenceStatus(env.fences["n1"].request_id, FenceState.CONFIRMED)
    env.alive("n2")
    m.round()
    sd = env.status.service_status["vm:100"]
    assert env.executed("move_config") == [("move_config", "vm:100", "n1", "n2")]
    assert sd.node == "n2" and sd.state == S.STARTING
    assert "fenced (device" in env.log_text()


def test_a_new_master_knows_the_watchdog_was_released():
    env = cluster(fence_device=True)
    m = manager(env)
    m.round()
    released(env)
    env.t += 1
    m.round()
    # another master takes over with only what etcd holds (manager status + LRM report)
    env.status = ManagerStatus.from_dict(env.status.to_dict())
    env.facts["n1"] = NodeFacts("n1", False)   # it never saw n1's lease
    env.t += HaTimers().restart_grace + 1
    env.alive("n2")
    m2 = Manager(env, HaTimers())
    m2.since = env.t - HaTimers().restart_grace - 1
    m2.round()
    assert env.status.service_status["vm:100"].state == S.FENCE
    assert not env.executed("move_config")   # no watchdog proof: the device must confirm


def test_restart_grace_must_cover_the_fence_delay():
    import pytest

    from binome.config import ConfigError

    with pytest.raises(ConfigError, match="restart_grace"):
        HaTimers(restart_grace=2.0).validate()
    assert HaTimers.from_dict({"restart_grace": 60}).restart_grace == 60
