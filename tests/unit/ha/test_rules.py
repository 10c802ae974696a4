"""HA rules (pure): parsing, upstream's feasibility errors, transform, groups as rules."""

from __future__ import annotations

import pytest

from binome.ha.model import GroupConfig, ResourceConfig
from binome.ha.rules import (
    Rule,
    check_feasibility,
    compile_config,
    compile_rules,
    decode_rules,
    encode_nodes,
    migrate_groups,
    parse_nodes,
    parse_resources,
    transform,
)

NODES = ["n1", "n2", "n3"]


def na(rule_id, resources, nodes, strict=False, **kw):
    return Rule(rule_id, "node-affinity", frozenset(resources), nodes=nodes, strict=strict, **kw)


def ra(rule_id, resources, affinity, **kw):
    return Rule(rule_id, "resource-affinity", frozenset(resources), affinity=affinity, **kw)


def rules(*items):
    return {r.id: r for r in items}


def test_values_parse_and_encode_as_pve():
    assert parse_nodes("n1:2, n2;n3:0") == {"n1": 2, "n2": 0, "n3": 0}
    assert encode_nodes({"n2": 0, "n1": 2}) == "n1:2,n2"
    assert parse_resources("vm:101,vm:0100") == {"vm:101", "vm:100"}
    with pytest.raises(ValueError, match="unable to parse HA node entry 'n1:x'"):
        parse_nodes("n1:x")
    with pytest.raises(ValueError, match="does not look like a valid ha resource id"):
        parse_resources("100")
    with pytest.raises(ValueError, match="only VMs"):
        parse_resources("ct:100")


def test_stored_form_round_trips():
    r = na("pin", {"vm:100"}, {"n1": 2}, strict=True, comment="c", order=3)
    assert decode_rules({"pin": r.to_dict()}) == {"pin": r}
    assert r.api() == {"rule": "pin", "type": "node-affinity", "resources": "vm:100",
                       "nodes": "n1:2", "strict": 1, "order": 3, "comment": "c"}


def test_a_resource_in_two_node_affinity_rules_is_an_error_on_both():
    errors = check_feasibility(rules(na("a", {"vm:1", "vm:2"}, {"n1": 0}),
                                     na("b", {"vm:2"}, {"n2": 0})), NODES)
    msg = "resource 'vm:2' is already used in another node affinity rule"
    assert errors == {"a": {"resources": [msg]}, "b": {"resources": [msg]}}


def test_disabled_rules_are_not_checked():
    assert check_feasibility(rules(na("a", {"vm:1"}, {"n1": 0}),
                                   na("b", {"vm:1"}, {"n2": 0}, disable=True)), NODES) == {}


def test_resource_affinity_needs_two_resources_and_enough_nodes():
    errors = check_feasibility(rules(ra("one", {"vm:1"}, "positive"),
                                     ra("many", {"vm:1", "vm:2", "vm:3", "vm:4"}, "negative")),
                               NODES)
    assert errors["one"]["resources"] == [
        "rule is ineffective as there are less than two resources"]
    assert errors["many"]["resources"] == ["rule defines more resources than available nodes"]


def test_positive_and_negative_sharing_two_resources_conflict():
    errors = check_feasibility(rules(ra("tog", {"vm:1", "vm:2"}, "positive"),
                                     ra("tog2", {"vm:2", "vm:3"}, "positive"),
                                     ra("apart", {"vm:1", "vm:3"}, "negative")), NODES)
    assert errors["apart"]["resources"] == [
        "rule shares two or more resources with a positive resource affinity rule"]
    for rule_id in ("tog", "tog2"):   # connected positive rules are one set
        assert errors[rule_id]["resources"] == [
            "rule shares two or more resources with a negative resource affinity rule"]


def test_resource_affinity_with_a_multi_priority_node_affinity_is_refused():
    errors = check_feasibility(rules(na("pin", {"vm:1"}, {"n1": 2, "n2": 1}),
                                     ra("apart", {"vm:1", "vm:2"}, "negative")), NODES)
    assert errors["apart"]["resources"] == [
        "resources are in node affinity rules with multiple priorities"]
    assert "multiple priorities" in errors["pin"]["resources"][0]


def test_negative_resources_restricted_to_too_few_nodes():
    errors = check_feasibility(rules(na("pin", {"vm:1", "vm:2"}, {"n1": 0}, strict=True),
                                     ra("apart", {"vm:1", "vm:2"}, "negative")), NODES)
    assert errors["apart"]["resources"] == [
        "two or more resources are restricted to less nodes than available to the resources"]


def test_positive_rule_over_two_node_affinity_rules():
    errors = check_feasibility(rules(na("p1", {"vm:1"}, {"n1": 0}),
                                     na("p2", {"vm:2"}, {"n2": 0}),
                                     ra("tog", {"vm:1", "vm:2"}, "positive")), NODES)
    assert errors["tog"]["resources"] == ["resources are in multiple node affinity rules"]
    assert set(errors) == {"tog", "p1", "p2"}


def test_transform_drops_infeasible_rules_with_upstreams_message_and_keeps_the_rest():
    kept, messages = transform(rules(ra("one", {"vm:1"}, "negative"),
                                     ra("ok", {"vm:1", "vm:2"}, "negative")), NODES)
    assert set(kept) == {"ok"}
    assert messages == ["Drop rule 'one', because rule is ineffective as there are less than "
                        "two resources."]


def test_transform_merges_positive_rules_and_makes_implicit_negatives():
    kept, _ = transform(rules(ra("a", {"vm:1", "vm:2"}, "positive"),
                              ra("b", {"vm:2", "vm:3"}, "positive"),
                              ra("apart", {"vm:1", "vm:9"}, "negative"),
                              na("pin", {"vm:3"}, {"n2": 0})), NODES)
    c = compile_rules(kept)
    assert c.positive["vm:1"] == {"vm:2", "vm:3"}
    # vm:9 must stay apart from vm:1, so from its partners vm:2 and vm:3 too
    assert c.negative["vm:9"] == {"vm:1", "vm:2", "vm:3"}
    # a positive rule's resources share the node affinity of any of them
    assert c.node_affinity["vm:1"].rule == "pin"


def test_groups_become_node_affinity_rules():
    groups = {"g": GroupConfig("g", {"n1": 2, "n2": 1}, restricted=True, nofailback=True),
              "unused": GroupConfig("unused", {"n3": 0})}
    resources = {"vm:1": ResourceConfig("vm:1", group="g"), "vm:2": ResourceConfig("vm:2")}
    full = migrate_groups({}, groups, resources)
    assert list(full) == ["ha-group-g"]
    rule = full["ha-group-g"]
    assert rule.strict and rule.nodes == {"n1": 2, "n2": 1} and rule.resources == {"vm:1"}
    assert rule.comment == "Generated from HA group 'g'."
    compiled, _ = compile_config({}, groups, resources, NODES)
    assert compiled.node_affinity["vm:1"].label == "restricted group g"
    assert compiled.nofailback == {"vm:1"}


def test_a_group_and_a_rule_on_one_resource_drop_both():
    groups = {"g": GroupConfig("g", {"n1": 0})}
    resources = {"vm:1": ResourceConfig("vm:1", group="g")}
    compiled, messages = compile_config(rules(na("pin", {"vm:1"}, {"n2": 0})), groups,
                                        resources, NODES)
    assert "vm:1" not in compiled.node_affinity
    assert len(messages) == 2 and all("already used" in m for m in messages)


def test_failback_off_on_the_resource_unless_its_group_decides():
    groups = {"g": GroupConfig("g", {"n1": 1}, nofailback=False)}
    resources = {"vm:1": ResourceConfig("vm:1", failback=False),
                 "vm:2": ResourceConfig("vm:2", group="g", failback=False),
                 "vm:3": ResourceConfig("vm:3")}
    compiled, _ = compile_config({}, groups, resources, NODES)
    assert compiled.nofailback == {"vm:1"}   # vm:2: upstream's group migration overrides
    assert ResourceConfig.from_dict("vm:1", ResourceConfig("vm:1", failback=False).to_dict()
                                    ).failback is False
    assert "failback" not in ResourceConfig("vm:1").to_dict()
