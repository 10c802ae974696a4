"""binome.fence.devices, the calls of the CRM's fencer and of the test lab: a record
found or not, overwritten whatever is stored, and the nodes with one in a snapshot."""

from __future__ import annotations

import asyncio
from typing import Any

from binome.fence.devices import FenceDevices, device_nodes
from binome.store import keys

RECORD = {"type": "agent", "agent": "/bin/true"}


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get_value(self, key: str, default: Any = None, **_kw: Any) -> Any:
        return self.data.get(key, default)

    async def put(self, key: str, value: Any) -> None:
        self.data[key] = value


def test_find_gives_the_record_or_none() -> None:
    store = MemoryStore()
    devices = FenceDevices(store)  # type: ignore[arg-type]
    assert asyncio.run(devices.find("n1")) is None
    store.data[keys.ha_fence("n1")] = "not a record"
    assert asyncio.run(devices.find("n1")) is None
    store.data[keys.ha_fence("n1")] = dict(RECORD)
    assert asyncio.run(devices.find("n1")) == RECORD


def test_overwrite_replaces_whatever_is_stored() -> None:
    store = MemoryStore()
    devices = FenceDevices(store)  # type: ignore[arg-type]
    asyncio.run(devices.overwrite("n1", {"type": "ipmi"}))
    asyncio.run(devices.overwrite("n1", RECORD))
    assert store.data == {keys.ha_fence("n1"): RECORD}


def test_device_nodes_of_a_snapshot() -> None:
    snapshot = [keys.ha_fence("n1"), keys.ha_fence_confirm("n2"), keys.ha_fence_request("n3"),
                keys.ha_heartbeat("n4"), keys.ha_fence("n5")]
    assert device_nodes(snapshot) == {"n1", "n5"}
