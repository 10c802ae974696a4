"""binome.ha.config: the pure merges and decoders, and the compare-and-swap edits of the
resources and groups documents (on an in-memory store)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from binome.ha.config import (
    HaConfig,
    HaConfigError,
    config_digest,
    decode_commands,
    decode_groups,
    decode_resources,
    decode_settings,
    merge_group,
    merge_resource,
    sid_of,
    vmid_of_sid,
)
from binome.ha.model import HaSettings, ShutdownPolicy
from binome.store import keys


class MemoryStore:
    """The few Store calls HaConfig makes, on a dict."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get(self, key: str, **_kw: Any) -> Any:
        return self.data.get(key)

    async def get_value(self, key: str, default: Any = None, **_kw: Any) -> Any:
        return self.data.get(key, default)

    async def put(self, key: str, value: Any) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def update(self, key: str, mutate: Any) -> Any:
        self.data[key] = mutate(self.data.get(key))
        return self.data[key]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_pure_helpers() -> None:
    assert sid_of(100) == "vm:100" and vmid_of_sid("vm:100") == 100
    assert vmid_of_sid("ct:100") is None
    assert config_digest({}) == config_digest(None)
    assert merge_resource({"state": "started", "stop_timeout": 0, "comment": "x"},
                          {"state": "enabled", "max_restart": 2}, ["comment"]) == {
        "state": "started", "max_restart": 2}
    assert merge_group({}, {"nodes": "n1:2,n2", "restricted": True}) == {
        "nodes": {"n1": 2, "n2": 0}, "restricted": True}
    assert decode_resources({"vm:1": {"state": "stopped"}})["vm:1"].state == "stopped"
    assert decode_groups({"g": {"nodes": {"n1": 1}}})["g"].nodes == {"n1": 1}
    assert decode_settings(None) == HaSettings()
    assert decode_settings({"shutdown_policy": "freeze"}).shutdown_policy == \
        ShutdownPolicy.FREEZE
    assert decode_commands([(keys.ha_command("2"), "b"), ("/x", "y"),
                            (keys.ha_command("1"), "a")]) == [
        (keys.ha_command("1"), "a"), (keys.ha_command("2"), "b")]


def test_resource_and_group_edits() -> None:
    store = MemoryStore()
    config = HaConfig(store)  # type: ignore[arg-type]
    with pytest.raises(HaConfigError, match="no such VM '100'"):
        run(config.add_resource("vm:100", {}))
    store.data[keys.vmid(100)] = "n1"
    with pytest.raises(HaConfigError, match="no such ha group 'g'"):
        run(config.add_resource("vm:100", {"group": "g"}))
    run(config.add_group("g", {"nodes": "n1:1"}))
    with pytest.raises(HaConfigError, match="already defined"):
        run(config.add_group("g", {"nodes": "n1"}))
    run(config.add_resource("vm:100", {"group": "g", "max_restart": 3}))
    with pytest.raises(HaConfigError, match="resource ID 'vm:100' already defined"):
        run(config.add_resource("vm:100", {}))
    doc = run(config.resources())
    assert doc == {"vm:100": {"state": "started", "group": "g", "max_restart": 3}}
    with pytest.raises(HaConfigError, match="detected modified configuration"):
        run(config.update_resource("vm:100", {"state": "stopped"}, digest="0" * 40))
    with pytest.raises(HaConfigError, match="no such ha group 'nope'"):
        run(config.update_resource("vm:100", {"group": "nope"}))
    assert run(config.resources()) == doc          # refused: nothing changed
    run(config.update_resource("vm:100", {"state": "stopped"}, ["max_restart"],
                               digest=config_digest(doc)))
    run(config.set_requested_state("vm:100", "started", 0.0))
    assert run(config.resource("vm:100")) == {"state": "started", "group": "g",
                                              "stop_timeout": 0.0}
    assert run(config.managed_resource(100)) is not None
    with pytest.raises(HaConfigError, match="ha group 'g' is used by vm:100"):
        run(config.remove_group("g"))
    run(config.remove_resource("vm:100"))
    with pytest.raises(HaConfigError, match="no such resource 'vm:100'"):
        run(config.remove_resource("vm:100"))
    run(config.remove_group("g"))
    assert run(config.groups()) == {}
    run(config.set_settings(HaSettings(ShutdownPolicy.MIGRATE)))
    assert run(config.settings()) == {"shutdown_policy": "migrate"}
    run(config.set_settings(None))
    assert run(config.settings()) == {}
