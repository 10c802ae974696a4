"""A quorum check survives etcd's leadership hand-over (`cluster.monitor.reaches_quorum`):
a read refused at once is tried again within the check's timeout, never beyond it."""

from __future__ import annotations

import asyncio
import time

from binome.cluster.monitor import reaches_quorum
from binome.store.client import StoreUnavailable


class _Store:
    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls = 0

    async def linearizable_probe(self, timeout: float) -> int:
        self.calls += 1
        if self.calls <= self.refusals:
            raise StoreUnavailable("etcdserver: leader changed")
        return 42


def test_a_refusal_during_a_leader_change_is_tried_again() -> None:
    store = _Store(refusals=2)
    assert asyncio.run(reaches_quorum(store, timeout=1.0)) is True   # type: ignore[arg-type]
    assert store.calls == 3


def test_no_quorum_within_the_timeout_is_no_quorum() -> None:
    store = _Store(refusals=10 ** 6)
    began = time.monotonic()
    assert asyncio.run(reaches_quorum(store, timeout=0.5)) is False  # type: ignore[arg-type]
    took = time.monotonic() - began
    assert took <= 0.7 and store.calls >= 3, (took, store.calls)
