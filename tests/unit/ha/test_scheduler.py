"""Node selection: node affinity (groups), resource affinity, nofailback, load, replicas, avoid."""

from __future__ import annotations

from binome.ha.model import GroupConfig
from binome.ha.rules import NodeAffinity
from binome.ha.scheduler import Placement, group_affinity, select_node, uptodate_nodes

UP = "UpToDate"


def place(**kw):
    """A placement; `group=` is given as the node affinity the group translates to."""
    g = kw.pop("group", None)
    if g is not None:
        kw["affinity"] = group_affinity(g)
        kw.setdefault("failback", not g.nofailback)
    base = {"sid": "vm:100", "current": None, "online": ["n1", "n2", "n3"]}
    return select_node(Placement(**{**base, **kw}))


def group(nodes, **kw):
    return GroupConfig("g", nodes=nodes, **kw)


def test_no_group_picks_least_loaded_then_name():
    assert place(load={"n1": 2, "n2": 1, "n3": 1}).node == "n2"
    assert place(load={}).node == "n1"


def test_highest_priority_wins_over_load():
    choice = place(group=group({"n1": 1, "n3": 5}), load={"n3": 9})
    assert choice.node == "n3"


def test_unrestricted_group_falls_back_to_non_members():
    choice = place(group=group({"n1": 2}), online=["n2", "n3"], load={"n3": 1})
    assert choice.node == "n2"


def test_restricted_group_never_leaves_its_members():
    choice = place(group=group({"n1": 1}, restricted=True), online=["n2", "n3"])
    assert choice.node is None
    assert "restricted group g" in choice.reason and "n1" in choice.reason


def test_failback_to_preferred_node_unless_nofailback():
    g = {"n1": 2, "n2": 1}
    assert place(group=group(g), current="n2", stay=True).node == "n1"
    assert place(group=group(g, nofailback=True), current="n2", stay=True).node == "n2"


def test_stays_on_current_node_of_the_top_class():
    choice = place(group=group({"n1": 1, "n2": 1}), current="n2", load={"n2": 5}, stay=True)
    assert choice.node == "n2"


def test_never_a_node_without_uptodate_copy_of_every_volume():
    replicas = {"d0": {"n1": "Outdated", "n2": UP, "n3": "Inconsistent"},
                "d1": {"n1": UP, "n2": UP, "n3": UP}}
    choice = place(group=group({"n1": 9, "n3": 8, "n2": 1}), replicas=replicas)
    assert choice.node == "n2"


def test_stale_replicas_everywhere_block_with_the_reason():
    replicas = {"vm-100-disk-0": {"n1": UP, "n2": "Outdated"}}
    choice = place(online=["n2"], replicas=replicas)
    assert choice.node is None
    assert "UpToDate only on n1" in choice.reason and "n2: Outdated" in choice.reason


def test_a_node_missing_a_replica_cannot_host():
    assert place(online=["n3"], replicas={"d0": {"n1": UP, "n2": UP}}).node is None


def test_avoid_nodes_that_already_failed():
    assert place(avoid=frozenset({"n1", "n2"})).node == "n3"
    choice = place(avoid=frozenset({"n1", "n2", "n3"}))
    assert choice.node is None and "already failed" in choice.reason


def test_nothing_online():
    assert place(online=[]).node is None


def test_uptodate_nodes():
    assert uptodate_nodes({}) is None
    assert uptodate_nodes({"a": {"n1": UP, "n2": UP}, "b": {"n1": UP, "n2": "Outdated"}}) == {"n1"}


# ---------------------------------------------------------------- PVE 9 rules


def rule(nodes, strict=False):
    return NodeAffinity("pin", nodes, strict)


def test_strict_node_affinity_never_places_on_a_non_listed_node():
    choice = place(affinity=rule({"n1": 0}, strict=True), online=["n2", "n3"])
    assert choice.node is None
    assert choice.reason == "no online node in strict node affinity rule pin (members: n1)"


def test_non_strict_node_affinity_prefers_its_nodes_then_falls_back():
    assert place(affinity=rule({"n3": 0}), load={"n3": 5}).node == "n3"
    assert place(affinity=rule({"n3": 0}), online=["n1", "n2"]).node == "n1"


def test_negative_affinity_never_shares_a_node_while_another_can_take_it():
    apart = {"n1": frozenset({"vm:101"}), "n2": frozenset({"vm:102"})}
    choice = place(separate=apart, load={"n3": 9})
    assert choice.node == "n3"
    choice = place(separate=apart, online=["n1", "n2"])
    assert choice.node is None
    assert choice.reason == "negative resource affinity: n1 runs vm:101; n2 runs vm:102"


def test_negative_affinity_moves_a_service_off_its_partners_node():
    choice = place(current="n1", stay=True, separate={"n1": frozenset({"vm:101"})})
    assert choice.node == "n2"


def test_negative_affinity_falls_to_a_lower_priority_of_a_non_strict_rule():
    # upstream takes the top class first and finds no node; "non-strict" may fall back
    choice = place(affinity=rule({"n1": 0}), separate={"n1": frozenset({"vm:101"})})
    assert choice.node == "n2"


def test_positive_affinity_joins_the_node_with_most_partners():
    choice = place(together={"n2": 1, "n3": 2}, load={"n3": 9})
    assert choice.node == "n3" and "positive resource affinity" in choice.reason
    # a partner on a node it may not use does not pull it there
    choice = place(affinity=rule({"n1": 0, "n2": 0}, strict=True), together={"n3": 2})
    assert choice.node == "n1"


def test_negative_beats_positive():
    choice = place(together={"n2": 1}, separate={"n2": frozenset({"vm:9"})})
    assert choice.node == "n1"
