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
