"""The snapshot tree in the VM config (pure): PVE's sections, the copy a snapshot holds,
the config a rollback writes, re-parenting on delete, the listing and name rules."""

from __future__ import annotations

import pytest

from binome.guest.config import format_conf, parse_conf, parse_conf_sections
from binome.guest.configs import VmConfig, moved_text
from binome.guest.snapshots import (
    applied_config,
    copy_config,
    reparented,
    reserved_name_error,
    snapshot_disks,
    snapshot_list,
)
from binome.schema import check_format

pytestmark = pytest.mark.unit

# PVE's layout (qemu-server writes it so): current config, then [name] sections by name
PVE_TEXT = """#current notes
cores: 2
lock: migrate
memory: 1024
parent: daily
virtio0: local:100/vm-100-disk-0.qcow2,size=4G

[base]
#before the upgrade
cores: 1
memory: 512
snaptime: 1733000000
virtio0: local:100/vm-100-disk-0.qcow2,size=4G

[daily]
cores: 2
memory: 1024
parent: base
snaptime: 1733100000
virtio0: local:100/vm-100-disk-0.qcow2,size=4G
vmstate: local:100/vm-100-disk-0.qcow2
"""


def test_sections_parse_and_format_back_to_the_same_text() -> None:
    config, snaps = parse_conf_sections(PVE_TEXT)
    assert config["parent"] == "daily" and config["description"] == "current notes"
    assert sorted(snaps) == ["base", "daily"]
    assert snaps["base"] == {"cores": 1, "memory": 512, "snaptime": 1733000000,
                             "description": "before the upgrade",
                             "virtio0": "local:100/vm-100-disk-0.qcow2,size=4G"}
    assert snaps["daily"]["parent"] == "base" and type(snaps["daily"]["snaptime"]) is int
    assert format_conf(config, snaps) == PVE_TEXT
    # the current config alone, as every other reader sees it
    assert parse_conf(PVE_TEXT) == config


def test_sections_pve_writes_but_binome_does_not_keep() -> None:
    _, snaps = parse_conf_sections("memory: 1\n[PENDING]\nmemory: 2\n"
                                   "[special:cloudinit]\nname: x\n[s1]\nmemory: 3\n")
    assert list(snaps) == ["s1"]


def test_a_move_keeps_the_sections_and_drops_only_the_movers_lock() -> None:
    moved = moved_text(PVE_TEXT, "migrate")
    config, snaps = parse_conf_sections(moved)
    assert "lock" not in config and sorted(snaps) == ["base", "daily"]
    assert moved_text(PVE_TEXT, "backup") == PVE_TEXT


def test_copy_rollback_and_reparent_follow_abstractconfig() -> None:
    current = {"memory": 2048, "lock": "snapshot", "description": "mine", "parent": "a",
               "unused0": "local:100/vm-100-disk-9.qcow2", "snapstate": "prepare"}
    snap = copy_config(current)
    assert snap == {"memory": 2048, "parent": "a"}      # lock, description, unused0 left out
    after = applied_config(current, {"memory": 512, "parent": "root", "snaptime": 5,
                                     "vmstate": "local:x", "description": "old"}, "a")
    assert after == {"memory": 512, "parent": "a", "description": "mine",
                     "unused0": "local:100/vm-100-disk-9.qcow2"}
    # a disk added after the snapshot is kept as an unused volume, not forgotten
    later = applied_config({"virtio0": "local:100/vm-100-disk-0.qcow2,size=1G",
                            "virtio1": "local:100/vm-100-disk-1.qcow2,size=1G",
                            "unused0": "local:100/vm-100-disk-7.qcow2"},
                           {"virtio0": "local:100/vm-100-disk-0.qcow2,size=1G"}, "s")
    assert later == {"virtio0": "local:100/vm-100-disk-0.qcow2,size=1G", "parent": "s",
                     "unused0": "local:100/vm-100-disk-7.qcow2",
                     "unused1": "local:100/vm-100-disk-1.qcow2"}
    assert reparented({"parent": "b", "x": 1}, "b", "a") == {"parent": "a", "x": 1}
    assert reparented({"parent": "b", "x": 1}, "b", None) == {"x": 1}
    assert reparented({"parent": "c"}, "b", "a") == {"parent": "c"}


def test_snapshot_disks_leave_out_cdroms_and_empty_drives() -> None:
    disks = snapshot_disks({"virtio0": "local:100/vm-100-disk-0.qcow2,size=1G",
                            "ide2": "local:iso/x.iso,media=cdrom", "ide0": "none,media=cdrom",
                            "memory": 5})
    assert [d.key for d in disks] == ["virtio0"]


def test_listing_is_pves_with_the_current_item_last() -> None:
    config, snaps = parse_conf_sections(PVE_TEXT)
    vm = VmConfig(100, "n1", config, "d1g", 1, snaps)
    assert snapshot_list(vm, running=True) == [
        {"name": "base", "snaptime": 1733000000, "vmstate": 0,
         "description": "before the upgrade"},
        {"name": "daily", "snaptime": 1733100000, "vmstate": 1, "description": "",
         "parent": "base"},
        {"name": "current", "digest": "d1g", "running": 1, "description": "You are here!",
         "parent": "daily"},
    ]


@pytest.mark.parametrize("name, error", [
    ("current", "unable to use snapshot name 'current' (reserved name)"),
    ("PENDING", "unable to use snapshot name 'pending' (reserved name)"),
    ("daily_1", None),
])
def test_reserved_names(name: str, error: str | None) -> None:
    assert reserved_name_error(name) == error


@pytest.mark.parametrize("name, ok", [("a1", True), ("A-b_c", True), ("1a", False),
                                      ("a", False), ("a.b", False), ("é1", False)])
def test_snapshot_names_are_pve_configids(name: str, ok: bool) -> None:
    if ok:
        assert check_format("pve-configid", name) == name
    else:
        with pytest.raises(ValueError, match="invalid configuration ID"):
            check_format("pve-configid", name)


def test_which_volumes_can_have_snapshots(tmp_path) -> None:
    import asyncio

    from binome.storage.base import StorageConfig
    from binome.storage.dir import DirStorage
    from binome.storage.replicated import ReplicatedStorage

    local = DirStorage(StorageConfig("local", "dir", path=str(tmp_path)), "n1")
    images = tmp_path / "images" / "100"
    images.mkdir(parents=True)
    (images / "vm-100-disk-0.raw").write_bytes(b"")
    (images / "vm-100-disk-1.qcow2").write_bytes(b"")

    def blocker(storage, volid: str) -> str | None:
        return asyncio.run(storage.snapshot_blocker(volid))

    assert blocker(local, "local:100/vm-100-disk-1.qcow2") is None
    assert "snapshots need qcow2" in str(blocker(local, "local:100/vm-100-disk-0.raw"))
    assert "does not exist" in str(blocker(local, "local:100/vm-100-disk-2.qcow2"))
    assert "not a disk image" in str(blocker(local, "local:iso/x.iso"))
    replicated = ReplicatedStorage(StorageConfig("rep", "replicated"), "n1", None)
    assert "not available on this node" in str(blocker(replicated, "rep:vm-100-disk-0"))


def test_destroy_frees_unused_and_snapshot_only_volumes_once() -> None:
    from binome.guest.lifecycle import owned_volumes

    config = {"virtio0": "local:100/vm-100-disk-0.qcow2,size=1G",
              "ide2": "local:iso/x.iso,media=cdrom",
              "unused0": "local:100/vm-100-disk-2.qcow2"}
    snaps = {"s": {"virtio0": "local:100/vm-100-disk-0.qcow2,size=1G",
                   "virtio1": "local:100/vm-100-disk-1.qcow2,size=1G"}}
    assert owned_volumes(config, snaps) == [("virtio0", "local:100/vm-100-disk-0.qcow2"),
                                           ("unused0", "local:100/vm-100-disk-2.qcow2"),
                                           ("virtio1", "local:100/vm-100-disk-1.qcow2")]
