"""The manager with PVE 9 rules: recovery, admin moves and failback honour node and
resource affinity (rules read from the env, groups translated to rules)."""

from __future__ import annotations

from binome.ha.manager import Manager
from binome.ha.model import (
    ExitCode,
    GroupConfig,
    LrmResult,
    LrmState,
    LrmStatus,
    ManagerStatus,
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


def three_nodes(placement: dict[str, str]) -> FakeEnv:
    """n1 (master), n2, n3 online; each `sid: node` of `placement` started there."""
    env = FakeEnv()
    env.nodes = {n: NodeInfo(n) for n in ("n1", "n2", "n3")}
    env.alive("n1", "n2", "n3")
    env.resources = {sid: ResourceConfig(sid) for sid in placement}
    env.owners = dict(placement)
    env.status = ManagerStatus(
        node_status={n: NodeRecord(NodeState.ONLINE) for n in env.nodes},
        service_status={sid: ServiceStatus(S.STARTED, node, f"u{i}")
                        for i, (sid, node) in enumerate(sorted(placement.items()), start=1)},
        next_uid=len(placement) + 1)
    env.lrms = {}
    for i, (sid, node) in enumerate(sorted(placement.items()), start=1):
        lrm = env.lrms.setdefault(node, LrmStatus(node, LrmState.ACTIVE, watchdog_armed=True))
        lrm.running.append(sid)
        lrm.results[f"u{i}"] = LrmResult(sid, "start", ExitCode.SUCCESS)
    return env


def manager(env: FakeEnv) -> Manager:
    m = Manager(env, HaTimers())
    m.since = 0.0
    return m


def svc(env: FakeEnv, sid: str) -> ServiceStatus:
    return env.status.service_status[sid]


def test_recovery_never_joins_a_negative_partner_while_another_node_can_take_it():
    # least loaded after n2's loss would be n1 (1 service) over n3 (2)
    env = three_nodes({"vm:101": "n2", "vm:102": "n1", "vm:103": "n3", "vm:104": "n3"})
    env.rules = {"apart": {"type": "resource-affinity", "resources": ["vm:101", "vm:102"],
                           "affinity": "negative"}}
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert svc(env, "vm:101").node == "n3" and svc(env, "vm:101").state == S.STARTING


def test_without_the_rule_the_same_recovery_takes_the_least_loaded_node():
    env = three_nodes({"vm:101": "n2", "vm:102": "n1", "vm:103": "n3", "vm:104": "n3"})
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert svc(env, "vm:101").node == "n1"


def test_strict_node_affinity_never_recovers_onto_a_non_listed_node():
    env = three_nodes({"vm:101": "n2"})
    env.rules = {"pin": {"type": "node-affinity", "resources": ["vm:101"], "nodes": {"n2": 0},
                         "strict": True}}
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    sd = svc(env, "vm:101")
    assert sd.state == S.RECOVERY and sd.node == "n2"
    assert sd.reason == "no online node in strict node affinity rule pin (members: n2)"
    assert not env.executed("move_config")


def test_a_restricted_group_is_applied_as_its_strict_rule():
    env = three_nodes({"vm:101": "n2"})
    env.groups = {"g": GroupConfig("g", {"n2": 0}, restricted=True)}
    env.resources["vm:101"] = ResourceConfig("vm:101", group="g")
    env.expired("n2", at=env.t - 0.1)
    manager(env).round()
    assert svc(env, "vm:101").reason == "no online node in restricted group g (members: n2)"


def test_a_migration_next_to_a_negative_partner_is_refused_as_upstream():
    env = three_nodes({"vm:101": "n1", "vm:102": "n2"})
    env.rules = {"apart": {"type": "resource-affinity", "resources": ["vm:101", "vm:102"],
                           "affinity": "negative"}}
    env.commands = [("c1", "migrate vm:101 n2")]
    manager(env).round()
    assert svc(env, "vm:101").state == S.STARTED and svc(env, "vm:101").node == "n1"
    assert ("err", "migrate vm:101 n2: refused: service 'vm:102' on node 'n2' in negative "
                   "affinity with service 'vm:101'") in env.logs


def test_positive_partners_follow_a_migration():
    env = three_nodes({"vm:101": "n1", "vm:102": "n1", "vm:103": "n2"})
    env.rules = {"tog": {"type": "resource-affinity", "resources": ["vm:101", "vm:102"],
                         "affinity": "positive"}}
    env.commands = [("c1", "migrate vm:101 n3")]
    manager(env).round()
    for sid in ("vm:101", "vm:102"):
        assert svc(env, sid).state == S.MIGRATE and svc(env, sid).target == "n3"
    assert svc(env, "vm:103").state == S.STARTED


def test_a_new_negative_rule_separates_running_services_with_one_migration():
    env = three_nodes({"vm:101": "n1", "vm:102": "n1", "vm:103": "n2"})
    env.rules = {"apart": {"type": "resource-affinity", "resources": ["vm:101", "vm:102"],
                           "affinity": "negative"}}
    manager(env).round()
    moving = [sid for sid in ("vm:101", "vm:102") if svc(env, sid).state == S.MIGRATE]
    assert moving == ["vm:101"] and svc(env, "vm:101").target == "n3"
    assert svc(env, "vm:102").state == S.STARTED and svc(env, "vm:102").node == "n1"


def test_infeasible_rules_are_dropped_and_logged_once():
    env = three_nodes({"vm:101": "n1"})
    env.rules = {"one": {"type": "resource-affinity", "resources": ["vm:101"],
                         "affinity": "negative"}}
    m = manager(env)
    m.round()
    m.round()
    drops = [msg for _lvl, msg in env.logs if msg.startswith("Drop rule")]
    assert drops == ["Drop rule 'one', because rule is ineffective as there are less than "
                     "two resources."]


def test_failback_follows_the_rules_priority_unless_the_resource_says_failback_0():
    for failback, expected in ((True, S.MIGRATE), (False, S.STARTED)):
        env = three_nodes({"vm:101": "n2"})
        env.resources["vm:101"] = ResourceConfig("vm:101", failback=failback)
        env.rules = {"prefer": {"type": "node-affinity", "resources": ["vm:101"],
                                "nodes": {"n1": 2, "n2": 1}}}
        manager(env).round()
        assert svc(env, "vm:101").state == expected, failback
        if failback:
            assert svc(env, "vm:101").target == "n1"
