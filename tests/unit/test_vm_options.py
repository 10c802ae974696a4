"""PVE's general VM config keys: accepted values, refused values and PVE's texts per key.

The values are what PVE's qemu-server (PVE/QemuServer.pm $confdesc, CPUConfig.pm,
Agent.pm, Machine.pm) and pve-common (JSONSchema.pm) accept; the bad ones are
reported under their own key, every one at once, and nothing is returned.
"""

from __future__ import annotations

import re
import uuid

import pytest

from binome.guest import config as vmconf
from binome.guest.config import ConfigError, check_params

UNDEFINED = ("property is not defined in schema and the schema does not allow additional "
             "properties")


def errors_of(given: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        check_params(given)
    return info.value.errors


# ---------------------------------------------------------------- accepted values
GOOD = [
    ("acpi", "0", False), ("acpi", "1", True),
    ("kvm", "0", False), ("tablet", "1", True), ("localtime", "yes", True),
    ("numa", "0", False), ("onboot", "1", True), ("autostart", "0", False),
    ("protection", "1", True), ("reboot", "0", False), ("template", "0", False),
    ("freeze", "1", True), ("tdf", "off", False),
    ("balloon", "0", 0), ("balloon", "2048", 2048),
    ("shares", "0", 0), ("shares", "50000", 50000),
    ("cpulimit", "0", 0.0), ("cpulimit", "1.5", 1.5), ("cpulimit", "128", 128.0),
    ("cpuunits", "1", 1), ("cpuunits", "262144", 262144),
    ("vcpus", "2", 2), ("cores", "4", 4), ("sockets", "2", 2),
    ("bios", "seabios", "seabios"), ("bios", "ovmf", "ovmf"),
    ("keyboard", "en-us", "en-us"), ("keyboard", "de-ch", "de-ch"),
    ("ostype", "l26", "l26"), ("ostype", "win11", "win11"),
    ("scsihw", "lsi", "lsi"), ("scsihw", "virtio-scsi-single", "virtio-scsi-single"),
    ("hotplug", "0", "0"), ("hotplug", "1", "1"),
    ("hotplug", "network,disk,usb", "network,disk,usb"),
    ("hotplug", "network,disk,cpu,memory,usb,cloudinit", "network,disk,cpu,memory,usb,cloudinit"),
    ("startup", "order=1", "order=1"), ("startup", "2,up=30,down=60", "2,up=30,down=60"),
    ("startup", "up=5", "up=5"),
    ("description", "two\nlines", "two\nlines"),
    ("agent", "1", "1"), ("agent", "0", "0"),
    ("agent", "enabled=0,fstrim_cloned_disks=0,type=virtio",
     "enabled=0,fstrim_cloned_disks=0,type=virtio"),
    ("agent", "1,freeze-fs-on-backup=0,type=isa", "1,freeze-fs-on-backup=0,type=isa"),
    ("agent", "enabled=1,freeze-fs=1", "enabled=1,freeze-fs=1"),
    ("cpu", "qemu64", "qemu64"), ("cpu", "host", "host"), ("cpu", "kvm64", "kvm64"),
    ("cpu", "x86-64-v2-AES", "x86-64-v2-AES"), ("cpu", "EPYC-Rome", "EPYC-Rome"),
    ("cpu", "cputype=qemu64,flags=+aes;-pcid", "cputype=qemu64,flags=+aes;-pcid"),
    ("cpu", "host,hidden=1,hv-vendor-id=proxmox", "host,hidden=1,hv-vendor-id=proxmox"),
    ("cpu", "max,phys-bits=host", "max,phys-bits=host"),
    ("cpu", "max,phys-bits=40,guest-phys-bits=40", "max,phys-bits=40,guest-phys-bits=40"),
    ("vga", "std", "std"), ("vga", "serial0", "serial0"), ("vga", "qxl2", "qxl2"),
    ("vga", "type=virtio,memory=32", "type=virtio,memory=32"),
    ("vga", "memory=16,type=std", "memory=16,type=std"),
    ("vga", "std,clipboard=vnc", "std,clipboard=vnc"),
    ("smbios1", "uuid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
     "uuid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
    ("smbios1", "base64=1,manufacturer=QWNtZQ==,product=Um9hZHJ1bm5lcg==",
     "base64=1,manufacturer=QWNtZQ==,product=Um9hZHJ1bm5lcg=="),
    ("machine", "q35", "q35"), ("machine", "pc-q35-8.1+pve0", "pc-q35-8.1+pve0"),
    ("machine", "type=pc,viommu=virtio", "type=pc,viommu=virtio"),
    ("watchdog", "i6300esb", "i6300esb"), ("watchdog", "model=ib700,action=reset",
                                           "model=ib700,action=reset"),
    ("boot", "order=scsi0;ide2;net0", "order=scsi0;ide2;net0"), ("boot", "cdn", "cdn"),
    ("boot", "legacy=dc", "legacy=dc"), ("boot", "order=hostpci0;usb1", "order=hostpci0;usb1"),
    ("vmgenid", "0", "0"), ("vmgenid", "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0",
                            "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"),
    ("serial0", "socket", "socket"), ("serial3", "/dev/ttyS1", "/dev/ttyS1"),
    ("affinity", "0,5,8-11", "0,5,8-11"),
    ("hookscript", "local:snippets/hook.pl", "local:snippets/hook.pl"),
    ("args", "-no-reboot -smbios 'type=0,vendor=FOO'", "-no-reboot -smbios 'type=0,vendor=FOO'"),
    ("startdate", "now", "now"), ("startdate", "2006-06-17T16:01:21", "2006-06-17T16:01:21"),
    ("migrate_speed", "0", 0), ("migrate_downtime", "0.5", 0.5),
    ("hugepages", "2", "2"), ("keephugepages", "1", True), ("arch", "x86_64", "x86_64"),
    ("vmstatestorage", "local", "local"), ("bootdisk", "scsi0", "scsi0"),
]


@pytest.mark.parametrize(("key", "raw", "expected"), GOOD)
def test_good_values(key, raw, expected):
    assert check_params({key: raw}) == {key: expected}


def test_tags_are_stored_as_pve_does():
    # GuestHelpers::get_unique_tags: split on ';' ',' or space, lower-case, unique, sorted
    assert check_params({"tags": "web;DB,web prod"}) == {"tags": "db;prod;web"}
    assert check_params({"tags": "a_b+c.d-e"}) == {"tags": "a_b+c.d-e"}


def test_vmgenid_one_generates_a_uuid():
    value = check_params({"vmgenid": "1"})["vmgenid"]
    assert str(uuid.UUID(value)) == value


# ---------------------------------------------------------------- refused values
ENUM = "does not have a value in the enumeration"
BAD = [
    ("acpi", "maybe", "type check ('boolean') failed - got 'maybe'"),
    ("kvm", "2", "type check ('boolean') failed - got '2'"),
    ("protection", "yes please", "type check ('boolean') failed - got 'yes please'"),
    ("balloon", "-1", "value must have a minimum value of 0"),
    ("balloon", "1G", "type check ('integer') failed - got '1G'"),
    ("shares", "50001", "value must have a maximum value of 50000"),
    ("cpulimit", "129", "value must have a maximum value of 128"),
    ("cpulimit", "lots", "type check ('number') failed - got 'lots'"),
    ("cpuunits", "0", "value must have a minimum value of 1"),
    ("cpuunits", "262145", "value must have a maximum value of 262144"),
    ("vcpus", "0", "value must have a minimum value of 1"),
    ("bios", "uefi", "value 'uefi' does not have a value in the enumeration 'seabios, ovmf'"),
    ("keyboard", "us", ENUM),
    ("ostype", "win12", ENUM),
    ("scsihw", "buslogic", ENUM),
    ("hotplug", "network,floppy", "invalid hotplug feature 'floppy'"),
    ("hotplug", "2", "invalid hotplug feature '2'"),
    ("startup", "order=first", "unable to parse startup options"),
    ("startup", "up=1,sideways=2", "unable to parse startup options"),
    ("tags", "ok;bad!tag", "invalid characters in tag"),
    ("tags", "-leading-dash", "invalid characters in tag"),
    ("agent", "type=virtio", "invalid format - enabled: property is missing and it is not "
                             "optional"),
    ("agent", "1,type=usb", ENUM),
    ("agent", "1,bogus=1", "invalid format - unknown key 'bogus'"),
    ("cpu", "Pentium4", "Built-in cputype 'Pentium4' is not defined (missing 'custom-' "
                        "prefix?)"),
    ("cpu", "custom-mine", "Custom cputype 'mine' not found"),
    ("cpu", "host,flags=+avx512f", "VM-specific CPU flags must be a subset of: aes, "
                                   "amd-no-ssb, amd-ssbd, hv-evmcs, hv-tlbflush, ibpb, "
                                   "md-clear, nested-virt, pcid, pdpe1gb, spec-ctrl, ssbd, "
                                   "virt-ssbd"),
    ("cpu", "host,flags=aes", "value does not match the regex pattern"),
    ("cpu", "host,reported-model=kvm64",
     "Property 'reported-model' not allowed in VM-specific CPU config."),
    ("cpu", "host,guest-phys-bits=31", "value must have a minimum value of 32"),
    ("cpu", "host,phys-bits=65", "phys-bits"),
    ("vga", "matrox", ENUM),
    ("vga", "std,memory=2", "value must have a minimum value of 4"),
    ("vga", "std,memory=1024", "value must have a maximum value of 512"),
    ("vga", "std,clipboard=spice", ENUM),
    ("smbios1", "uuid=not-a-uuid", "value does not match the regex pattern"),
    ("smbios1", "manufacturer=Acme Corp", "value does not match the regex pattern"),
    ("smbios1", "vendor=QWNtZQ==", "invalid format - unknown key 'vendor'"),
    ("machine", "i440fx", "value does not match the regex pattern"),
    ("machine", "q35,viommu=amd", ENUM),
    ("watchdog", "model=wdt", ENUM),
    ("watchdog", "i6300esb,action=explode", ENUM),
    ("boot", "order=scsi0;floppy0", "invalid boot device 'floppy0'"),
    ("boot", "order=efidisk0", "invalid boot device 'efidisk0'"),
    ("boot", "order=net32", "invalid boot device 'net32'"),
    ("boot", "cdnx", "value does not match the regex pattern"),
    ("vmgenid", "2", "value does not match the regex pattern"),
    ("vmgenid", "not-a-uuid", "value does not match the regex pattern"),
    ("serial0", "tcp:1.2.3.4:5", "value does not match the regex pattern"),
    ("serial1", "/dev/tty,S1", "value does not match the regex pattern"),
    ("affinity", "0,5-3", "unable to parse cpuset option"),
    ("affinity", "all", "unable to parse cpuset option"),
    ("hookscript", "hook.pl", "unable to parse volume ID 'hook.pl'"),
    ("hookscript", "local:iso/hook.pl", "'local:iso/hook.pl' is not in the snippets "
                                        "directory"),
    ("args", "-append 'unterminated", "unable to parse arguments"),
    ("startdate", "yesterday", "value does not match the regex pattern"),
    ("migrate_speed", "-1", "value must have a minimum value of 0"),
    ("hugepages", "4", ENUM),
    ("arch", "riscv64", ENUM),
]


@pytest.mark.parametrize(("key", "raw", "message"), BAD)
def test_bad_values_name_their_key(key, raw, message):
    errors = errors_of({key: raw, "memory": "512"})
    assert set(errors) == {key}
    assert message in errors[key]


def test_every_problem_at_once_and_nothing_returned():
    errors = errors_of({"acpi": "x", "bios": "uefi", "hotplug": "floppy", "numa0": "cpus=0",
                        "memory": "512", "protection": "1"})
    assert set(errors) == {"acpi", "bios", "hotplug", "numa0"}
    assert errors["numa0"] == UNDEFINED


@pytest.mark.parametrize("key", ["numa0", "hostpci0", "usb0", "efidisk0", "tpmstate0", "rng0",
                                 "audio0", "serial4", "parallel0",
                                 "bogus", "runningmachine", "meta"])
def test_keys_not_supported_yet_keep_pves_400_text(key):
    assert errors_of({key: "x"}) == {key: UNDEFINED}


# ---------------------------------------------------------------- privileges, protection
def test_root_only_keys():
    for key in ("args", "affinity", "hookscript", "vmgenid", "arch", "hugepages",
                "keephugepages"):
        assert vmconf.root_only(key, "x") == f"only root can set '{key}' config"
    assert vmconf.root_only("serial1", "socket") is None
    assert vmconf.root_only("serial1", "/dev/ttyS0") == ("only root can set 'serial1' config "
                                                         "for real devices")
    assert vmconf.root_only("protection", "1") is None


def test_protection_and_balloon_texts():
    assert vmconf.protection_error({"protection": 1}, "can't remove VM 100") == (
        "can't remove VM 100 - protection mode enabled")
    assert vmconf.protection_error({"protection": 0}, "can't remove VM 100") is None
    assert vmconf.balloon_error({"memory": 512, "balloon": 1024}) == (
        "balloon value too large (must be smaller than assigned memory)")
    assert vmconf.balloon_error({"memory": 512, "balloon": 0}) is None
    assert vmconf.balloon_error({"balloon": 512}) is None


def test_removed_device_leaves_the_boot_order():
    conf = {"boot": "order=scsi0;net0", "scsi0": "x", "net0": "y"}
    vmconf.drop_from_boot_order(conf, "net0")
    assert conf["boot"] == "order=scsi0"
    vmconf.drop_from_boot_order(conf, "scsi0")
    assert "boot" not in conf
    legacy = {"boot": "cdn"}
    vmconf.drop_from_boot_order(legacy, "scsi0")
    assert legacy == {"boot": "cdn"}


# ---------------------------------------------------------------- the .conf text
def test_conf_text_round_trip_with_pve_types():
    conf = check_params({"acpi": "1", "cpulimit": "2", "migrate_downtime": "0.25",
                         "balloon": "0", "tags": "b;a", "agent": "1", "protection": "1"})
    parsed = vmconf.parse_conf(vmconf.format_conf(conf))
    assert parsed == {"acpi": 1, "cpulimit": 2, "migrate_downtime": 0.25, "balloon": 0,
                      "tags": "a;b", "agent": "1", "protection": 1}
    assert type(parsed["cpulimit"]) is int and type(parsed["acpi"]) is int
    assert re.search(r"^cpulimit: 2$", vmconf.format_conf(conf), re.M)


def test_startup_order_at_host_boot():
    from binome.guest.configs import VmConfig
    from binome.guest.status import startup_key

    def vm(vmid: int, startup: str | None) -> VmConfig:
        return VmConfig(vmid, "n1", {"startup": startup} if startup else {}, "", 0)

    vms = [vm(100, None), vm(101, "order=2,up=5"), vm(102, "1"), vm(103, "up=3"),
           vm(99, "order=2")]
    assert [v.vmid for v in sorted(vms, key=startup_key)] == [102, 99, 101, 100, 103]


def test_key_privileges_are_pves_classes():
    from binome.api.methods.qemu import _key_privs

    expected = {"cpu": "VM.Config.CPU", "vcpus": "VM.Config.CPU", "numa": "VM.Config.CPU",
                "cpulimit": "VM.Config.CPU", "balloon": "VM.Config.Memory",
                "shares": "VM.Config.Memory", "acpi": "VM.Config.HWType",
                "kvm": "VM.Config.HWType", "tablet": "VM.Config.HWType",
                "hotplug": "VM.Config.HWType", "watchdog": "VM.Config.HWType",
                "machine": "VM.Config.HWType", "serial1": "VM.Config.HWType",
                "bios": "VM.Config.Options", "protection": "VM.Config.Options",
                "keyboard": "VM.Config.Options", "startup": "VM.Config.Options",
                "agent": "VM.Config.Options", "tags": "VM.Config.Options",
                "freeze": "VM.PowerMgmt", "boot": "VM.Config.Disk",
                "vmstatestorage": "VM.Config.Disk"}
    assert {k: _key_privs(k, "x") for k in expected} == {k: (v,) for k, v in expected.items()}


def test_status_cpus_follow_vcpus():
    assert vmconf.cpu_count({"cores": 2, "sockets": 2}) == 4
    assert vmconf.cpu_count({"cores": 2, "sockets": 2, "vcpus": 3}) == 3
    assert vmconf.cpu_count({}) == 1
