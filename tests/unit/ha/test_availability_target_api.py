"""The per-service availability target at the API's door: the PUT/POST parameter's PVE
errors, `delete` checked as PVE's resource update does, the target a service is held
to (its own, else the cluster's) as `ha status` shows it, and the CLI's lines."""

from __future__ import annotations

import pytest

from binome.api.errors import ParamError
from binome.api.methods.ha import (
    RESOURCE_PARAMS,
    effective_target,
    ha_resource_set,
    resource_deletions,
)
from binome.api.registry import registry
from binome.api.schema import validate
from binome.cli.format import ha_status


def _set_params() -> dict:
    method = next(m for m in registry.methods
                  if m.path == "/cluster/ha/resources/{sid}" and m.method == "PUT")
    assert method.handler is ha_resource_set
    return method.parameters


def errors(given: dict) -> dict[str, str]:
    with pytest.raises(ParamError) as info:
        validate(_set_params(), {"sid": "vm:100", **given})
    assert info.value.status == 400
    return info.value.errors


def test_the_target_parameter_is_a_percentage_between_90_and_99_99999() -> None:
    assert validate(_set_params(), {"sid": "100", "availability_target": "99.99"}) == {
        "sid": "vm:100", "availability_target": 99.99}
    assert validate(_set_params(), {"sid": "vm:100", "availability_target": "90"})[
        "availability_target"] == 90
    for bad in ("89.9", "99.999999", "100", "abc", "99,9"):
        assert set(errors({"availability_target": bad})) == {"availability_target"}, bad
    assert "minimum" in errors({"availability_target": "80"})["availability_target"]
    assert "maximum" in errors({"availability_target": "100"})["availability_target"]
    assert RESOURCE_PARAMS["availability_target"].optional


def test_delete_names_options_of_a_resource_and_not_one_being_set() -> None:
    assert resource_deletions({"delete": "availability_target, comment"}) == [
        "availability_target", "comment"]
    assert resource_deletions({}) == []
    with pytest.raises(ParamError) as info:
        resource_deletions({"delete": "availability"})
    assert info.value.errors == {"delete": "no such option 'availability'"}
    with pytest.raises(ParamError) as info:
        resource_deletions({"delete": "availability_target", "availability_target": 99.9})
    assert info.value.errors == {"delete": "cannot set and delete property "
                                           "'availability_target' at the same time"}


def test_a_service_is_held_to_its_own_target_else_the_clusters() -> None:
    assert effective_target({"availability_target": 99.99},
                            {"availability_target": 99.9}) == (99.99, "service")
    assert effective_target({}, {"availability_target": 99.9}) == (99.9, "cluster")
    assert effective_target({"state": "started"}, {}) == (None, "")


def test_ha_status_lines_say_the_target_and_whose_it_is() -> None:
    text = ha_status([
        {"type": "quorum", "status": "OK"},
        {"type": "service", "status": "vm:100 (n1, started)", "availability_target": 99.99,
         "availability_target_scope": "service"},
        {"type": "service", "status": "vm:101 (n2, started)", "availability_target": 99.9,
         "availability_target_scope": "cluster"},
        {"type": "service", "status": "vm:102 (n2, started)"}])
    assert text.splitlines() == [
        "quorum OK",
        "service vm:100 (n1, started) [availability target 99.99 %]",
        "service vm:101 (n2, started) [availability target 99.9 % (cluster)]",
        "service vm:102 (n2, started)"]
