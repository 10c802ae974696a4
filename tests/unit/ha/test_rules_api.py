"""`/cluster/ha/rules` at the API's door: PVE's parameter checks, the refusals' status
codes (400 with `errors` for a refused property or an infeasible rule, 500 with
upstream's message otherwise), and `binome ha rules config`'s table."""

from __future__ import annotations

import pytest

from binome.api.errors import ParamError
from binome.api.methods.ha import _rule_error
from binome.api.registry import registry
from binome.api.schema import validate
from binome.cli.format import ha_rules
from binome.ha.config import HaConfigError, RuleInvalid, RuleParamError


def params(method: str, path: str) -> dict:
    return next(m for m in registry.methods if m.path == path and m.method == method).parameters


def errors(method: str, path: str, given: dict) -> dict[str, str]:
    with pytest.raises(ParamError) as info:
        validate(params(method, path), given)
    assert info.value.status == 400
    return info.value.errors


def test_create_checks_rule_id_type_and_affinity_as_pve():
    post = ("POST", "/cluster/ha/rules")
    ok = validate(params(*post), {"rule": "web-apart", "type": "resource-affinity",
                                  "resources": "vm:100,vm:101", "affinity": "negative"})
    assert ok["rule"] == "web-apart"
    assert errors(*post, {"rule": "1x", "type": "node-affinity"}) == {
        "rule": "invalid configuration ID '1x'"}
    assert set(errors(*post, {"rule": "r", "type": "colocation"})) == {"rule", "type"}
    assert set(errors(*post, {"rule": "ab", "type": "resource-affinity",
                              "affinity": "sideways"})) == {"affinity"}
    assert set(errors(*post, {"rule": "ab"})) == {"type"}
    put = ("PUT", "/cluster/ha/rules/{rule}")
    assert set(errors(*put, {"rule": "ab", "type": "node-affinity", "strict": "maybe"})) == {
        "strict"}


def test_refusals_map_to_pves_status_codes():
    bad = _rule_error(RuleInvalid("r", {"resources": "m"}))
    assert (bad.status, bad.message, bad.errors) == (400, "Rule 'r' is invalid.",
                                                     {"resources": "m"})
    bad = _rule_error(RuleParamError({"nodes": "property is missing and it is not optional"}))
    assert bad.status == 400 and set(bad.errors) == {"nodes"}
    bad = _rule_error(HaConfigError("HA rule 'r' already defined"))
    assert (bad.status, bad.message, bad.errors) == (500, "HA rule 'r' already defined", {})


def test_rules_config_table_says_which_rules_are_ignored_and_why():
    text = ha_rules([
        {"rule": "apart", "type": "resource-affinity", "resources": "vm:1,vm:2",
         "affinity": "negative", "order": 1},
        {"rule": "pin", "type": "node-affinity", "resources": "vm:1", "nodes": "n1",
         "strict": 1, "disable": 1, "order": 2,
         "errors": {"resources": ["resource 'vm:1' is already used in another node "
                                  "affinity rule"]}}])
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["ENABLED", "STATE", "RULE", "TYPE", "RESOURCES"]
    assert lines[1].split()[:6] == ["1", "in", "use", "apart", "resource-affinity", "vm:1,vm:2"]
    assert "ignored (conflicts)" in lines[2] and lines[2].startswith("0")
    assert "n1 (strict)" in lines[2]
    assert lines[3] == ("pin: resources: resource 'vm:1' is already used in another node "
                        "affinity rule")


def test_resources_have_pve9s_failback():
    from binome.api.methods.ha import _resource_entry, resource_deletions
    put = params("PUT", "/cluster/ha/resources/{sid}")
    assert validate(put, {"sid": "100", "failback": "0"}) == {"sid": "vm:100", "failback": False}
    assert set(errors("PUT", "/cluster/ha/resources/{sid}",
                      {"sid": "100", "failback": "maybe"})) == {"failback"}
    assert resource_deletions({"delete": "failback"}) == ["failback"]
    assert _resource_entry("vm:100", {"state": "started"}, "d")["failback"] == 1
    assert _resource_entry("vm:100", {"state": "started", "failback": False}, "d")[
        "failback"] == 0
