"""guest.volume_copy's pure parts and the moved config of a migration that copied local
disks: PVE's `pve-storage-id-map` (pve-common's parse_idmap / map_id) and the volumes
renamed in the config (drives, `unusedN`, the pending section) while everything else,
the mover's lock aside, is kept."""

from __future__ import annotations

import pytest

from binome.guest import config as vmconf
from binome.guest import configs
from binome.guest.volume_copy import StorageMap, map_storage, parse_storage_map


def test_storage_map_forms() -> None:
    assert parse_storage_map("local2") == StorageMap({}, "local2", False)
    assert parse_storage_map("1") == StorageMap({}, None, True)
    m = parse_storage_map("local:local2,repl:local3;other")
    assert m.entries == {"local": "local2", "repl": "local3"} and m.default == "other"
    assert map_storage(m, "local") == "local2"
    assert map_storage(m, "nfs") == "other"
    assert map_storage(parse_storage_map("aa:bb"), "cc") == "cc"      # unmapped: same id
    assert map_storage(None, "local") == "local"
    assert map_storage(parse_storage_map("1"), "local") == "local"


@pytest.mark.parametrize(("text", "message"), [
    ("1,local", "identity mapping cannot be combined with other mappings"),
    ("aa,bb", "default target ID can only be provided once"),
    ("aa:bb,aa:cc", "duplicate mapping for source 'aa'"),
    ("aa:bb:cc", "entry 'aa:bb:cc' contains invalid ID"),
    ("bad/id", "entry 'bad/id' contains invalid ID"),
    ("xx:-y", "entry 'xx:-y' contains invalid ID"),
    ("a", "entry 'a' contains invalid ID"),      # PVE's storage ids have 2 characters or more
])
def test_storage_map_refusals(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_storage_map(text)


def test_moved_config_names_the_copies() -> None:
    text = vmconf.format_conf(
        {"memory": 512, "lock": "migrate",
         "scsi0": "local:100/vm-100-disk-0.qcow2,size=1G,discard=on",
         "ide2": "local:iso/boot.iso,media=cdrom",
         "unused0": "local:100/vm-100-disk-1.raw",
         "virtio1": "repl:vm-100-disk-0,size=1G"},
        pending={"virtio2": "local:100/vm-100-disk-1.raw,size=1G"})
    moved = configs.moved_text(text, "migrate", {
        "local:100/vm-100-disk-0.qcow2": "local2:100/vm-100-disk-3.qcow2",
        "local:100/vm-100-disk-1.raw": "local2:100/vm-100-disk-4.raw"})
    config = vmconf.parse_conf(moved)
    assert config["scsi0"] == "local2:100/vm-100-disk-3.qcow2,size=1G,discard=on"
    assert config["unused0"] == "local2:100/vm-100-disk-4.raw"
    assert config["ide2"] == "local:iso/boot.iso,media=cdrom"     # ISO images stay
    assert config["virtio1"] == "repl:vm-100-disk-0,size=1G"
    assert "lock" not in config and config["memory"] == 512
    assert vmconf.parse_conf_pending(moved)["virtio2"] == \
        "local2:100/vm-100-disk-4.raw,size=1G"
