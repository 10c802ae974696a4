"""AccessRepository against a real etcd (mutual TLS, on its own loopback address)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from binome.access import ops, tfa
from binome.access.model import Group, TfaUser, User
from binome.access.model import ValidationError as VE
from binome.access.repository import (
    ACL,
    GENERATION,
    GROUPS,
    TFA,
    USERS,
    AccessRepository,
)
from binome.store import keys
from binome.store.client import Store
from tests.integration.single_etcd import empty_store, single_etcd

ADDRESS = f"127.{os.getpid() % 200 + 20}.83.1"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory) -> Iterator[dict[str, Path]]:
    with single_etcd(tmp_path_factory.mktemp("etcd"), ADDRESS, "access-test") as paths:
        yield paths


@pytest.fixture
async def store(etcd) -> AsyncIterator[Store]:
    s = await empty_store(etcd, ADDRESS)
    await s.put(keys.CLUSTER, {"name": "t", "config_version": 1})
    # issue 10's record shape, and the ticket key, must survive untouched
    await s.put(keys.user("admin@pve"), {"userid": "admin@pve", "enable": 1, "superuser": 1,
                                         "password": "$argon2id$legacy", "comment": "admin"})
    await s.put(keys.ACCESS_AUTHKEY, "00" * 32)
    yield s
    await s.close()


async def test_legacy_records_load(store):
    snap = await AccessRepository(store).load()
    admin = snap.config.users["admin@pve"]
    assert admin.superuser and admin.password_hash == "$argon2id$legacy"
    assert snap.warnings == ()


async def test_change_writes_only_what_differs_and_bumps_versions(store):
    repo = AccessRepository(store)
    change = await repo.change("admin@pve", "add group ops",
                               lambda c: ops.add_group(c, Group("ops", "operators")))
    assert change.written == (GROUPS + "ops",)
    assert change.log_message() == "admin@pve: add group ops"
    assert (await store.get_value(keys.CLUSTER))["config_version"] == 2
    assert await store.get_value(GENERATION) == 1
    change = await repo.change("admin@pve", "add user alice@pve", lambda c: ops.add_user(
        c, User("alice@pve", groups=("ops",), password_hash="$argon2id$x")))
    assert change.written == (USERS + "alice@pve",)
    change = await repo.change("admin@pve", "grant", lambda c: ops.modify_acl(
        c, "/vms/100", ["PVEVMUser"], groups=["ops"]))
    assert change.written == (ACL,)
    snap = await repo.load()
    assert [e.roleid for e in snap.config.acl] == ["PVEVMUser"]
    legacy = await store.get_value(keys.user("admin@pve"))
    assert legacy["superuser"] == 1 and legacy["password"] == "$argon2id$legacy"
    assert await store.get_value(keys.ACCESS_AUTHKEY) == "00" * 32
    # nothing to change: nothing written, no version bump
    change = await repo.change("admin@pve", "noop", lambda c: c)
    assert not change.changed
    assert (await store.get_value(keys.CLUSTER))["config_version"] == 4
    # delete user: removes their key and their ACL entries in one transaction
    change = await repo.change("admin@pve", "delete user", lambda c: ops.delete_user(
        c, "alice@pve"))
    assert change.deleted == (USERS + "alice@pve",)


async def test_refused_change_writes_nothing(store):
    repo = AccessRepository(store)
    before = await store.get_prefix("/binome/")
    with pytest.raises(VE):
        await repo.change("admin@pve", "bad", lambda c: ops.modify_acl(
            c, "/nowhere", ["PVEAuditor"], users=["admin@pve"]))
    after = await store.get_prefix("/binome/")
    assert before == after


async def test_concurrent_changes_both_land(store):
    repo = AccessRepository(store)
    await asyncio.gather(*(repo.change("admin@pve", f"group g{i}",
                                       lambda c, i=i: ops.add_group(c, Group(f"g{i}")))
                           for i in range(5)))
    snap = await repo.load()
    assert {f"g{i}" for i in range(5)} <= set(snap.config.groups)
    assert snap.generation_value == 5


async def test_check_made_on_stale_data_is_redone(store):
    """An operation validated against data changed meanwhile runs again on fresh data."""
    repo = AccessRepository(store)
    await repo.change("admin@pve", "group", lambda c: ops.add_group(c, Group("ops")))
    calls = 0

    def grant(c):
        nonlocal calls
        calls += 1
        return ops.modify_acl(c, "/", ["PVEAuditor"], groups=["ops"])

    snap = await repo.load()
    # simulate a concurrent group delete between this load and the commit
    other = AccessRepository(store)
    orig_load = repo.load

    async def racing_load():
        s = await orig_load()
        if calls == 0:
            await other.change("admin@pve", "drop", lambda c: ops.delete_group(c, "ops"))
        return s

    repo.load = racing_load  # type: ignore[method-assign]
    with pytest.raises(VE):
        await repo.change("admin@pve", "grant", grant)
    assert calls == 2
    assert snap.config.groups["ops"]
    assert (await repo.load()).config.acl == ()


async def test_tfa_code_is_spent_once_under_concurrency(store):
    import pyotp

    seed = pyotp.random_base32()
    uri = pyotp.TOTP(seed).provisioning_uri(name="admin@pve")
    now = 1_800_000_000.0
    repo = AccessRepository(store)
    await repo.change("admin@pve", "add totp", lambda c: ops.set_tfa(c, tfa.add_totp(
        c.tfa.get("admin@pve") or TfaUser("admin@pve"), uri,
        pyotp.TOTP(seed).at(now - 60), entry_id="t1", description="", now=now - 60)))
    code = pyotp.TOTP(seed).at(now)
    results = await asyncio.gather(*(repo.update_tfa_state(
        "admin@pve", lambda old: tfa.verify_response(old, f"totp:{code}", now))
        for _ in range(4)))
    assert sorted(results) == [False, False, False, True]
    stored = await store.get_value(TFA + "admin@pve")
    assert stored["tfa_failures"] == 3
    assert (await repo.load()).config.users["admin@pve"].keys == "x"
