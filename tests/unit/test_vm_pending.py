"""The pending model (guest.pending, lifecycle.apply_pending): PVE's [PENDING] section
in the config text, recording an update, revert, the rows of GET .../pending, which
change reaches a running VM, and the hot-plug layout of the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from binome.guest import config as vmconf
from binome.guest import configs
from binome.guest import pending as pm
from binome.guest.argv import build_argv, hotplug_slot
from binome.guest.lifecycle import apply_pending, keep_reverted_volume, launch_options
from binome.guest.qemu_hotplug import device_args
from binome.guest.spec import LaunchSpec, NicSpec

DISK = "local:100/vm-100-disk-0.raw,size=1G"
DISK1 = "local:100/vm-100-disk-1.raw,size=1G"


# ---------------------------------------------------------------- the text format
def test_pending_section_round_trips_and_is_no_snapshot():
    pending = {"memory": 512, "delete": "tags,!scsi1"}
    text = vmconf.format_conf({"memory": 256, "name": "a", "scsi1": DISK},
                              {"snap1": {"memory": 128, "snaptime": 1}}, pending)
    assert "[PENDING]\ndelete: tags,!scsi1\nmemory: 512\n" in text
    assert text.index("[PENDING]") < text.index("[snap1]")     # PVE's order
    config, snapshots = vmconf.parse_conf_sections(text)
    assert config == {"memory": 256, "name": "a", "scsi1": DISK}
    assert set(snapshots) == {"snap1"}
    assert vmconf.parse_conf_pending(text) == pending
    assert vmconf.parse_conf_pending(vmconf.format_conf({"memory": 1})) == {}


def test_a_move_keeps_the_pending_section():
    text = vmconf.format_conf({"memory": 256, "lock": "migrate"}, {}, {"memory": 512})
    moved = configs.moved_text(text, "migrate")
    assert vmconf.parse_conf(moved) == {"memory": 256}
    assert vmconf.parse_conf_pending(moved) == {"memory": 512}


# ---------------------------------------------------------------- recording
def test_record_sets_deletes_and_drops_no_ops():
    config = {"memory": 256, "name": "a", "tags": "x", "net0": "virtio=AA,bridge=vmbr0"}
    p = pm.record(config, {}, {"memory": 512, "name": "a", "cores": 2}, ["net0", "nosuch"])
    # name equals the current value: no pending change; nosuch is not there to delete
    assert p == {"memory": 512, "cores": 2, "delete": "net0"}
    # setting a key removes it from the delete list; a forced delete is '!key'
    p = pm.record(config, p, {"net0": "e1000=AA,bridge=vmbr0"}, ["memory"], force=True)
    assert pm.values(p) == {"cores": 2, "net0": "e1000=AA,bridge=vmbr0"}
    assert pm.deletes(p) == {"memory": True}
    # deleting a key only pending drops its value and deletes nothing
    p = pm.record(config, p, {}, ["cores"])
    assert "cores" not in p and pm.deletes(p) == {"memory": True}


def test_revert_drops_values_and_deletions():
    config = {"memory": 256, "name": "a"}
    p = {"memory": 512, "cores": 4, "delete": "name"}
    assert pm.record(config, p, {}, [], revert=["memory", "name"]) == {"cores": 4}
    assert pm.drop(p, "cores") == {"memory": 512, "delete": "name"}
    assert pm.single(p, "name") == {"delete": "name"}
    assert pm.single(p, "memory") == {"memory": 512}


def test_merged_and_rows_have_pves_shape():
    config = {"memory": 256, "name": "a", "tags": "x"}
    p = {"memory": 512, "cores": 2, "delete": "name,!tags"}
    assert pm.merged(config, p) == {"memory": 512, "cores": 2}
    assert pm.rows(config, p) == [
        {"key": "cores", "pending": 2},
        {"key": "memory", "value": 256, "pending": 512},
        {"key": "name", "value": "a", "delete": 1},
        {"key": "tags", "value": "x", "delete": 2},
    ]
    assert pm.keys(p) == ["cores", "memory", "name", "tags"]
    assert pm.order(p) == [("name", True), ("tags", True), ("cores", False),
                           ("memory", False)]


# ---------------------------------------------------------------- what goes live
@pytest.mark.parametrize("key, old, new, hotplug, action", [
    ("name", "a", "b", "0", "config"),
    ("description", None, "x", "0", "config"),
    ("ciuser", None, "admin", "0", "config"),
    ("ipconfig0", None, "ip=dhcp", "0", "config"),
    ("memory", 1024, 2048, "network,disk,memory", "memory"),
    ("memory", 256, 512, "network,disk", "pending"),
    ("cores", 1, 2, "cpu", "pending"),
    ("vcpus", 1, 2, "cpu", "cpu"),
    ("vcpus", 1, 2, None, "pending"),
    ("scsi1", None, DISK, None, "disk"),
    ("virtio1", DISK, None, "disk", "disk"),
    ("scsi1", None, DISK, "network", "pending"),
    ("scsi1", DISK, DISK1, None, "pending"),            # another volume: at start
    ("scsi1", None, "local:iso/x.iso,media=cdrom", None, "pending"),
    ("ide1", None, DISK, None, "pending"),
    ("sata0", DISK, None, None, "pending"),
    ("efidisk0", None, DISK, None, "pending"),
    ("net1", None, "virtio=BC:24:11:00:00:01,bridge=vmbr0", None, "nic"),
    ("net1", None, "virtio=BC:24:11:00:00:01,bridge=vmbr0", "disk", "pending"),
    ("hotplug", None, "network,disk,usb,cloudinit", None, "config"),
    ("hotplug", None, "network,usb", None, "pending"),  # drops disk: the command line
    ("hotplug", "1", "network,disk,cpu", None, "pending"),
    ("bios", None, "ovmf", None, "pending"),
    ("balloon", None, 32, None, "balloon"),
    ("balloon", 32, None, None, "balloon"),
    ("balloon", 32, 0, None, "pending"),                # the device goes: at start
    ("balloon", 0, 32, None, "pending"),
])
def test_live_action(key, old, new, hotplug, action):
    features = vmconf.hotplug_features(hotplug)
    assert pm.live_action(key, old, new, features) == action


def test_hotplug_features():
    assert vmconf.hotplug_features(None) == {"network", "disk", "usb"}
    assert vmconf.hotplug_features("1") == {"network", "disk", "usb"}
    assert vmconf.hotplug_features(0) == frozenset()
    assert vmconf.hotplug_features("disk,cpu") == {"disk", "cpu"}


# ---------------------------------------------------------------- applying
def test_apply_pending_moves_drives_to_unused_or_frees_them():
    config = {"scsi0": DISK, "scsi1": DISK1, "name": "a", "boot": "order=scsi0;scsi1"}
    new, freed = apply_pending(100, config, {"delete": "scsi0", "name": "b"}, {})
    assert new["unused0"] == "local:100/vm-100-disk-0.raw" and "scsi0" not in new
    assert new["name"] == "b" and new["boot"] == "order=scsi1" and freed == []
    new, freed = apply_pending(100, config, {"delete": "!scsi0"}, {})
    assert freed == ["local:100/vm-100-disk-0.raw"] and "unused0" not in new
    # a drive given another volume leaves the old one unused
    new, _ = apply_pending(100, config, {"scsi1": "local:100/vm-100-disk-2.raw,size=1G"}, {})
    assert new["unused0"] == "local:100/vm-100-disk-1.raw"
    assert config["scsi1"] == DISK1                      # the input is not changed


def test_apply_pending_refuses_as_pve():
    config = {"scsi0": DISK, "protection": 1}
    with pytest.raises(ValueError, match="can't remove drive 'scsi0' - protection mode"):
        apply_pending(100, config, {"delete": "scsi0"}, {})
    snapshots = {"s1": {"scsi0": DISK}}
    with pytest.raises(ValueError, match="still in use"):
        apply_pending(100, {"scsi0": DISK}, {"delete": "!scsi0"}, snapshots)


def test_a_reverted_new_disk_is_kept_unused():
    config = {"scsi0": DISK}
    keep_reverted_volume(100, config, "scsi1", DISK1)
    assert config["unused0"] == "local:100/vm-100-disk-1.raw"
    keep_reverted_volume(100, config, "scsi1", DISK1)       # already there: once
    keep_reverted_volume(100, config, "scsi2", "local:101/vm-101-disk-0.raw,size=1G")
    assert [k for k in config if k.startswith("unused")] == ["unused0"]


# ---------------------------------------------------------------- command line
def test_hotplug_slots_are_fixed_by_name():
    assert hotplug_slot("virtio0") == ("pci.1", "0x1")
    assert hotplug_slot("virtio15") == ("pci.1", "0x10")
    assert hotplug_slot("net0") == ("pci.2", "0x1")
    assert hotplug_slot("net16") == ("pci.3", "0x1")


def _argv(config: dict) -> list[str]:
    opts = launch_options("n1", config)
    spec = LaunchSpec(vmid=100, name="a", memory_mb=64, cores=2,
                      nics=(NicSpec(0, "virtio", "BC:24:11:00:00:01", "vmbr0"),), **opts)
    return build_argv(spec, Path("/run/x"), "tcg")


def test_argv_layout_follows_hotplug():
    default = " ".join(_argv({}))
    assert "pci-bridge,id=pci.2,chassis_nr=2,bus=pcidmi" in default
    assert "virtio-net-pci,netdev=net0,id=net0,mac=bc:24:11:00:00:01,bus=pci.2,addr=0x1" \
        in default
    assert "virtio-scsi-pci,id=scsihw0" in default          # ready for a SCSI disk
    none = " ".join(_argv({"hotplug": "0"}))
    assert "pcidmi" not in none and "scsihw0" not in none and "addr=" not in none
    assert "scsihw0" not in " ".join(_argv({"hotplug": "network"}))
    assert "-smp 2,sockets=1,cores=2,maxcpus=2" in " ".join(_argv({}))


def test_device_args_are_the_command_line_strings():
    assert device_args("scsi-hd,bus=scsihw0.0,lun=1,drive=drive-scsi1,id=scsi1") == {
        "driver": "scsi-hd", "bus": "scsihw0.0", "lun": "1", "drive": "drive-scsi1",
        "id": "scsi1"}
