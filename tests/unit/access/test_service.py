"""AccessService without quorum: it answers from this member's copy (a serializable read),
then from the last snapshot it read, and refuses changes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from binome.access.repository import GENERATION, USERS
from binome.access.service import AccessService


@dataclass
class Entry:
    key: str
    value: Any
    mod_revision: int


class NoQuorumStore:
    """A member cut off from quorum: linearizable reads fail, serializable ones answer
    its local data (until `local_ok` is cleared: the member is gone too)."""

    def __init__(self) -> None:
        self.data = {GENERATION: Entry(GENERATION, 3, 7),
                     USERS + "alice@pve": Entry(USERS + "alice@pve",
                                                {"userid": "alice@pve", "enable": 1}, 5)}
        self.quorate = True
        self.local_ok = True

    def _check(self, serializable: bool) -> None:
        if not (self.quorate or (serializable and self.local_ok)):
            raise ConnectionError("etcdserver: request timed out")

    async def get(self, key: str, *, serializable: bool = False) -> Entry | None:
        self._check(serializable)
        return self.data.get(key)

    async def get_prefix(self, prefix: str, *, serializable: bool = False) -> list[Entry]:
        self._check(serializable)
        return [e for k, e in sorted(self.data.items()) if k.startswith(prefix)]

    async def commit(self, expect: dict[str, int], puts: dict[str, Any] | None = None,
                     deletes: Any = (), *, bump_config: bool = False) -> bool:
        self._check(False)
        return True


def test_without_quorum_the_local_copy_then_the_last_snapshot_answer() -> None:
    store = NoQuorumStore()
    access = AccessService(lambda: store)

    async def scenario() -> None:
        store.quorate = False                       # first read already without quorum
        assert "alice@pve" in (await access.config()).users
        await access.check_active("alice@pve")
        store.local_ok = False                      # even the local read fails now
        assert "alice@pve" in (await access.config()).users
        with pytest.raises(ConnectionError):        # changes need quorum
            await access.change("root@pam", "noop", lambda c: c.with_changes(users={}))

    asyncio.run(scenario())


def test_tfa_states_are_read_fresh_then_locally_then_from_the_snapshot() -> None:
    """Logins move the lock-out counters without a generation bump: the user and TFA
    lists read them from the store, not from the cached snapshot."""
    from binome.access.repository import TFA

    store = NoQuorumStore()
    access = AccessService(lambda: store)

    def plant(failures: int) -> None:
        store.data[TFA + "alice@pve"] = Entry(TFA + "alice@pve", {
            "userid": "alice@pve", "entries": [], "totp_failures": failures,
            "tfa_failures": failures, "tfa_locked_until": 0}, 9)

    async def scenario() -> None:
        plant(1)
        assert (await access.config()).tfa["alice@pve"].totp_failures == 1   # snapshot
        plant(8)                                    # a login counted: no generation bump
        assert (await access.config()).tfa["alice@pve"].totp_failures == 1
        assert (await access.tfa_states())["alice@pve"].totp_locked
        store.quorate = False                       # this member's copy still answers
        assert (await access.tfa_states())["alice@pve"].totp_failures == 8
        store.local_ok = False                      # nothing answers: the snapshot's
        assert (await access.tfa_states())["alice@pve"].totp_failures == 1

    asyncio.run(scenario())
