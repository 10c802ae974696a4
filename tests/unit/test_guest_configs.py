"""guest.configs: the one definition of a VM config move (parts, commit, unknown outcome)
and the storage seam's pure reason for "may this node use this volume now"."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from binome.guest import config as vmconf
from binome.guest import configs
from binome.storage.base import VolumeState, unusable_reason
from binome.store import keys
from binome.store.client import Entry, StoreUnavailable


class FakeStore:
    """An in-memory etcd with mod revisions; `fail_txn`: the next txn raises
    StoreUnavailable (after applying it when `apply_then_fail`); `fail_reads`: that
    many following reads raise StoreUnavailable."""

    def __init__(self) -> None:
        self.kv: dict[str, tuple[Any, int]] = {}
        self.rev = 1
        self.fail_txn = False
        self.apply_then_fail = False
        self.fail_reads = 0

    def put(self, key: str, value: Any) -> None:
        self.rev += 1
        self.kv[key] = (value, self.rev)

    async def get(self, key: str, *, serializable: bool = False,
                  timeout: float | None = None) -> Entry | None:
        if self.fail_reads:
            self.fail_reads -= 1
            raise StoreUnavailable("no quorum")
        if key not in self.kv:
            return None
        value, rev = self.kv[key]
        return Entry(key, value, rev)

    async def get_value(self, key: str, default: Any = None, **kw: Any) -> Any:
        entry = await self.get(key, **kw)
        return default if entry is None else entry.value

    async def txn(self, compare, puts, deletes=(), timeout=None) -> int | None:
        if self.fail_txn and not self.apply_then_fail:
            self.fail_txn = False
            raise StoreUnavailable("timeout")
        for key, target, rev in compare:
            have = self.kv.get(key)
            if target == "mod" and (have is None or have[1] != rev):
                return None
            if target == "create" and rev == 0 and have is not None:
                return None
        self.rev += 1
        for key, (value, _lease) in puts.items():
            self.kv[key] = (value, self.rev)
        for key in deletes:
            self.kv.pop(key, None)
        if self.fail_txn:
            self.fail_txn = False
            raise StoreUnavailable("answer lost")
        return self.rev


def _store(lock: str | None = "migrate") -> FakeStore:
    store = FakeStore()
    conf = {"name": "vm", "memory": 512}
    if lock:
        conf["lock"] = lock
    store.put(keys.vm_conf("n1", 100), vmconf.format_conf(conf))
    store.put(keys.vmid(100), {"node": "n1"})
    return store


def run(coro):
    return asyncio.run(coro)


def test_move_parts_compare_the_source_owner_and_an_absent_target() -> None:
    parts = configs.move_parts(100, "n1", "n2", "memory: 512\n", 7, {"node": "n1"}, 8)
    assert parts.compare == [(keys.vm_conf("n1", 100), "mod", 7), (keys.vmid(100), "mod", 8),
                             (keys.vm_conf("n2", 100), "create", 0)]
    assert parts.puts == {keys.vm_conf("n2", 100): ("memory: 512\n", 0),
                          keys.vmid(100): ({"node": "n2"}, 0)}
    assert parts.deletes == [keys.vm_conf("n1", 100)]


def test_only_the_movers_own_lock_is_removed() -> None:
    text = vmconf.format_conf({"memory": 512, "lock": "backup"})
    assert configs.moved_text(text, None) == text
    assert configs.moved_text(text, "migrate") == text
    assert "lock" not in vmconf.parse_conf(configs.moved_text(
        vmconf.format_conf({"memory": 512, "lock": "migrate"}), "migrate"))


def test_move_moves_config_and_owner_and_drops_the_migrate_lock() -> None:
    store = _store()
    run(configs.move(store, 100, "n1", "n2", release_lock="migrate"))
    assert keys.vm_conf("n1", 100) not in store.kv
    assert store.kv[keys.vmid(100)][0] == {"node": "n2"}
    moved = vmconf.parse_conf(store.kv[keys.vm_conf("n2", 100)][0])
    assert moved == {"name": "vm", "memory": 512}


def test_ha_moves_keep_the_lock() -> None:
    store = _store(lock="backup")
    run(configs.move(store, 100, "n1", "n2"))
    assert vmconf.parse_conf(store.kv[keys.vm_conf("n2", 100)][0])["lock"] == "backup"


def test_a_move_from_a_node_that_is_not_the_owner_is_refused() -> None:
    store = _store()
    with pytest.raises(configs.MoveRefused, match="not on n3"):
        run(configs.move(store, 100, "n3", "n2"))
    with pytest.raises(configs.MoveRefused, match="changed"):
        run(configs.move(store, 100, "n1", "n2", expect_revision=1))
    store.put(keys.vm_conf("n2", 100), "memory: 1\n")     # the target holds one already
    with pytest.raises(configs.MoveRefused, match="changed"):
        run(configs.move(store, 100, "n1", "n2"))
    assert store.kv[keys.vmid(100)][0] == {"node": "n1"}


def test_an_unknown_outcome_is_read_back_from_the_owner() -> None:
    store = _store()
    store.fail_txn = store.apply_then_fail = True      # applied, but the answer was lost
    store.fail_reads = 0
    run(configs.move(store, 100, "n1", "n2", retry=0))
    assert store.kv[keys.vmid(100)][0] == {"node": "n2"}

    store = _store()
    store.fail_txn = True                              # not applied
    with pytest.raises(configs.MoveRefused):
        run(configs.move(store, 100, "n1", "n2", retry=0))


def test_an_outcome_that_cannot_be_read_is_reported_unknown() -> None:
    store = _store()

    async def scenario() -> None:
        plan = await configs.plan_move(store, 100, "n1", "n2")
        assert plan.source == "n1" and plan.target == "n2"
        store.fail_reads = 3
        await configs.resolve_outcome(store, 100, "n2", attempts=3, retry=0)

    with pytest.raises(configs.MoveOutcomeUnknown, match="cannot tell"):
        run(scenario())


def test_unusable_reason_names_why() -> None:
    assert unusable_reason("v", "n1", VolumeState()) is None
    assert "does not exist" in unusable_reason("v", "n1", VolumeState(exists=False))
    assert "recorded Outdated" in unusable_reason("v", "n1",
                                                  VolumeState(outdated_by_peer=True))
    assert "Inconsistent, not UpToDate" in unusable_reason(
        "v", "n1", VolumeState(disk="Inconsistent"))
    why = unusable_reason("v", "n1", VolumeState(active=False, link="StandAlone"))
    assert why is not None and "Secondary" in why and "StandAlone" in why


def test_migration_and_ha_moves_carry_the_pending_section() -> None:
    for lock, release in (("migrate", "migrate"), (None, None)):
        store = FakeStore()
        conf = {"name": "vm", "memory": 512, **({"lock": lock} if lock else {})}
        text = vmconf.format_conf(conf, None, {"memory": 1024, "delete": "name"})
        store.put(keys.vm_conf("n1", 100), text)
        store.put(keys.vmid(100), {"node": "n1"})
        run(configs.move(store, 100, "n1", "n2", release_lock=release))
        moved = store.kv[keys.vm_conf("n2", 100)][0]
        assert vmconf.parse_conf(moved) == {"name": "vm", "memory": 512}
        assert vmconf.parse_conf_pending(moved) == {"memory": 1024, "delete": "name"}
