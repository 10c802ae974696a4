"""The `replicated` storage's formats (raw, or a qcow2 image inside the device): sizes,
the snapshot room rule, and what the record says, over the volume service's cache."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from binome.storage.base import StorageConfig, StorageError
from binome.storage.replicated import (
    SNAPSHOT_SLACK,
    MiB,
    ReplicatedStorage,
    ReplicaVolumes,
    end_offset_of,
    qcow2_device_size,
    record_format,
    room_blocker,
    virtual_size,
)

GiB = 1 << 30


def test_device_of_a_qcow2_volume_is_twice_the_image_plus_metadata() -> None:
    assert qcow2_device_size(64 * MiB) == 128 * MiB + 16 * MiB
    assert qcow2_device_size(100 * GiB) == 200 * GiB + 100 * GiB // 64
    assert qcow2_device_size(4097) % 4096 == 0


def test_record_format_and_virtual_size() -> None:
    old = {"name": "vm-1-disk-0", "size": 4 * MiB}          # a volume from before formats
    assert record_format(old) == "raw" and virtual_size(old) == 4 * MiB
    new = {"size": qcow2_device_size(4 * MiB), "image": {"format": "qcow2", "size": 4 * MiB}}
    assert record_format(new) == "qcow2" and virtual_size(new) == 4 * MiB


def test_room_rule() -> None:
    device = qcow2_device_size(64 * MiB)
    assert room_blocker("r:v", device, 1 * MiB) is None
    assert room_blocker("r:v", device, 1 * MiB, state_bytes=64 * MiB) is None
    full = device - SNAPSHOT_SLACK + 1
    reason = room_blocker("r:v", device, full)
    assert reason is not None and "no room for a snapshot" in reason
    reason = room_blocker("r:v", device, 100 * MiB, state_bytes=64 * MiB)
    assert reason is not None and "64 MiB of RAM" in reason
    assert end_offset_of(json.dumps({"image-end-offset": 393216, "check-errors": 0})) == 393216
    with pytest.raises(KeyError):
        end_offset_of("{}")


class _Service:
    """The part of `VolumeService` the storage reads without I/O (its record cache and
    paths)."""

    node = "n1"

    def __init__(self, records: dict[str, dict[str, Any]], local: set[str]) -> None:
        self.records = records
        self.local = local

    def exists_locally(self, name: str) -> bool:
        return name in self.local

    def socket_path(self, name: str) -> Path:
        return Path(f"/run/x/{name}.sock")

    def nbd_uri(self, name: str) -> str:
        return f"nbd+unix:///{name}?socket={self.socket_path(name)}"


def _storage(records: dict[str, dict[str, Any]], local: set[str]) -> ReplicatedStorage:
    service: Any = _Service(records, local)
    return ReplicatedStorage(StorageConfig("rep", "replicated"), "n1", ReplicaVolumes(service))


def test_source_and_format_from_the_record() -> None:
    qcow2 = {"size": qcow2_device_size(MiB), "image": {"format": "qcow2", "size": MiB}}
    storage = _storage({"vm-1-disk-0": {"size": MiB}, "vm-1-disk-1": qcow2},
                       {"vm-1-disk-0", "vm-1-disk-1", "vm-1-disk-2"})
    raw = storage.source("rep:vm-1-disk-0")
    assert raw.format is None and raw.source.startswith("nbd+unix:///vm-1-disk-0?")
    assert storage.source("rep:vm-1-disk-1").format == "qcow2"
    assert storage.volume_format("rep:vm-1-disk-0") == "raw"
    assert storage.volume_format("rep:vm-1-disk-1") == "qcow2"
    assert storage.resolve_format("qcow2") == "qcow2" and storage.resolve_format(None) == "raw"
    # a copy whose record is not loaded yet is refused, not guessed raw
    with pytest.raises(StorageError, match="record is not loaded"):
        storage.source("rep:vm-1-disk-2")
    with pytest.raises(StorageError, match="does not exist on this node"):
        storage.source("rep:vm-1-disk-3")
    image = storage.image_name("vm-1-disk-1")
    assert image.startswith("json:")
    assert json.loads(image[5:]) == {"driver": "qcow2", "file": {
        "driver": "nbd", "export": "vm-1-disk-1",
        "server": {"type": "unix", "path": "/run/x/vm-1-disk-1.sock"}}}


def test_snapshot_blocker_of_raw_and_unknown_volumes() -> None:
    storage = _storage({"vm-1-disk-0": {"size": MiB}}, {"vm-1-disk-0"})
    reason = asyncio.run(storage.snapshot_blocker("rep:vm-1-disk-0"))
    assert reason is not None and "is raw" in reason and "format=qcow2" in reason
    assert "not loaded" in str(asyncio.run(storage.snapshot_blocker("rep:vm-1-disk-9")))
    assert "unable to parse" in str(asyncio.run(storage.snapshot_blocker("rep:junk")))
    # a rollback (no snapshot taken) of a qcow2 volume asks nothing of the engine
    qcow2 = _storage({"vm-1-disk-1": {"size": 3 * MiB, "image": {"format": "qcow2",
                                                                  "size": MiB}}}, set())
    assert asyncio.run(qcow2.snapshot_blocker("rep:vm-1-disk-1", state_bytes=None)) is None


def test_unsupported_format_is_refused_before_anything() -> None:
    storage = _storage({}, set())
    with pytest.raises(StorageError, match=r"unsupported format 'vmdk' .*raw or qcow2"):
        asyncio.run(storage.alloc(1, MiB, "vmdk"))


class _Engine(_Service):
    """The volume service's engine calls, recording promotions and demotions."""

    def __init__(self, primary: bool) -> None:
        super().__init__({"vm-1-disk-0": {"size": 3 * MiB, "image": {"format": "qcow2",
                                                                      "size": MiB}}},
                         {"vm-1-disk-0"})
        self.role = "Primary" if primary else "Secondary"
        self.events: list[str] = []

    async def call(self, command: str, **_: Any) -> dict[str, Any]:
        return {"role": self.role, "cstate": "Connected", "disk": "UpToDate",
                "open_count": 0}

    async def promote(self, name: str, **_: Any) -> dict[str, Any]:
        self.role = "Primary"
        self.events.append("promote")
        return await self.call("status")

    async def demote(self, name: str) -> dict[str, Any]:
        self.role = "Secondary"
        self.events.append("demote")
        return await self.call("status")

    async def record(self, name: str) -> dict[str, Any]:
        return self.records[name]

    def peer_of(self, rec: dict[str, Any]) -> str:
        return "n2"


@pytest.mark.parametrize("primary", [True, False])
def test_a_demotion_waits_for_the_storage_operation_holding_the_copy(primary: bool) -> None:
    """The HA agent demotes a just-stopped guest's volumes while the administrator's
    rollback runs qemu-img on the image: the demotion waits for the rollback (once, in
    CI, it pulled the export from under qemu-img: 'Denied by server for option 7')."""
    engine = _Engine(primary)
    storage = ReplicatedStorage(StorageConfig("rep", "replicated"), "n1",
                                ReplicaVolumes(engine))   # type: ignore[arg-type]
    replicas = storage.replicas
    assert replicas is not None

    async def scenario() -> None:
        inside = asyncio.Event()
        leave = asyncio.Event()

        async def rollback() -> None:
            async with storage._image_here("rep:vm-1-disk-0"):
                engine.events.append(f"qemu-img on a {engine.role}")
                inside.set()
                await leave.wait()
                engine.events.append(f"qemu-img done on a {engine.role}")

        job = asyncio.create_task(rollback())
        await inside.wait()
        demotion = asyncio.create_task(replicas.deactivate("vm-1-disk-0"))
        await asyncio.sleep(0.05)
        assert not demotion.done() and engine.role == "Primary"
        leave.set()
        await job
        state = await demotion
        assert not state.active and engine.role == "Secondary"

    asyncio.run(scenario())
    before = [] if primary else ["promote"]
    after = ["demote"] if primary else ["demote", "demote"]
    assert engine.events == [*before, "qemu-img on a Primary", "qemu-img done on a Primary",
                             *after]


def test_the_last_holder_gives_up_a_copy_made_primary_for_the_holders() -> None:
    engine = _Engine(primary=False)
    storage = ReplicatedStorage(StorageConfig("rep", "replicated"), "n1",
                                ReplicaVolumes(engine))   # type: ignore[arg-type]

    async def scenario() -> None:
        async with storage._image_here("rep:vm-1-disk-0", read_only=True):
            async with storage._image_here("rep:vm-1-disk-0", read_only=True):
                assert engine.role == "Primary"
            assert engine.role == "Primary"    # the first holder is still inside
        assert engine.role == "Secondary"

    asyncio.run(scenario())
    assert engine.events == ["promote", "demote"]
