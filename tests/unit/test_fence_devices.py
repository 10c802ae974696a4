"""binome.fence.devices: the stored records' create / replace / remove rules (on an
in-memory store) and the agent options' property string."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from binome.fence.devices import FenceDeviceError, FenceDevices, build_record, parse_agent_options
from binome.store import keys

SECRET = "s3cret-Passw0rd"


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get(self, key: str, **_kw: Any) -> Any:
        return self.data.get(key)

    async def get_value(self, key: str, default: Any = None, **_kw: Any) -> Any:
        return self.data.get(key, default)

    async def get_prefix(self, prefix: str, **_kw: Any) -> list[Any]:
        class Entry:
            def __init__(self, key: str, value: Any) -> None:
                self.key, self.value = key, value
        return [Entry(k, v) for k, v in sorted(self.data.items()) if k.startswith(prefix)]

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def update(self, key: str, mutate: Any) -> Any:
        self.data[key] = mutate(self.data.get(key))
        return self.data[key]


def test_records_lifecycle() -> None:
    store = MemoryStore()
    devices = FenceDevices(store)  # type: ignore[arg-type]
    record = build_record(None, {"type": "ipmi", "ip": "10.0.0.2", "username": "a",
                                 "password": SECRET})
    asyncio.run(devices.create("n2", record))
    assert store.data[keys.ha_fence("n2")] == record
    with pytest.raises(FenceDeviceError, match="already has a fence device"):
        asyncio.run(devices.create("n2", record))
    assert asyncio.run(devices.records()) == {"n2": record}
    changed = build_record(record, {"type": "agent", "agent": "/bin/true"})
    assert changed["password"] == SECRET   # a type change keeps the secret
    with pytest.raises(FenceDeviceError, match="changed meanwhile"):
        asyncio.run(devices.replace("n2", {**record, "port": 1}, changed))
    asyncio.run(devices.replace("n2", record, changed))
    assert asyncio.run(devices.device("n2")).kind == "agent"
    asyncio.run(devices.remove("n2"))
    with pytest.raises(FenceDeviceError, match="no fence device configured for node 'n2'"):
        asyncio.run(devices.record("n2"))
    with pytest.raises(FenceDeviceError, match="no fence device"):
        asyncio.run(devices.remove("n2"))


def test_agent_options_never_echo_a_bare_item() -> None:
    assert parse_agent_options("ip=10.0.0.1,lanplus=1") == {"ip": "10.0.0.1", "lanplus": "1"}
    with pytest.raises(ValueError) as info:
        parse_agent_options(f"ip=10.0.0.1,{SECRET}")
    assert SECRET not in str(info.value)
    with pytest.raises(ValueError, match="duplicate key"):
        parse_agent_options("ip=1,ip=2")
