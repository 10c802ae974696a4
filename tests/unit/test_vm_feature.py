"""PVE's feature check (`GET .../qemu/{vmid}/feature`): snapshot / clone / copy over a
VM's volumes on real `dir` storages (qemu-img images in a tmp dir), and the nodes where
all its volumes are available (PVE's shared_nodes)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from typing import Any

import pytest

from binome.guest.configs import VmConfig
from binome.guest.errors import GuestFailure
from binome.guest.features import vm_feature
from binome.storage.base import StorageConfig, StorageError, VolumeState
from binome.storage.dir import DirStorage

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")]

MiB = 1 << 20


class Storages:
    """The StorageManager calls the feature check makes, over real DirStorage backends."""

    def __init__(self, configs: list[StorageConfig]) -> None:
        self.configs = {c.storage: c for c in configs}
        self.peers: dict[str, str] = {}     # volid -> the node of its other copy

    def backend(self, storage_id: str) -> DirStorage:
        return DirStorage(self.configs[storage_id], "n1")

    async def config(self, storage_id: str) -> StorageConfig:
        if storage_id not in self.configs:
            raise StorageError(f"storage '{storage_id}' does not exist")
        return self.configs[storage_id]

    async def for_volid(self, volid: str) -> DirStorage:
        cfg = await self.config(volid.split(":", 1)[0])
        if cfg.disable:
            raise StorageError(f"storage '{cfg.storage}' is disabled")
        return self.backend(cfg.storage)

    async def volume_state(self, volid: str) -> VolumeState:
        state = await self.backend(volid.split(":", 1)[0]).volume_state(volid)
        if volid in self.peers:
            return replace(state, replicated=True, peer=self.peers[volid])
        return state

    async def snapshot_blocker(self, volid: str, *, state_bytes: int | None = 0) -> str | None:
        return await self.backend(volid.split(":", 1)[0]).snapshot_blocker(
            volid, state_bytes=state_bytes)


class Ctx:
    node = "n1"

    def __init__(self, storages: Storages, vm: VmConfig) -> None:
        self.storages = storages
        self.vm = vm

    def migration_nodes(self) -> list[str]:
        return ["n2", "n3"]

    async def read(self, vmid: int) -> VmConfig:
        assert vmid == self.vm.vmid
        return self.vm


@pytest.fixture
def storages(tmp_path) -> Storages:
    return Storages([
        StorageConfig("local", "dir", path=str(tmp_path / "local")),
        StorageConfig("nfs", "dir", path=str(tmp_path / "nfs"), shared=True),
        StorageConfig("some", "dir", path=str(tmp_path / "some"), shared=True,
                      nodes=("n1", "n3")),
    ])


def vm(config: dict[str, Any], snapshots: dict[str, dict[str, Any]] | None = None) -> VmConfig:
    return VmConfig(100, "n1", config, "digest", 1, snapshots or {})


async def check(storages: Storages, config: dict[str, Any], feature: str,
                snapname: str | None = None, snapshots: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    return await vm_feature(Ctx(storages, vm(config, snapshots)), 100, feature, snapname)  # type: ignore[arg-type]


async def test_snapshot_needs_every_disk_in_qcow2(storages) -> None:
    q0 = await storages.backend("local").alloc(100, MiB, "qcow2")
    q1 = await storages.backend("nfs").alloc(100, MiB, "qcow2")
    raw = await storages.backend("local").alloc(100, MiB, "raw")
    config = {"memory": 64, "virtio0": f"{q0},size=1M", "scsi1": f"{q1},size=1M",
              # CD-ROMs (and so the cloud-init drive) are not asked, as PVE's has_feature
              "ide2": "local:iso/debian.iso,media=cdrom",
              "ide0": "local:vm-100-cloudinit,media=cdrom"}
    assert await check(storages, config, "snapshot") == {"hasFeature": 1, "nodes": ["n1"]}
    config["virtio2"] = f"{raw},size=1M"
    assert (await check(storages, config, "snapshot"))["hasFeature"] == 0
    # a volume that is not there has no snapshots either
    assert (await check(storages, {"virtio0": "local:100/vm-100-disk-9.qcow2"},
                        "snapshot"))["hasFeature"] == 0


async def test_clone_needs_base_images_and_copy_needs_available_storages(storages) -> None:
    raw = await storages.backend("local").alloc(100, MiB, "raw")
    config = {"virtio0": f"{raw},size=1M"}
    assert (await check(storages, config, "clone"))["hasFeature"] == 0
    # a template's base images can be linked (PVE's clone => {base => ...}), not a
    # snapshot of them, and not when one disk is still a plain image
    base = await storages.backend("local").create_base(
        await storages.backend("local").alloc(100, MiB, "qcow2"))
    template = {"template": 1, "scsi0": f"{base},size=1M",
                "ide2": "local:iso/debian.iso,media=cdrom"}
    assert (await check(storages, template, "clone"))["hasFeature"] == 1
    assert (await check(storages, {**template, "virtio0": f"{raw},size=1M"},
                        "clone"))["hasFeature"] == 0
    assert (await check(storages, template, "clone", "s",
                        {"s": dict(template)}))["hasFeature"] == 0
    assert (await check(storages, config, "copy"))["hasFeature"] == 1
    storages.configs["local"] = replace(storages.configs["local"], disable=True)
    # PVE's shared_nodes: a disabled storage leaves no node
    assert await check(storages, config, "copy") == {"hasFeature": 0, "nodes": []}


async def test_nodes_are_those_where_every_volume_is_available(storages) -> None:
    shared = await storages.backend("nfs").alloc(100, MiB, "qcow2")
    limited = await storages.backend("some").alloc(100, MiB, "qcow2")
    local = await storages.backend("local").alloc(100, MiB, "qcow2")
    assert (await check(storages, {"virtio0": shared}, "copy"))["nodes"] == ["n1", "n2", "n3"]
    both = {"virtio0": shared, "virtio1": limited}
    assert (await check(storages, both, "copy"))["nodes"] == ["n1", "n3"]
    assert (await check(storages, {**both, "virtio2": local}, "copy"))["nodes"] == ["n1"]
    # a replicated volume: the nodes of its two copies
    storages.peers[local] = "n2"
    assert (await check(storages, {"virtio0": shared, "virtio1": local}, "copy"))["nodes"] \
        == ["n1", "n2"]
    # no disk at all: every node; an ISO image counts (PVE), an empty CD-ROM drive not
    assert (await check(storages, {"memory": 64, "ide2": "none,media=cdrom"}, "copy"))["nodes"] \
        == ["n1", "n2", "n3"]
    assert (await check(storages, {"virtio0": shared, "ide2": "local:iso/d.iso,media=cdrom"},
                        "copy"))["nodes"] == ["n1"]


async def test_snapname_reads_the_snapshot_and_must_exist(storages) -> None:
    q0 = await storages.backend("local").alloc(100, MiB, "qcow2")
    raw = await storages.backend("local").alloc(100, MiB, "raw")
    # the current config has a raw disk added after the snapshot: the snapshot's own
    # volumes are the ones asked
    snaps = {"before": {"virtio0": f"{q0},size=1M", "snaptime": 1}}
    config = {"virtio0": f"{q0},size=1M", "virtio1": f"{raw},size=1M", "parent": "before"}
    assert (await check(storages, config, "snapshot"))["hasFeature"] == 0
    assert (await check(storages, config, "snapshot", "before", snaps))["hasFeature"] == 1
    # a clone from a snapshot reads it inside each qcow2 image: a raw volume has none
    assert (await check(storages, config, "copy", "before", snaps))["hasFeature"] == 1
    raw_snaps = {"old": {"virtio0": f"{q0},size=1M", "virtio1": f"{raw},size=1M"}}
    assert (await check(storages, config, "copy", "old", raw_snaps))["hasFeature"] == 0
    with pytest.raises(GuestFailure, match="snapshot 'nope' does not exist"):
        await check(storages, config, "snapshot", "nope", snaps)


class CloneCtx:
    node = "n1"

    def __init__(self, storages: Storages) -> None:
        self.storages = storages


async def test_linked_clone_default_and_refusals(storages) -> None:
    """PVE's clone_vm `full`: linked by default for a template whose disks are all base
    images (CD-ROMs, the cloud-init drive and the TPM state are copied anyway); full
    otherwise (binome: also for a template on storage without linked clones); `full=0`
    refused with PVE's text naming the first disk that cannot be linked."""
    from binome.guest.lifecycle import Lifecycle

    life = Lifecycle(CloneCtx(storages))  # type: ignore[arg-type]
    local = storages.backend("local")
    plain = await local.alloc(100, MiB, "qcow2")
    base = await local.create_base(await local.alloc(100, MiB, "qcow2"))
    template = vm({"template": 1, "scsi0": f"{base},size=1M",
                   "ide2": "local:iso/d.iso,media=cdrom",
                   "ide0": "local:vm-100-cloudinit,media=cdrom",
                   "tpmstate0": "local:100/vm-100-disk-7.raw,size=4M,version=v2.0"})
    assert await life.clone_is_linked(template, None) is True
    assert await life.clone_is_linked(template, False) is True
    assert await life.clone_is_linked(template, True) is False
    # another node: full by default, `full=0` is PVE's local-storage refusal
    assert await life.clone_is_linked(template, None, target="n2") is False
    with pytest.raises(GuestFailure, match=r"can't clone VM to node 'n2' \(VM uses local"):
        await life.clone_is_linked(template, False, target="n2")
    # a VM that is no template: full by default, never linked
    normal = vm({"scsi0": f"{plain},size=1M"})
    assert await life.clone_is_linked(normal, None) is False
    with pytest.raises(GuestFailure) as exc:
        await life.clone_is_linked(normal, False)
    assert str(exc.value) == f"Linked clone feature is not supported for '{plain}' (scsi0)"
    # a template with a disk that is no base image (a storage without base images,
    # such as `replicated`, keeps its volumes as they are): full stays the default
    mixed = vm({**template.config, "virtio1": f"{plain},size=1M"})
    assert await life.clone_is_linked(mixed, None) is False
    with pytest.raises(GuestFailure, match=r"not supported for '.*' \(virtio1\)"):
        await life.clone_is_linked(mixed, False)
    # a snapshot is never linked (PVE: "... for a snapshot of ...")
    snapped = vm(template.config, {"s": dict(template.config)})
    with pytest.raises(GuestFailure, match="not supported for a snapshot of"):
        await life.clone_is_linked(snapped, False, snapname="s")
