"""Power probes (`ha.probe`): a silent node's chassis read off is recovered at once; any
other answer, or a node that renews, changes nothing."""

from __future__ import annotations

from binome.ha.crm import Crm
from binome.ha.model import CrmState, FenceState, FenceStatus, NodeFacts, NodeInfo
from binome.ha.timers import HaTimers

from .test_manager import cluster, manager, svc

S_FENCE_PROOF = "fenced (power-off"


def probes(env) -> list[str]:
    return [c[1] for c in env.calls if c[0] == "probe"]


def answer(env, node: str, state: FenceState, detail: str = "") -> None:
    env.probes[node] = FenceStatus(env.probes[node].request_id, state, detail)


def test_a_node_is_probed_only_once_a_renewal_is_missed():
    env = cluster(fence_device=True)
    m = manager(env)
    env.alive("n2", renewed=env.t - 1.4)       # within 1.5 x keepalive_interval
    m.round()
    assert probes(env) == []
    env.alive("n2", renewed=env.t - 1.6)
    m.round()
    assert probes(env) == ["n2"]
    assert "node n2: no renewal for 1.6 s; reading its power state" in env.log_text()


def test_no_fence_device_no_probe_and_never_the_own_node():
    env = cluster()                             # n2 without a fence device
    env.nodes["n1"] = NodeInfo("n1", fence_device=True)
    env.alive("n1", "n2", renewed=env.t - 3)
    manager(env).round()
    assert probes(env) == []


def test_a_chassis_read_off_recovers_in_the_next_round():
    env = cluster(fence_device=True)
    m = manager(env)
    env.alive("n2", renewed=env.t - 1.6)
    m.round()
    answer(env, "n2", FenceState.CONFIRMED, "chassis power off")
    m.round()                                   # the revoke not seen yet: lease alive
    assert svc(env).node == "n2" and not env.executed("move_config")
    env.facts["n2"] = NodeFacts("n2", False, lease_gone_at=env.t, lease_expired=True)
    m.round()
    assert svc(env).node == "n1" and svc(env).state.value == "starting"
    assert "node n2: fenced (power-off: its fence device read chassis power off" \
        in env.log_text()
    assert "its fence device reads its chassis powered off" in env.log_text()


def test_a_chassis_read_on_is_no_proof_and_is_read_again_later():
    env = cluster(fence_device=True, watchdog=False)
    m = manager(env)
    env.alive("n2", renewed=env.t - 1.6)
    m.round()
    answer(env, "n2", FenceState.FAILED, "chassis power on")
    env.t += 0.5
    m.round()
    assert probes(env) == ["n2"]                # not before keepalive_interval
    env.t += 0.6
    m.round()
    assert probes(env) == ["n2", "n2"]          # read again: it may lose power later
    assert env.log_text().count("reading its power state") == 1
    env.facts["n2"] = NodeFacts("n2", False, lease_gone_at=env.t, lease_expired=True)
    m.round()                                   # no watchdog, no device proof: waits
    assert not env.executed("move_config")


def test_a_probe_answer_for_an_earlier_life_proves_nothing():
    env = cluster(fence_device=True, watchdog=False)
    m = manager(env)
    env.alive("n2", renewed=env.t - 1.6)
    m.round()
    answer(env, "n2", FenceState.CONFIRMED, "chassis power off")
    env.alive("n2", renewed=env.t)              # powered on again and renewing: a new life
    m.round()
    env.t += 0.2
    env.facts["n2"] = NodeFacts("n2", False, lease_gone_at=env.t, lease_expired=True)
    m.round()
    assert not env.executed("move_config")
    assert S_FENCE_PROOF not in env.log_text()


def test_a_disarmed_cluster_probes_nothing():
    env = cluster(fence_device=True)
    env.status.disarm = "freeze"
    env.alive("n2", renewed=env.t - 3)
    manager(env).round()
    assert probes(env) == []


def test_a_candidate_probes_only_the_masters_node_and_keeps_the_answer():
    env = cluster(fence_device=True)
    env.nodes["n3"] = NodeInfo("n3", fence_device=True)
    env.lock, env.lock_holder = False, "n2"     # n2 is master; n1 a candidate
    env.alive("n2", "n3", renewed=env.t - 2)
    crm = Crm(env, HaTimers())
    crm.step()
    assert crm.state == CrmState.SLAVE and probes(env) == ["n2"]
    answer(env, "n2", FenceState.CONFIRMED, "chassis power off")
    env.facts["n2"] = NodeFacts("n2", False, lease_gone_at=env.t, lease_expired=True)
    env.lock = True                             # its lease revoked, the lock is free: ours
    crm.step()
    assert crm.state == CrmState.MASTER
    assert svc(env).node == "n1"
    assert "n2 fenced by power-off" in env.log_text()
