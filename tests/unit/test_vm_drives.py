"""Drives beyond the bus disks, as PVE: `unusedN` on delete (or freed with force),
protection, efidisk0 (OVMF vars volume) and tpmstate0 (swtpm), pure parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from binome.guest import config as vmconf
from binome.guest.argv import build_argv
from binome.guest.lifecycle import (
    OVMF_FOR_EFIDISK,
    detach_replaced,
    efi_files,
    owned_volumes,
    remove_key,
)
from binome.guest.paths import GuestPaths
from binome.guest.spec import LaunchSpec
from binome.guest.tpm import setup_argv, swtpm_argv

RUN = Path("/run/binome-test/qemu")
DISK0 = "local:100/vm-100-disk-0.raw,size=1G"
DISK1 = "local:100/vm-100-disk-1.raw,size=2G"


def values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == option]


# ---------------------------------------------------------------- unusedN
def test_deleting_a_disk_moves_its_volume_to_the_lowest_free_unused_key():
    conf = {"virtio0": DISK0, "scsi1": DISK1, "unused0": "local:100/vm-100-disk-7.raw",
            "boot": "order=virtio0;scsi1;net0", "net0": "virtio=BC:24:11:00:00:01,bridge=b"}
    assert remove_key(100, conf, {}, "scsi1") == []
    assert conf["unused1"] == "local:100/vm-100-disk-1.raw"
    assert "scsi1" not in conf and conf["boot"] == "order=virtio0;net0"
    assert remove_key(100, conf, {}, "virtio0") == []
    assert conf["unused2"] == "local:100/vm-100-disk-0.raw"
    # deleting unused0 frees it and leaves a gap the next detached disk fills
    assert remove_key(100, conf, {}, "unused0") == ["local:100/vm-100-disk-7.raw"]
    conf["sata0"] = "local:100/vm-100-disk-3.raw"
    remove_key(100, conf, {}, "sata0")
    assert conf["unused0"] == "local:100/vm-100-disk-3.raw"


def test_force_frees_the_volume_instead():
    conf = {"virtio0": DISK0}
    assert remove_key(100, conf, {}, "virtio0", force=True) == ["local:100/vm-100-disk-0.raw"]
    assert conf == {}


def test_cdroms_and_volumes_of_others_just_leave_the_config():
    conf = {"ide2": "local:iso/debian.iso,media=cdrom", "virtio1": "local:101/vm-101-disk-0.raw",
            # another VM's base image (a linked clone's own volume names it first)
            "scsi0": "local:200/base-200-disk-0.raw"}
    for key in ("ide2", "virtio1", "scsi0"):
        assert remove_key(100, conf, {}, key, force=True) == []
    assert conf == {}
    conf = {"unused0": "local:101/vm-101-disk-0.raw"}
    assert remove_key(100, conf, {}, "unused0") == [] and conf == {}
    # PVE's vm_is_volid_owner: a template's base images are its own, a linked clone's
    # image the clone's
    assert vmconf.is_owned_volume(100, "local:100/base-100-disk-0.qcow2")
    linked = "local:100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2"
    assert vmconf.is_owned_volume(101, linked) and not vmconf.is_owned_volume(100, linked)


def test_a_volume_a_snapshot_holds_is_not_freed():
    snaps = {"s1": {"virtio0": DISK0}}
    conf = {"virtio0": DISK0}
    with pytest.raises(ValueError, match=r"^unable to delete 'local:100/vm-100-disk-0.raw' - "
                                         r"volume is still in use \(snapshot\?\)$"):
        remove_key(100, dict(conf), snaps, "virtio0", force=True)
    remove_key(100, conf, snaps, "virtio0")          # not forced: kept as unused0
    with pytest.raises(ValueError, match="still in use"):
        remove_key(100, conf, snaps, "unused0")


def test_protection_refuses_disk_and_unused_removal_with_pves_texts():
    conf = {"protection": 1, "virtio0": DISK0, "unused0": "local:100/vm-100-disk-5.raw"}
    with pytest.raises(ValueError, match=r"^can't remove drive 'virtio0' - protection mode "
                                         r"enabled$"):
        remove_key(100, conf, {}, "virtio0")
    with pytest.raises(ValueError, match=r"^can't remove unused disk 'local:100/vm-100-disk-5"
                                         r"\.raw' - protection mode enabled$"):
        remove_key(100, conf, {}, "unused0")
    assert conf["virtio0"] == DISK0 and "unused1" not in conf


def test_add_unused_volume_dedups_and_has_pves_limit():
    conf: dict = {}
    assert vmconf.add_unused_volume(conf, "local:100/vm-100-disk-0.raw") == "unused0"
    assert vmconf.add_unused_volume(conf, "local:100/vm-100-disk-0.raw") is None
    full = {f"unused{i}": f"local:100/vm-100-disk-{i}.raw" for i in range(256)}
    with pytest.raises(ValueError, match=r"^Too many unused volumes - please delete them "
                                         r"first\.$"):
        vmconf.add_unused_volume(full, "local:100/vm-100-disk-999.raw")
    assert vmconf.is_unused_key("unused255") and not vmconf.is_unused_key("unused256")


def test_replacing_a_drive_keeps_the_old_volume_as_unused():
    conf = {"virtio0": DISK0}
    detach_replaced(100, conf, "virtio0", "local:100/vm-100-disk-4.raw,size=4G")
    assert conf["unused0"] == "local:100/vm-100-disk-0.raw"
    conf = {"virtio0": DISK0}
    detach_replaced(100, conf, "virtio0", DISK0 + ",cache=writeback")   # same volume
    assert "unused0" not in conf


def test_owned_volumes_include_efidisk_tpmstate_and_unused():
    conf = {"virtio0": DISK0, "efidisk0": "local:100/vm-100-disk-2.raw,efitype=4m",
            "tpmstate0": "local:100/vm-100-disk-3.raw,version=v2.0",
            "unused0": "local:100/vm-100-disk-4.raw"}
    assert sorted(v for _, v in owned_volumes(conf, {})) == [
        f"local:100/vm-100-disk-{i}.raw" for i in (0, 2, 3, 4)]
    assert vmconf.is_owned_volume(100, "rep:vm-100-disk-2")
    assert not vmconf.is_owned_volume(10, "local:100/vm-100-disk-0.raw")


# ---------------------------------------------------------------- efidisk0 / tpmstate0
def test_efidisk_and_tpmstate_values():
    out = vmconf.check_params({"efidisk0": "local:1,efitype=4m,pre-enrolled-keys=1",
                               "tpmstate0": "local:1,version=v2.0"})
    assert out == {"efidisk0": "local:1,efitype=4m,pre-enrolled-keys=1",
                   "tpmstate0": "local:1,version=v2.0"}
    with pytest.raises(vmconf.ConfigError) as info:
        vmconf.check_params({"efidisk0": "local:1,efitype=8m", "tpmstate0": "local:1,version=3",
                             "efidisk0_": "x"})
    assert info.value.errors["efidisk0"] == (
        "invalid format - efitype: value '8m' does not have a value in the enumeration "
        "'2m, 4m'")
    assert "enumeration 'v1.2, v2.0'" in info.value.errors["tpmstate0"]
    drive = vmconf.parse_drive("efidisk0", "local:100/vm-100-disk-1.raw,efitype=4m,size=528K")
    assert (drive.volid, drive.options["efitype"]) == ("local:100/vm-100-disk-1.raw", "4m")
    assert [d.key for d in vmconf.special_drives({"efidisk0": "local:1", "virtio0": DISK0})] \
        == ["efidisk0"]


def test_efi_files_as_pves_table():
    assert efi_files({}, "n1") == OVMF_FOR_EFIDISK[("2m", False)]
    assert efi_files({"efitype": "4m"}, "n1")[1].endswith("OVMF_VARS_4M.fd")
    # keys are enrolled only with 4m (PVE), with the secure-boot code
    assert efi_files({"efitype": "4m", "pre-enrolled-keys": 1}, "n1") == (
        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
    assert efi_files({"pre-enrolled-keys": 1}, "n1") == OVMF_FOR_EFIDISK[("2m", False)]


def test_efidisk_volume_replaces_the_template_copy_and_secure_boot_adds_smm():
    spec = LaunchSpec(vmid=100, name="t", memory_mb=64,
                      ovmf_code="/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
                      efivars_source="/var/lib/x/100/vm-100-disk-1.raw", efivars_format="raw",
                      secure_boot=True)
    argv = build_argv(spec, RUN, "tcg")
    assert values(argv, "-drive")[:2] == [
        "if=pflash,unit=0,format=raw,readonly=on,"
        "file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        "if=pflash,unit=1,id=drive-efidisk0,format=raw,file=/var/lib/x/100/vm-100-disk-1.raw"]
    assert values(argv, "-machine") == ["q35,smm=on"]
    assert "driver=cfi.pflash01,property=secure,value=on" in values(argv, "-global")
    nbd = LaunchSpec(vmid=100, name="t", memory_mb=64, ovmf_code="/c.fd",
                     efivars_source="nbd+unix:///vm-100-disk-1?socket=/run/x.sock")
    assert "format=raw,file=nbd+unix:///vm-100-disk-1?socket=/run/x.sock" in \
        values(build_argv(nbd, RUN, "tcg"), "-drive")[1]
    with pytest.raises(ValueError, match="OVMF needs both"):
        LaunchSpec(vmid=100, name="t", memory_mb=64, ovmf_code="/c.fd")
    with pytest.raises(ValueError, match="bad EFI vars volume"):
        LaunchSpec(vmid=100, name="t", memory_mb=64, ovmf_code="/c.fd",
                   efivars_source="/x.fd")        # a file without a format


def test_tpm_device_and_swtpm_command_lines():
    spec = LaunchSpec(vmid=100, name="t", memory_mb=64, tpm_state="/var/lib/x/s.raw",
                      tpm_version="v2.0")
    argv = build_argv(spec, RUN, "tcg")
    assert "socket,id=tpmchar,path=/run/binome-test/qemu/100.tpm" in values(argv, "-chardev")
    assert values(argv, "-tpmdev") == ["emulator,id=tpmdev,chardev=tpmchar"]
    assert "tpm-tis,tpmdev=tpmdev" in values(argv, "-device")
    paths = GuestPaths(RUN, 100)
    assert swtpm_argv(paths, "/var/lib/x/s.raw", "v2.0")[-1] == "--tpm2"
    assert "--tpm2" not in swtpm_argv(paths, "/s.raw", "v1.2")
    assert "--terminate" in swtpm_argv(paths, "/s.raw", "v1.2")
    assert setup_argv("/s.raw", "v1.2")[:3] == ["swtpm_setup", "--tpmstate", "file:///s.raw"]
    assert "--not-overwrite" in setup_argv("/s.raw", "v2.0")
    for bad in ({"tpm_state": "/s.raw"}, {"tpm_state": "/s.raw", "tpm_version": "v3"},
                {"tpm_state": "relative.raw", "tpm_version": "v2.0"}):
        with pytest.raises(ValueError, match="TPM"):
            LaunchSpec(vmid=100, name="t", memory_mb=64, **bad)
