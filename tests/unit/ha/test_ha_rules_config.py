"""binome.ha.config's rules: upstream's refusals (per-parameter 400s, "Rule 'x' is
invalid." with the feasibility errors, unmanaged resources, unknown nodes, a stale
digest), nothing written on a refusal, compare-and-swap, purge."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from binome.ha.config import HaConfig, HaConfigError, RuleInvalid, RuleParamError
from binome.store import keys
from binome.store.client import Entry

NODES = ["n1", "n2", "n3"]


class RevStore:
    """Store calls with revisions, on a dict; `race` writes once before the next commit."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[Any, int]] = {}
        self.rev = 0
        self.race: tuple[str, Any] | None = None

    def _put(self, key: str, value: Any) -> None:
        self.rev += 1
        self.data[key] = (value, self.rev)

    async def get(self, key: str, **_kw: Any) -> Entry | None:
        if key not in self.data:
            return None
        value, rev = self.data[key]
        return Entry(key, value, rev)

    async def get_value(self, key: str, default: Any = None, **_kw: Any) -> Any:
        return self.data[key][0] if key in self.data else default

    async def commit(self, expect: dict[str, int], puts: dict[str, Any]) -> bool:
        if self.race is not None:
            key, value = self.race
            self.race = None
            self._put(key, value)
        for key, rev in expect.items():
            if (self.data[key][1] if key in self.data else 0) != rev:
                return False
        for key, value in puts.items():
            self._put(key, value)
        return True

    async def update(self, key: str, mutate: Any) -> Any:
        self._put(key, mutate(self.data[key][0] if key in self.data else None))
        return self.data[key][0]


def setup() -> tuple[RevStore, HaConfig]:
    store = RevStore()
    store._put(keys.HA_RESOURCES, {f"vm:{i}": {"state": "started"} for i in (100, 101, 102)})
    return store, HaConfig(store)   # type: ignore[arg-type]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def rules_doc(store: RevStore) -> dict[str, Any]:
    return store.data.get(keys.HA_RULES, ({}, 0))[0]


def test_add_then_list_with_digest_order_and_no_errors():
    _store, cfg = setup()
    run(cfg.add_rule("pin", {"type": "node-affinity", "resources": "vm:100",
                             "nodes": "n1:2,n2", "strict": 1}, NODES))
    run(cfg.add_rule("apart", {"type": "resource-affinity", "resources": "vm:101,vm:102",
                               "affinity": "negative", "comment": "spread"}, NODES))
    rules, errors, digest = run(cfg.rules_view(NODES))
    assert errors == {} and len(digest) == 40
    assert rules["pin"].api() == {"rule": "pin", "type": "node-affinity", "resources": "vm:100",
                                  "nodes": "n1:2,n2", "strict": 1, "order": 1}
    assert rules["apart"].api()["order"] == 2 and rules["apart"].comment == "spread"


@pytest.mark.parametrize(("params", "errors"), [
    ({"type": "node-affinity", "resources": "vm:100"},
     {"nodes": "property is missing and it is not optional"}),
    ({"type": "resource-affinity", "resources": "vm:100,vm:101"},
     {"affinity": "property is missing and it is not optional"}),
    ({"type": "resource-affinity", "resources": "vm:100,vm:101", "affinity": "negative",
      "nodes": "n1"}, {"nodes": "property is not defined in schema for type "
                                "'resource-affinity'"}),
    ({"type": "node-affinity", "resources": "100", "nodes": "n1"},
     {"resources": "value '100' does not look like a valid ha resource id"}),
    ({"type": "node-affinity", "resources": "vm:100", "nodes": "n1:x"},
     {"nodes": "unable to parse HA node entry 'n1:x'"}),
])
def test_bad_parameters_are_400_per_parameter_and_change_nothing(params, errors):
    store, cfg = setup()
    with pytest.raises(RuleParamError) as exc:
        run(cfg.add_rule("r", params, NODES))
    assert exc.value.errors == errors
    assert rules_doc(store) == {}


def test_upstreams_refusals():
    _store, cfg = setup()
    with pytest.raises(HaConfigError, match=r"^cannot use unmanaged resource\(s\) vm:7, vm:9\.$"):
        run(cfg.add_rule("r", {"type": "resource-affinity", "resources": "vm:9,vm:7",
                               "affinity": "positive"}, NODES))
    with pytest.raises(HaConfigError, match=r"^cannot use non-existent node\(s\) n7\.$"):
        run(cfg.add_rule("r", {"type": "node-affinity", "resources": "vm:100",
                               "nodes": "n1,n7"}, NODES))
    run(cfg.add_rule("r", {"type": "node-affinity", "resources": "vm:100", "nodes": "n1"},
                     NODES))
    with pytest.raises(HaConfigError, match=r"^HA rule 'r' already defined$"):
        run(cfg.add_rule("r", {"type": "node-affinity", "resources": "vm:101", "nodes": "n1"},
                         NODES))
    with pytest.raises(HaConfigError, match=r"^HA rule 'nope' does not exist$"):
        run(cfg.update_rule("nope", {"comment": "x"}, [], None, NODES))


def test_a_resource_in_two_node_affinity_rules_is_refused_with_the_reason():
    store, cfg = setup()
    run(cfg.add_rule("a", {"type": "node-affinity", "resources": "vm:100", "nodes": "n1"},
                     NODES))
    before = rules_doc(store)
    with pytest.raises(RuleInvalid) as exc:
        run(cfg.add_rule("b", {"type": "node-affinity", "resources": "vm:100,vm:101",
                               "nodes": "n2"}, NODES))
    assert str(exc.value) == "Rule 'b' is invalid."
    assert exc.value.errors == {
        "resources": "resource 'vm:100' is already used in another node affinity rule"}
    assert rules_doc(store) == before


def test_conflicting_positive_and_negative_rules_are_refused():
    store, cfg = setup()
    run(cfg.add_rule("tog", {"type": "resource-affinity", "resources": "vm:100,vm:101",
                             "affinity": "positive"}, NODES))
    with pytest.raises(RuleInvalid) as exc:
        run(cfg.add_rule("apart", {"type": "resource-affinity", "resources": "vm:101,vm:100",
                                   "affinity": "negative"}, NODES))
    assert exc.value.errors == {"resources": "rule shares two or more resources with a "
                                             "positive resource affinity rule"}
    # a disabled one is accepted (disabled rules are not checked), as upstream
    run(cfg.add_rule("apart", {"type": "resource-affinity", "resources": "vm:101,vm:100",
                               "affinity": "negative", "disable": 1}, NODES))
    with pytest.raises(RuleInvalid):
        run(cfg.update_rule("apart", {"type": "resource-affinity"}, ["disable"], None, NODES))
    assert rules_doc(store)["apart"]["disable"] is True


def test_a_group_counts_as_its_node_affinity_rule():
    store, cfg = setup()
    store._put(keys.HA_GROUPS, {"g": {"nodes": {"n1": 1}}})
    store._put(keys.HA_RESOURCES, {"vm:100": {"state": "started", "group": "g"}})
    with pytest.raises(RuleInvalid, match="Rule 'pin' is invalid"):
        run(cfg.add_rule("pin", {"type": "node-affinity", "resources": "vm:100",
                                 "nodes": "n2"}, NODES))
    rules, _errors, _ = run(cfg.rules_view(NODES))
    assert list(rules) == ["ha-group-g"] and rules["ha-group-g"].api()["nodes"] == "n1:1"


def test_update_delete_digest_and_type():
    store, cfg = setup()
    run(cfg.add_rule("pin", {"type": "node-affinity", "resources": "vm:100", "nodes": "n1",
                             "strict": 1, "comment": "c"}, NODES))
    _, _, digest = run(cfg.rules_view(NODES))
    run(cfg.update_rule("pin", {"type": "node-affinity", "nodes": "n2:3"}, ["comment", "strict"],
                        digest, NODES))
    assert rules_doc(store)["pin"] == {"type": "node-affinity", "resources": ["vm:100"],
                                       "nodes": {"n2": 3}, "strict": False, "order": 1}
    with pytest.raises(HaConfigError, match="detected modified configuration"):
        run(cfg.update_rule("pin", {"comment": "x"}, [], digest, NODES))
    with pytest.raises(RuleParamError) as exc:
        run(cfg.update_rule("pin", {"type": "resource-affinity"}, [], None, NODES))
    assert exc.value.errors == {"type": "rule 'pin' is a node-affinity rule"}
    with pytest.raises(RuleParamError) as exc:
        run(cfg.update_rule("pin", {}, ["nodes"], None, NODES))
    assert exc.value.errors == {"delete": "unable to delete required option 'nodes'"}


def test_a_concurrent_change_is_retried_not_lost():
    store, cfg = setup()
    store.race = (keys.HA_RULES, {"other": {"type": "resource-affinity",
                                            "resources": ["vm:100", "vm:101"],
                                            "affinity": "positive", "order": 1}})
    run(cfg.add_rule("pin", {"type": "node-affinity", "resources": "vm:102", "nodes": "n1"},
                     NODES))
    assert set(rules_doc(store)) == {"other", "pin"}
    assert rules_doc(store)["pin"]["order"] == 2


def test_purge_takes_a_resource_out_of_rules_and_drops_emptied_ones():
    store, cfg = setup()
    run(cfg.add_rule("pin", {"type": "node-affinity", "resources": "vm:100", "nodes": "n1"},
                     NODES))
    run(cfg.add_rule("tog", {"type": "resource-affinity", "resources": "vm:100,vm:101",
                             "affinity": "positive"}, NODES))
    run(cfg.purge_rules_of("vm:100"))
    assert rules_doc(store) == {"tog": {"type": "resource-affinity", "resources": ["vm:101"],
                                        "affinity": "positive", "order": 2}}
