"""`Store.watch_prefixes` on a real etcd, and the HA wake filter on the cluster's real keys.

The HA daemons wake their rounds from this watch (docs/ha.md 8.4); what the
filter relies on: a put carries the key's previous lease (`prev_kv`), a
lease revoke shows as a delete, a closed store ends the iteration with
StoreUnavailable, and the heartbeat renewals of a running cluster wake
nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from binome.ha.agent.wake import wakes_rounds
from binome.store import keys
from binome.store.client import StoreUnavailable, WatchEvent
from tests.integration.harness import Cluster


async def _next(events, timeout: float = 10.0) -> WatchEvent:
    return await asyncio.wait_for(anext(events), timeout)


def test_watch_events_carry_prev_lease_and_lease_expiry_deletes(cluster: Cluster) -> None:
    async def run() -> None:
        store = cluster.raw_store("n1")
        prefix = f"/binome/test-watch/{uuid.uuid4().hex}/"
        key = prefix + "beat"
        lease = await store.grant_lease(30)
        try:
            async with store.watch_prefixes([prefix], prev_kv=True, timeout=5) as events:
                await store.txn([], {key: ({"seq": 0}, lease)})
                ev = await _next(events)
                assert (ev.kind, ev.key, ev.value, ev.lease, ev.prev) == \
                    ("put", key, {"seq": 0}, lease, None)
                await store.txn([], {key: ({"seq": 1}, lease)})
                ev = await _next(events)
                assert ev.value == {"seq": 1} and ev.prev is not None
                assert ev.prev.lease == lease and ev.prev.value == {"seq": 0}
                await store.revoke_lease(lease)
                ev = await _next(events)
                assert (ev.kind, ev.key) == ("delete", key)
                await store.put(prefix + "other", 1)
                assert (await _next(events)).key == prefix + "other"
            # a closed store ends a live watch with StoreUnavailable
            async with store.watch_prefixes([prefix], timeout=5) as events:
                pending = asyncio.ensure_future(_next(events))
                await asyncio.sleep(0.2)
                await store.close()
                with pytest.raises(StoreUnavailable):
                    await pending
        finally:
            store = cluster.raw_store("n1")
            with contextlib.suppress(Exception):
                await store.delete_prefix(prefix)
            await store.close()

    asyncio.run(run())


def test_heartbeat_renewals_of_a_running_cluster_wake_nobody(cluster: Cluster) -> None:
    async def run() -> None:
        store = cluster.raw_store("n2")
        try:
            seen: list[WatchEvent] = []
            async with store.watch_prefixes([keys.HA_HEARTBEAT], prev_kv=True,
                                            timeout=5) as events:
                while len({e.key for e in seen}) < 2 or len(seen) < 6:
                    seen.append(await _next(events))
            assert {e.key for e in seen} == {keys.ha_heartbeat("n1"), keys.ha_heartbeat("n2")}
            assert all(e.kind == "put" and e.prev is not None for e in seen)
            assert not any(wakes_rounds(e) for e in seen)
        finally:
            await store.close()

    asyncio.run(run())
