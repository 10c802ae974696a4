"""Which storages VM create/clone/config changes need Datastore.AllocateSpace on (PVE's
`$check_storage_access` and `$check_storage_access_clone` in API2/Qemu.pm)."""

from binome.api.methods.qemu import clone_storages, new_disk_storages


def test_new_disks_each_storage_once_in_key_order():
    changes = {"scsi1": "fast:4", "scsi0": "local:8,cache=none", "virtio0": "local:2",
               "ide2": "local:iso/x.iso,media=cdrom", "sata0": "local:vm-100-disk-0.raw",
               "ide3": "none,media=cdrom", "memory": 512, "scsi2": "bad value,foo=1"}
    assert new_disk_storages(changes) == ["local", "fast"]
    assert new_disk_storages({"memory": 64}) == []


def test_clone_checks_where_copies_go_and_vmstatestorage():
    config = {"scsi0": "local:vm-100-disk-0.raw,size=8G",
              "virtio1": "fast:vm-100-disk-1.raw", "ide2": "local:iso/x.iso,media=cdrom",
              "vmstatestorage": "slow", "name": "x"}
    assert clone_storages(config, None) == ["local", "fast", "slow"]
    assert clone_storages(config, "big") == ["big", "slow"]
    assert clone_storages({"memory": 64}, None) == []
