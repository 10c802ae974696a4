"""PVE's check_volume_access inputs: which values of a create/update name an existing
volume, and a volume name's content type and owner (api/methods/qemu.py)."""

from __future__ import annotations

from binome.api.methods.qemu import existing_volumes, volume_kind


def test_volume_kind_by_name() -> None:
    assert volume_kind("iso/debian.iso") == ("iso", None)
    assert volume_kind("vztmpl/x.tar.zst") == ("vztmpl", None)
    assert volume_kind("import/disk.ova") == ("import", None)
    assert volume_kind("100/vm-100-disk-0.raw") == ("images", 100)
    assert volume_kind("vm-101-disk-2") == ("images", 101)            # replicated
    assert volume_kind("100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2") == ("images", 101)
    assert volume_kind("base-100-disk-0") == ("images", 100)
    assert volume_kind("backup/vzdump-qemu-102-2026_12_05-20_00_00.binome") == ("backup", 102)
    assert volume_kind("strange-name") == ("images", None)


def test_existing_volumes_leave_out_new_disks_and_empty_drives() -> None:
    changes = {
        "scsi0": "local:4",                               # new disk: AllocateSpace
        "scsi1": "local:100/vm-100-disk-0.raw,cache=none",
        "ide2": "none,media=cdrom",
        "ide3": "cdrom,media=cdrom",                      # physical drive: Sys.Console
        "ide0": "local:cloudinit",                        # to make
        "sata0": "local:iso/x.iso,media=cdrom",
        "unused0": "local:100/vm-100-disk-1.raw",
        "memory": 512,
    }
    assert existing_volumes(changes) == [("sata0", "local:iso/x.iso"),
                                         ("scsi1", "local:100/vm-100-disk-0.raw"),
                                         ("unused0", "local:100/vm-100-disk-1.raw")]
