"""lsblk's JSON to PVE's disk list (`Diskmanage::get_disks`), from a real `lsblk --json
--bytes -O` of a test host (no udev): its virtio disk mounted at /, an idle zram, and a
loop device holding a GPT with an EFI and a Linux partition (attached with partx)."""

from __future__ import annotations

import json
from pathlib import Path

from binome.daemon import disks

LSBLK = json.loads((Path(__file__).parent / "data" / "lsblk-loop-gpt.json").read_text())
EFI = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def facts(**kw) -> disks.HostFacts:
    # what blkid -p said of the loop device and its partitions on that host (lsblk
    # without udev knows no table or partition type)
    probe = {"/dev/loop0": {"PTTYPE": "gpt"},
             "/dev/loop0p1": {"PART_ENTRY_TYPE": EFI},
             "/dev/loop0p2": {"PART_ENTRY_TYPE": LINUX}}
    return disks.HostFacts(lsblk=LSBLK, mounts={"/dev/vda": "/"}, probe=probe,
                           has_device={"vda": True, "zram0": False}, **kw)


def test_disks_in_pve_shape() -> None:
    got = {d["devpath"]: d for d in disks.parse(facts())}
    assert sorted(got) == ["/dev/loop0", "/dev/vda"]     # zram and its kind are not disks
    vda = got["/dev/vda"]
    assert vda == {"devpath": "/dev/vda", "size": 274877906944, "vendor": "0x1af4",
                   "model": "unknown", "serial": "unknown", "wwn": "unknown", "gpt": 0,
                   "rpm": -1, "type": "unknown", "health": "UNKNOWN", "wearout": "N/A",
                   "osdid": -1, "osdid-list": None, "mounted": 1, "used": "mounted"}
    loop = got["/dev/loop0"]
    assert (loop["size"], loop["gpt"], loop["used"]) == (64 << 20, 1, "EFI")


def test_partitions_and_filters() -> None:
    got = {d["devpath"]: d for d in disks.parse(facts(), include_partitions=True)}
    assert got["/dev/loop0"]["used"] == "partitions"
    p1, p2 = got["/dev/loop0p1"], got["/dev/loop0p2"]
    assert p1 == {"devpath": "/dev/loop0p1", "parent": "/dev/loop0", "gpt": 1,
                  "type": "partition", "size": 1 << 20, "osdid": -1, "osdid-list": None,
                  "used": "EFI"}
    assert "used" not in p2 and p2["size"] == (131038 - 4096 + 1) * 512
    listed = disks.parse(facts(), include_partitions=True)
    assert [d["devpath"] for d in disks.select(listed, "unused")] == ["/dev/loop0p2"]
    assert [d["devpath"] for d in disks.select(listed, "journal_disks")] == \
        ["/dev/loop0", "/dev/loop0p2"]


def test_udev_facts_win_and_usages() -> None:
    udev = {"/dev/vda": {"ID_SERIAL_SHORT": "S123", "ID_MODEL": "QEMU_HARDDISK",
                         "ID_ATA_ROTATION_RATE_RPM": "7200", "ID_WWN": "0x5000c500",
                         "DEVLINKS": "disk/by-id/ata-QEMU_S123 disk/by-id/wwn-0x5000c500"}}
    vda = next(d for d in disks.parse(facts(udev=udev)) if d["devpath"] == "/dev/vda")
    assert (vda["serial"], vda["model"], vda["rpm"], vda["type"], vda["wwn"],
            vda["by_id_link"]) == ("S123", "QEMU_HARDDISK", 7200, "hdd", "0x5000c500",
                                   "/dev/disk/by-id/ata-QEMU_S123")
    lvm = disks.parse(facts(lvm_pvs={"/dev/loop0p2"}), include_partitions=True)
    assert next(d for d in lvm if d["devpath"] == "/dev/loop0p2")["used"] == "LVM"
    # an SSD (not rotational)
    ssd = json.loads(json.dumps(LSBLK))
    next(d for d in ssd["blockdevices"] if d["name"] == "vda")["rota"] = False
    vda = next(d for d in disks.parse(disks.HostFacts(lsblk=ssd))
               if d["devpath"] == "/dev/vda")
    assert (vda["type"], vda["rpm"]) == ("ssd", 0)
