"""The admin's manual fence confirmation (`binome fence NODE --confirm-off`) in the CRM.

A confirmation is a fence proof (`manual`) for the node's current loss only,
never while its lease is alive, and never for a later loss of the node.
"""

from __future__ import annotations

from binome.ha.manager import Manager
from binome.ha.model import (
    FenceConfirmation,
    FenceState,
    FenceStatus,
    LrmMode,
    LrmStatus,
    ManagerStatus,
    NodeFacts,
    NodeInfo,
    NodeState,
    ResourceConfig,
    ServiceState,
    ServiceStatus,
)
from binome.ha.timers import HaTimers

from .fakes import FakeEnv

S = ServiceState


def lost_n2(*, device: bool = True) -> tuple[FakeEnv, Manager]:
    """vm:100 started on n2; n2 has no watchdog and a failing device; its lease expired."""
    env = FakeEnv(nodes={"n1": NodeInfo("n1"), "n2": NodeInfo("n2", watchdog=False,
                                                                 fence_device=device)})
    env.resources = {"vm:100": ResourceConfig("vm:100")}
    env.owners = {"vm:100": "n2"}
    env.status = ManagerStatus(service_status={"vm:100": ServiceStatus(S.STARTED, "n2", "u1")})
    env.alive("n1", "n2")
    mgr = Manager(env, HaTimers())
    mgr.round()
    assert env.status.node_status["n2"].state == NodeState.ONLINE
    assert env.status.node_status["n2"].loss is None
    env.t += 10
    env.alive("n1")
    env.expired("n2", env.t - 1)
    mgr.round()
    if device:
        rid = env.fences["n2"].request_id
        env.fences["n2"] = FenceStatus(rid, FenceState.FAILED, "agent exited 1")
        env.t += 1
        mgr.round()
    assert env.status.service_status["vm:100"].state == S.FENCE
    assert env.status.node_status["n2"].state == NodeState.FENCE
    assert "binome fence n2 --confirm-off" in env.log_text()
    return env, mgr


def confirm(env: FakeEnv, node: str = "n2", user: str = "root@pam") -> FenceConfirmation:
    conf = FenceConfirmation(node, env.status.node_status[node].loss or "", user, 1.0)
    env.confirmations[node] = conf
    return conf


def test_a_confirmation_for_the_current_loss_is_a_manual_proof():
    env, mgr = lost_n2()
    loss = env.status.node_status["n2"].loss
    assert loss
    confirm(env, user="alice@pve")
    env.t += 1
    mgr.round()
    sd = env.status.service_status["vm:100"]
    assert sd.state == S.STARTING and sd.node == "n1"
    assert ("move_config", "vm:100", "n2", "n1") in env.calls
    text = env.log_text()
    assert "node n2: fenced (manual: alice@pve confirmed it is powered off)" in text
    assert "n2 fenced by manual" in text
    assert env.status.node_status["n2"].loss == loss   # kept until n2 is back


def test_no_confirmation_no_recovery():
    env, mgr = lost_n2()
    for _ in range(5):
        env.t += 5
        mgr.round()
    assert env.status.service_status["vm:100"].state == S.FENCE
    assert not [c for c in env.calls if c[0] == "move_config"]


def test_a_confirmation_for_another_loss_does_not_apply():
    env, mgr = lost_n2()
    env.confirmations["n2"] = FenceConfirmation("n2", "n2-999", "root@pam")
    env.t += 1
    mgr.round()
    assert env.status.service_status["vm:100"].state == S.FENCE


def test_a_confirmation_is_refused_while_the_lease_is_alive():
    env, mgr = lost_n2()
    confirm(env)
    env.alive("n1", "n2")  # n2 renews: it contradicts the admin; the fence is cancelled
    env.fences["n2"] = FenceStatus(env.fences["n2"].request_id, FenceState.FAILED, "x")
    env.t += 1
    mgr.round()
    assert env.status.node_status["n2"].state == NodeState.ONLINE
    assert env.status.node_status["n2"].loss is None
    sd = env.status.service_status["vm:100"]
    assert sd.node == "n2" and "fenced by manual" not in env.log_text()


def test_a_stale_confirmation_never_applies_to_a_later_loss():
    env, mgr = lost_n2()
    old = confirm(env)
    env.t += 1
    mgr.round()                      # recovered on n1 (manual)
    assert env.status.service_status["vm:100"].node == "n1"
    env.t += 5
    env.alive("n1", "n2")
    mgr.round()                      # n2 back
    assert env.status.node_status["n2"].state == NodeState.ONLINE
    assert env.status.node_status["n2"].loss is None
    # vm:100 goes back to n2 (as an admin migration would), then n2 is lost again
    env.status.service_status["vm:100"] = ServiceStatus(S.STARTED, "n2", "u9")
    env.owners["vm:100"] = "n2"
    env.t += 10
    env.alive("n1")
    env.expired("n2", env.t - 1)
    mgr.round()
    rec = env.status.node_status["n2"]
    assert rec.state == NodeState.FENCE and rec.loss and rec.loss != old.loss
    env.confirmations["n2"] = old    # still in the store
    for _ in range(3):
        env.t += 5
        mgr.round()
    assert env.status.service_status["vm:100"].state == S.FENCE
    assert env.log_text().count("fenced by manual") == 1


def test_natural_proofs_win_over_a_confirmation():
    env, mgr = lost_n2()
    confirm(env)
    env.fences["n2"] = FenceStatus(env.fences["n2"].request_id, FenceState.CONFIRMED)
    env.t += 1
    mgr.round()
    assert "fenced (device: fence device confirmed power-off)" in env.log_text()


def test_a_loss_recorded_before_losses_were_numbered_gets_a_number():
    env = FakeEnv()
    env.status = ManagerStatus.from_dict({"node_status": {"n2": {"state": "fence"}}})
    env.alive("n1")
    Manager(env, HaTimers()).round()
    assert env.status.node_status["n2"].loss == "n2-1" and env.status.next_loss == 2


def test_binomed_restart_lost_without_device_recovers_on_confirmation():
    """Section 4.5: n2 died after releasing its watchdog, no device: frozen until confirmed."""
    env = FakeEnv()
    env.resources = {"vm:100": ResourceConfig("vm:100")}
    env.owners = {"vm:100": "n2"}
    env.status = ManagerStatus(service_status={
        "vm:100": ServiceStatus(S.FREEZE, "n2", "u1", frozen_by="restart")})
    env.lrms["n2"] = LrmStatus("n2", mode=LrmMode.RESTART, daemon_restart=True,
                               watchdog_armed=False, running=["vm:100"])
    env.alive("n1")
    env.facts["n2"] = NodeFacts("n2", False, lease_gone_at=env.t, lease_expired=False)
    mgr = Manager(env, HaTimers())
    for _ in range(8):
        env.t += 5
        env.alive("n1")
        mgr.round()
    sd = env.status.service_status["vm:100"]
    assert sd.state == S.FREEZE and "binome fence n2 --confirm-off" in (sd.reason or "")
    confirm(env)
    env.t += 1
    env.alive("n1")
    mgr.round()
    sd = env.status.service_status["vm:100"]
    assert sd.node == "n1" and sd.state == S.STARTING
    assert "fenced (manual: root@pam confirmed it is powered off)" in env.log_text()


def test_confirmation_json_round_trip():
    conf = FenceConfirmation("n2", "n2-3", "root@pam", 12.5)
    assert FenceConfirmation.from_dict(conf.to_dict()) == conf
