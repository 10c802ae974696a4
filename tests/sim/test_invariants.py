"""The simulator's invariants catch the bugs they are named after.

Each test breaks one safety rule on purpose (a "mutant" of the real code or
a direct bad action) and checks that the run fails with the right invariant.
If one of these ever passes silently, the invariant it names has gone blind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import binome.ha.context as context
import binome.ha.nodes as nodes
import binome.ha.transitions as services
from binome.ha.model import FenceProof, ServiceState
from binome.ha.scheduler import select_node
from binome.ha.sim.invariants import InvariantViolation
from binome.ha.sim.randomized import check
from binome.ha.sim.scenario import load_scenario, parse_scenario, run, start
from binome.ha.sim.world import World

TWO_NODES = {"nodes": {"n1": {"fence_device": {"delay": 1.0}}, "n2": {}}, "witness": "w"}
SERVICES = {"resources": {"vm:100": {"node": "n1", "state": "started"},
                          "vm:101": {"node": "n2", "state": "started"}}}


def scenario(cmdlist: str, cluster: dict = TWO_NODES, services: dict = SERVICES):
    return parse_scenario("mutant", cluster, services, cmdlist)


def test_a_guest_on_two_nodes_is_caught():
    world, _ = start(scenario("delay 10\n"))
    world.run_until(10_000)
    with pytest.raises(InvariantViolation, match="vm:100 runs on 2 nodes"):
        world.guests._set("vm:100", "n2", "booting", "a buggy start")


def test_an_action_without_quorum_is_caught():
    world, _ = start(scenario("delay 10\nnetwork n1 off\n"))
    world.run_until(10_500)
    with pytest.raises(InvariantViolation, match="n1 took an HA action without quorum"):
        world.guests.migrate(world.nodes["n1"], "vm:100", "u999", "n2")


def test_recovery_without_proof_is_caught(monkeypatch):
    # n2 has no watchdog: cut off, it keeps running vm:101 until someone powers it off
    cluster = {"nodes": {"n1": {}, "n2": {"watchdog": False}}, "witness": "w"}
    text = "delay 20\nnetwork n2 off\ndelay 20\n"
    world = run(scenario(text, cluster))   # the real code blocks, and says so
    assert "cannot fence: no fence device and no watchdog configured" in "\n".join(world.lines)
    monkeypatch.setattr(nodes, "_proof", lambda ctx, node, rec: (FenceProof.WATCHDOG, "mutant"))
    with pytest.raises(InvariantViolation, match="vm:101 recovered from n2 to n1 while it "
                                                 "still runs on n2"):
        run(scenario(text, cluster))


def test_trusting_a_released_watchdog_is_caught(monkeypatch):
    cluster = {"nodes": {"n1": {}, "n2": {}}, "witness": "w"}
    text = "delay 20\ncrm disarm freeze\ndelay 5\nnetwork n2 off\ndelay 10\ncrm arm\ndelay 20\n"
    run(scenario(text, cluster))
    monkeypatch.setattr(nodes, "_watchdog_trusted", lambda ctx, node: True)
    with pytest.raises(InvariantViolation, match="still runs on n2"):
        run(scenario(text, cluster))


def test_starting_on_a_stale_replica_is_caught(monkeypatch):
    text = "delay 20\nlink n2 replication off\ndelay 10\npower n1 off\ndelay 20\n"
    services = {"resources": {"vm:100": {"node": "n1", "state": "started"}}}
    run(scenario(text, services=services))

    def ignore_replicas(p):
        return select_node(dataclasses.replace(p, replicas={}))
    monkeypatch.setattr(context, "select_node", ignore_replicas)
    with pytest.raises(InvariantViolation, match="CRM ordered vm:100 to start on n2 without an "
                                                 "UpToDate replica"):
        run(scenario(text, services=services))


def first_error(seeds: range) -> str | None:
    """The first failure among the CI seeds (they stop at the first: the mutants are loud)."""
    for seed in seeds:
        error = check(seed).error
        if error:
            return error
    return None


def test_random_runs_catch_a_premature_recovery(monkeypatch):
    """Without any scenario written for it, the CI seeds find the mutant above."""
    monkeypatch.setattr(nodes, "_proof", lambda ctx, node, rec: (FenceProof.WATCHDOG, "mutant"))
    error = first_error(range(200))
    assert error is not None and "while it still runs on" in error


def test_random_runs_catch_a_recovery_that_never_happens(monkeypatch):
    monkeypatch.setitem(services._HANDLERS, ServiceState.RECOVERY, lambda ctx, sid, sd: None)
    error = first_error(range(200))
    assert error is not None and "did not converge" in error


def test_trusting_a_watchdog_released_for_a_binomed_restart_is_caught(monkeypatch):
    # n2's binomed stays down for 60 s (released its watchdog, vm:101 runs on); no device
    cluster = {"nodes": {"n1": {}, "n2": {}}, "witness": "w"}
    text = "delay 20\nrestart n2 60\ndelay 80\n"
    world = run(scenario(text, cluster))   # the real code keeps vm:101 frozen, and says so
    assert "only a fence device could prove it dead" in "\n".join(world.lines)
    monkeypatch.setattr(nodes, "_watchdog_trusted", lambda ctx, node: True)
    with pytest.raises(InvariantViolation, match="vm:101 recovered from n2 to n1 while it "
                                                 "still runs on n2"):
        run(scenario(text, cluster))


def test_random_runs_catch_a_frozen_restart_fenced_by_lease_expiry(monkeypatch):
    """The seeds with binomed restarts find a CRM that trusts a released watchdog."""
    monkeypatch.setattr(nodes, "_watchdog_trusted", lambda ctx, node: True)
    error = first_error(range(200))
    assert error is not None and "while it still runs on" in error


def test_a_dishonest_power_off_confirmation_is_caught():
    # n2 (no watchdog) is cut off but powered: an admin who confirms it off lies, and
    # the CRM would recover vm:101 while it runs on n2
    cluster = {"nodes": {"n1": {}, "n2": {"watchdog": False}}, "witness": "w"}
    world, _ = start(scenario("delay 20\nnetwork n2 off\ndelay 20\n", cluster))
    world.run_until(30_000)
    assert world.confirm_fence("n2") == "the admin finds n2 powered on and does not confirm"
    with pytest.raises(InvariantViolation, match="power-off of n2 confirmed while it is "
                                                 "powered on"):
        world.confirm_fence("n2", honest=False)


def test_a_manual_proof_without_confirmation_is_caught(monkeypatch):
    # a mutant that takes any confirmation, even one for an earlier loss, as a proof
    cluster = {"nodes": {"n1": {}, "n2": {"watchdog": False}}, "witness": "w"}

    def any_confirmation(ctx, node):
        rec = ctx.status.node_status.get(node)
        return dataclasses.replace(ctx.confirmations[node], loss=rec.loss) \
            if node in ctx.confirmations and rec is not None else None
    monkeypatch.setattr(nodes, "manual_confirmation", any_confirmation)
    text = ("delay 10\npower n2 off\ndelay 20\nfence-confirm n2\ndelay 10\npower n2 on\n"
            "delay 30\nservice vm:100 migrate n2\ndelay 10\nnetwork n2 off\ndelay 30\n")
    with pytest.raises(InvariantViolation, match=r"vm:10[01] recovered from n2 to n1 while "
                                                 r"it still runs on n2"):
        run(scenario(text, cluster))


RACE = Path(__file__).parent / "scenarios" / "master-pause-resume-race"
STALL = Path(__file__).parent / "scenarios" / "stall-below-deadline"


def test_a_fencer_without_its_guard_acts_on_a_decision_it_no_longer_owns(monkeypatch):
    """Issue 16: n1 decides to fence n2, is paused past its lease, and resumes; its
    fencer must re-check the manager lock before the device acts. Without the guard the
    invariant catches the stale fence."""
    run(load_scenario(RACE))   # with the guard: clean
    monkeypatch.setattr(World, "fencer_guard_refusal", lambda *args: None)
    with pytest.raises(InvariantViolation, match="without holding the manager lock"):
        run(load_scenario(RACE))


def test_a_master_that_counts_itself_lost_fences_its_own_node(monkeypatch):
    """Issue 16, defect 1: a resumed master whose round runs before its renewal saw its
    own lease overdue and fenced its own node. Two defences stop it: the CRM's own-node
    rule, and the fencer's guard (the node renewed between the decision and the act).
    Without both, the invariant catches it."""
    monkeypatch.setattr(nodes, "own_node", lambda ctx, node: False)
    run(load_scenario(RACE))   # the guard alone holds
    monkeypatch.setattr(World, "fencer_guard_refusal", lambda *args: None)
    with pytest.raises(InvariantViolation, match="fenced its own node"):
        run(load_scenario(RACE))


def test_a_stall_shorter_than_the_deadline_was_fenced_with_the_old_fence_delay():
    """Issue 16, defect 2: with fence_delay (3 s) below the self-fence deadline (3.8 s),
    a 3.6 s stall got a power cycle. `HaTimers.validate` now refuses such timers; forced
    past it, the simulator's invariant catches the unneeded fence."""
    case = STALL
    run(load_scenario(case))   # the shipped timers: clean
    scenario = load_scenario(case)
    old = dataclasses.replace(scenario.cluster.timers, fence_delay=3.0)   # no validate()
    scenario = dataclasses.replace(scenario, cluster=dataclasses.replace(scenario.cluster,
                                                                         timers=old))
    with pytest.raises(InvariantViolation, match="before its self-fence deadline"):
        run(scenario)


# ---------------------------------------------------------------- HA rules

THREE_NODES = {"nodes": {"n1": {"fence_device": {"delay": 1.0}},
                         "n2": {"fence_device": {"delay": 1.0}},
                         "n3": {"fence_device": {"delay": 1.0}}}, "witness": None}
APART = {"resources": {"vm:100": {"node": "n1", "state": "started"},
                       "vm:101": {"node": "n2", "state": "started"},
                       "vm:102": {"node": "n3", "state": "started"},
                       "vm:103": {"node": "n3", "state": "started"}},
         "rules": {"apart": {"type": "resource-affinity", "resources": "vm:100,vm:101",
                             "affinity": "negative"}}}


def test_recovery_next_to_a_negative_partner_is_caught(monkeypatch):
    # n1 lost: the least loaded node is n2, where vm:101 runs; the rule sends vm:100 to n3
    text = "delay 20\npower n1 off\ndelay 30\n"
    world = run(scenario(text, THREE_NODES, APART))
    assert "vm:100: recovering from fenced node n1 to n3" in "\n".join(world.lines)

    def no_resource_affinity(p):
        return select_node(dataclasses.replace(p, separate={}, together={}))
    monkeypatch.setattr(context, "select_node", no_resource_affinity)
    with pytest.raises(InvariantViolation, match="CRM ordered vm:100 onto n2 where vm:101 "
                                                 "runs or is ordered to"):
        run(scenario(text, THREE_NODES, APART))


def test_recovery_outside_a_strict_node_affinity_is_caught(monkeypatch):
    services = {"resources": {"vm:100": {"node": "n1", "state": "started"}},
                "rules": {"pin": {"type": "node-affinity", "resources": "vm:100",
                                  "nodes": "n1", "strict": True}}}
    text = "delay 20\npower n1 off\ndelay 30\n"
    world = run(scenario(text, THREE_NODES, services))
    assert "recovery waits: no online node in strict node affinity rule pin" in \
        "\n".join(world.lines)

    def no_node_affinity(p):
        return select_node(dataclasses.replace(p, affinity=None))
    monkeypatch.setattr(context, "select_node", no_node_affinity)
    with pytest.raises(InvariantViolation, match="CRM ordered vm:100 onto n2, outside its "
                                                 "strict node affinity rule pin"):
        run(scenario(text, THREE_NODES, services))
