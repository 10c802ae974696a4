"""The lease keeper's retry goes to every etcd member at once; the first renewal wins.

Fake members stand for etcd's clients (a member that is dead fails at once, one
waiting for a new leader answers late, one that knows the lease is gone says so):
what is checked is the keeper's choice, not etcd. The real path is
tests/integration/ha/test_keeper_link.py (a frozen local member) and the soak.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from binome.ha.agent.agent import HaAgent
from binome.ha.agent.keeper_link import KeeperLink
from binome.store.client import StoreUnavailable


class FakeMember:
    def __init__(self, url: str, *, delay: float = 0.0, dead: bool = False,
                 ttl: int = 5) -> None:
        self.url, self.delay, self.dead, self.ttl = url, delay, dead, ttl
        self.renewals = 0
        self.cancelled = False
        self.closed = False
        self.clones: list[str] = []

    async def refresh_lease(self, lease: int, timeout: float | None = None) -> int:
        if self.dead:
            raise StoreUnavailable(f"{self.url} refused")
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self.ttl

    async def txn(self, compares: Any, puts: Any, deletes: Any, timeout: Any) -> int:
        self.renewals += 1
        return 42

    def clone(self, url: str | None = None) -> FakeMember:
        self.clones.append(url or self.url)
        return FakeMember(url or self.url)

    async def close(self) -> None:
        self.closed = True


def _agent() -> Any:
    me = types.SimpleNamespace(node="n1", io_timeout=0.8)
    me._renew_through = lambda store, lease, beat: HaAgent._renew_through(
        me, store, lease, beat)
    return me


def _renew(stores: list[FakeMember]) -> Any:
    me = _agent()
    return asyncio.run(HaAgent._renew_first(me, stores, 7, {"seq": 1}))  # type: ignore[arg-type]


def test_the_first_member_that_renews_wins_and_the_others_are_cancelled() -> None:
    dead = FakeMember("https://w:2379", dead=True)
    slow = FakeMember("https://n2:2379", delay=5.0)
    quick = FakeMember("https://n1:2379", delay=0.05)
    via, ttl, rev = _renew([dead, slow, quick])
    assert via is quick and ttl == 5 and rev == 42
    assert slow.cancelled and slow.renewals == 0


def test_a_dead_member_does_not_delay_a_member_waiting_for_the_new_leader() -> None:
    # the witness led and died; n2's member answers once the new leader is elected
    dead = FakeMember("https://w:2379", dead=True)
    waiting = FakeMember("https://n2:2379", delay=0.2)
    via, _, rev = _renew([dead, waiting])
    assert via is waiting and rev == 42


def test_a_lease_gone_is_final() -> None:
    gone = FakeMember("https://n2:2379", ttl=0)
    slow = FakeMember("https://n1:2379", delay=5.0)
    via, ttl, rev = _renew([gone, slow])
    assert via is gone and ttl == 0 and rev is None
    assert slow.cancelled


def test_no_member_renews() -> None:
    with pytest.raises(StoreUnavailable, match="no etcd member renewed"):
        _renew([FakeMember("https://w:2379", dead=True),
                FakeMember("https://n2:2379", dead=True)])


def test_fanout_lists_every_member_once_and_keeps_their_clients() -> None:
    async def run() -> None:
        link = KeeperLink("n1")
        local_source = FakeMember("https://n1:2379")
        local = await link.store(local_source)     # type: ignore[arg-type]
        assert local is not None
        link._peers = ["https://n2:2379", "https://w:2379"]
        first = link.fanout(local)
        assert [s.url for s in first] == ["https://n1:2379", "https://n2:2379",
                                          "https://w:2379"]
        again = link.fanout(local)
        assert again[1] is first[1] and again[2] is first[2]   # kept connected
        # n2 renewed: it becomes the member renewals go through, without a new client
        await link.renewed_through(first[1])
        assert await link.store(local_source) is first[1]      # type: ignore[arg-type]
        assert [s.url for s in link.fanout(first[1])] == [
            "https://n2:2379", "https://n1:2379", "https://w:2379"]
        await link.close()
        assert first[1].closed and first[2].closed

    asyncio.run(run())
