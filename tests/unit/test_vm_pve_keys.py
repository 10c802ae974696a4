"""The whole PVE VM config key set against binome's schema, so the gap is visible (and
this fails if a key goes missing), and the device keys added for it: PVE's formats,
what is honoured on the QEMU command line and what refuses a start."""

from __future__ import annotations

from pathlib import Path

import pytest

from binome.guest import config as vmconf
from binome.guest.argv import build_argv
from binome.guest.spec import LaunchSpec

# qemu-server @e6352be (9.2.6) src/PVE/QemuServer.pm: the keys of $confdesc and
# $confdesc_cloudinit, then the enumerated ones with their counts (and Drive.pm's)
PVE_TOP_KEYS = (
    "onboot autostart hotplug reboot lock cpulimit cpuunits memory amd-sev intel-tdx balloon "
    "shares keyboard name scsihw description ostype boot bootdisk smp sockets cores numa "
    "hugepages keephugepages vcpus acpi agent kvm tdf localtime freeze vga watchdog startdate "
    "startup template args tablet migrate_speed migrate_downtime cdrom cpu parent snaptime "
    "vmstate vmstatestorage runningmachine runningcpu running-nets-host-mtu machine arch "
    "smbios1 protection bios vmgenid hookscript ivshmem audio0 spice_enhancements tags rng0 "
    "meta affinity allow-ksm citype ciuser cipassword ciupgrade cicustom searchdomain "
    "nameserver sshkeys efidisk0 tpmstate0").split()
PVE_ENUMERATED = {"numa": 8, "virtiofs": 10, "net": 32, "ipconfig": 32, "parallel": 3,
                  "serial": 4, "hostpci": 16, "usb": 14, "ide": 4, "sata": 6, "scsi": 31,
                  "virtio": 16, "unused": 256}
PVE_KEYS = {*PVE_TOP_KEYS, *(f"{p}{i}" for p, n in PVE_ENUMERATED.items() for i in range(n))}

# PVE keys binome's API does not take as config input, and why (docs/api-compatibility.md)
NOT_IN_SCHEMA = {
    # written by PVE itself, refused as API input by PVE too (json_config_properties)
    "meta", "runningmachine", "runningcpu", "running-nets-host-mtu",
    # unusedN: internal, never set; deleting one frees the volume (handled beside the schema)
    *(f"unused{i}" for i in range(256)),
}
# binome's own keys PVE does not have
BINOME_ONLY = {"kernel", "initrd", "append", "snapstate"}


def test_every_pve_key_is_in_the_schema_or_listed_as_a_known_gap():
    missing = PVE_KEYS - set(vmconf.SCHEMA)
    assert missing == NOT_IN_SCHEMA
    assert set(vmconf.SCHEMA) - PVE_KEYS == BINOME_ONLY
    # unusedN is still understood where PVE uses it
    assert all(vmconf.is_unused_key(f"unused{i}") for i in range(256))


GOOD = {
    "numa0": "cpus=0-1;3,memory=512,hostnodes=0,policy=bind",
    "rng0": "source=/dev/urandom,max_bytes=2048,period=500",
    "usb0": "host=spice,usb3=1", "usb1": "host=1d6b:0002", "usb2": "host=1-2.3",
    "hostpci0": "0000:01:00.0;02:00.1,pcie=1,x-vga=1,vendor-id=0x8086",
    "ivshmem": "size=32,name=shared-1", "audio0": "device=ich9-intel-hda,driver=none",
    "spice_enhancements": "foldersharing=1,videostreaming=filter",
    "parallel0": "/dev/parport0", "parallel2": "/dev/usb/lp1",
    "amd-sev": "type=es,no-debug=1", "intel-tdx": "type=tdx,vsock-cid=3",
    "allow-ksm": "0", "smp": "2", "virtiofs0": "dirid=share,cache=never,expose-acl=1",
    "watchdog": "model=i6300esb,action=reset",
}


def test_pve_values_are_accepted():
    out = vmconf.check_params(GOOD)
    assert set(out) == set(GOOD)
    assert out["allow-ksm"] is False or out["allow-ksm"] in (0, "0")


@pytest.mark.parametrize(("key", "value", "text"), [
    ("numa0", "memory=512", "cpus"),
    ("numa0", "cpus=0,policy=any", "enumeration 'preferred, bind, interleave'"),
    ("rng0", "source=/dev/zero", "enumeration '/dev/urandom, /dev/random, /dev/hwrng'"),
    ("usb0", "host=usb-stick", "does not match the regex pattern"),
    ("hostpci0", "0000:01:00.0,driver=nvidia", "enumeration 'vfio, keep'"),
    ("ivshmem", "size=0", "minimum value of 1"),
    ("audio0", "device=sb16", "enumeration 'ich9-intel-hda, intel-hda, AC97'"),
    ("spice_enhancements", "videostreaming=on", "enumeration 'off, all, filter'"),
    ("parallel0", "/dev/ttyS0", "does not match the regex pattern"),
    ("amd-sev", "type=tdx", "enumeration 'std, es, snp'"),
    ("virtiofs0", "dirid=share,cache=sometimes", "enumeration"),
])
def test_bad_values_have_pves_texts(key, value, text):
    with pytest.raises(vmconf.ConfigError) as info:
        vmconf.check_params({key: value})
    assert set(info.value.errors) == {key} and text in info.value.errors[key]


def test_root_only_device_keys():
    for key, value in (("hostpci0", "01:00.0"), ("usb1", "host=1d6b:0002"),
                       ("parallel0", "/dev/parport0"), ("ivshmem", "size=1"),
                       ("amd-sev", "type=std"), ("spice_enhancements", "foldersharing=1")):
        assert vmconf.root_only(key, value), key
    assert vmconf.root_only("usb0", "spice") is None
    assert vmconf.root_only("rng0", "/dev/urandom") is None
    # PVE's check_usb_perm / check_hostpci_perm: a mapping is Mapping.Use's (the API),
    # neither host nor mapping is refused
    assert vmconf.root_only("usb2", "mapping=webcam,usb3=1") is None
    assert vmconf.root_only("hostpci1", "mapping=gpu,pcie=1") is None
    assert vmconf.root_only("usb2", "usb3=1") == "either 'host' or 'mapping' must be set."
    assert vmconf.root_only("hostpci1", "pcie=1") == "either 'host' or 'mapping' must be set."
    assert vmconf.mapping_uses("usb2", "mapping=webcam") == ("usb", "webcam")
    assert vmconf.mapping_uses("hostpci3", "mapping=gpu,pcie=1") == ("pci", "gpu")
    assert vmconf.mapping_uses("virtiofs0", "share,cache=never") == ("dir", "share")
    assert vmconf.mapping_uses("usb2", "host=1d6b:0002") is None


def test_usb_host_devices_are_qemu_usb_host_on_the_xhci():
    # qemu-server's print_usbdevice_full: vendorid/productid or hostbus/hostport; the
    # controller gets PVE's 15+15 ports, the tablet keeps port 1
    argv = argv_of({"usb0": "host=spice", "usb1": "host=1D6B:0002", "usb3": "host=1-2.3"})
    devices = values(argv, "-device")
    assert "qemu-xhci,p2=15,p3=15,id=xhci" in devices
    assert "usb-host,bus=xhci.0,port=3,vendorid=0x1d6b,productid=0x0002,id=usb1" in devices
    assert "usb-host,bus=xhci.0,port=5,hostbus=1,hostport=2.3,id=usb3" in devices
    assert not [d for d in devices if "usb0" in d]          # spice: stored only
    assert devices.count("usb-tablet,id=tablet,bus=xhci.0,port=1") == 1
    # a tablet alone gets the same controller: a hot-plugged usbN finds its port
    assert "qemu-xhci,p2=15,p3=15,id=xhci" in values(argv_of({}), "-device")
    with pytest.raises(ValueError, match="bad USB host device"):
        LaunchSpec(vmid=100, name="t", memory_mb=64, usb_hosts=((0, "vendorid=x,a=b"),))
    spec = LaunchSpec(vmid=100, name="t", memory_mb=64,
                      usb_hosts=((1, "hostbus=1,hostport=2"),))
    assert LaunchSpec.from_dict(spec.to_dict()) == spec


def argv_of(config: dict) -> list[str]:
    conf = vmconf.parse_conf(vmconf.format_conf(vmconf.check_params(config)))
    spec = LaunchSpec(vmid=100, name="t", memory_mb=512, **vmconf.launch_options(conf))
    return build_argv(spec, Path("/run/binome-test/qemu"), "tcg")


def values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == option]


def test_rng_audio_ksm_watchdog_are_honoured():
    argv = argv_of({"rng0": "/dev/urandom", "audio0": "device=AC97", "allow-ksm": "0",
                    "watchdog": "i6300esb,action=poweroff"})
    assert "rng-random,filename=/dev/urandom,id=rng0" in values(argv, "-object")
    devices = values(argv, "-device")
    assert "virtio-rng-pci,rng=rng0,id=rng0,max-bytes=1024,period=1000" in devices
    assert "AC97,id=audiodev0-dev,audiodev=audiodev0" in devices
    assert values(argv, "-audiodev") == ["none,id=audiodev0"]
    assert values(argv, "-machine") == ["q35,mem-merge=off"]
    assert "i6300esb,id=watchdog0" in devices
    assert values(argv, "-watchdog-action") == ["poweroff"]
    hda = values(argv_of({"audio0": "device=intel-hda", "rng0": "/dev/random,max_bytes=0"}),
                 "-device")
    assert "intel-hda,id=audiodev0-hda" in hda
    assert any(d.startswith("hda-duplex,") for d in hda)
    assert "virtio-rng-pci,rng=rng0,id=rng0" in hda          # max_bytes=0: no limit


def test_numa_nodes_as_given_with_pves_checks():
    conf = {"numa": "1", "memory": "512", "numa0": "cpus=0-1;3,memory=256,hostnodes=0,"
            "policy=bind", "numa1": "cpus=2,memory=256"}
    argv = argv_of(conf)
    assert values(argv, "-object")[:2] == [
        "memory-backend-ram,id=ram-node0,size=256M,host-nodes=0,policy=bind",
        "memory-backend-ram,id=ram-node1,size=256M"]
    assert values(argv, "-numa") == ["node,nodeid=0,cpus=0-1,cpus=3,memdev=ram-node0",
                                     "node,nodeid=1,cpus=2,memdev=ram-node1"]
    for change, text in (
            ({"numa1": "cpus=2,memory=128"},
             "total memory for NUMA nodes must be equal to vm static memory"),
            ({"numa1": "cpus=2"}, "missing NUMA node1 memory value"),
            ({"numa1": "cpus=2,memory=256,hostnodes=0-1"},
             "you need to define a policy for hostnode 0-1")):
        with pytest.raises(ValueError, match=f"^{text}$"):
            argv_of({**conf, **change})
    # without numa: 1 the nodes are stored only
    assert "-numa" not in argv_of({**conf, "numa": "0"})


def test_stored_only_device_keys_change_nothing():
    base = argv_of({})
    for key in ("numa0", "spice_enhancements", "smp"):
        assert argv_of({key: GOOD[key]}) == base, key
    assert argv_of({"usb0": "spice"}) == base


@pytest.mark.parametrize(("key", "text"), [
    ("hostpci0", "hostpci0: PCI passthrough is not available on binome nodes"),
    ("parallel0", "parallel0: host parallel ports are not passed through here"),
    ("virtiofs0", "virtiofs0: virtio-fs directory mappings are not available here"),
    ("amd-sev", "amd-sev: confidential computing is not available on binome nodes"),
    ("intel-tdx", "intel-tdx: confidential computing is not available on binome nodes"),
])
def test_what_cannot_run_here_refuses_the_start_clearly(key, text):
    conf = vmconf.parse_conf(vmconf.format_conf(vmconf.check_params({key: GOOD[key]})))
    with pytest.raises(ValueError) as info:
        vmconf.launch_options(conf)
    assert str(info.value) == text


def test_bad_rng_and_audio_specs_are_refused():
    with pytest.raises(ValueError, match="bad rng"):
        LaunchSpec(vmid=100, name="t", memory_mb=64, rng=("/etc/passwd", 1, 1))
    with pytest.raises(ValueError, match="bad audio"):
        LaunchSpec(vmid=100, name="t", memory_mb=64, audio="sb16")
    spec = LaunchSpec(vmid=100, name="t", memory_mb=64, rng=("/dev/urandom", 0, 1000))
    assert LaunchSpec.from_dict(spec.to_dict()) == spec


def test_ivshmem_shared_file_as_pve():
    argv = argv_of({"ivshmem": "size=32,name=shared-1"})
    assert "memory-backend-file,id=ivshmem,share=on,mem-path=/dev/shm/pve-shm-shared-1," \
           "size=32M" in values(argv, "-object")
    assert "ivshmem-plain,memdev=ivshmem,id=ivshmem" in values(argv, "-device")
    # without a name, the vmid names the file
    assert "mem-path=/dev/shm/pve-shm-100,size=1M" in ",".join(
        values(argv_of({"ivshmem": "size=1"}), "-object"))
    with pytest.raises(ValueError, match="bad ivshmem"):
        LaunchSpec(vmid=100, name="t", memory_mb=64, ivshmem_size_mb=1, ivshmem_name="../x")


def test_cdrom_is_ide2_with_media_cdrom():
    assert vmconf.check_params({"cdrom": "local:iso/d.iso"}) == {
        "ide2": "local:iso/d.iso,media=cdrom"}
    assert vmconf.check_params({"cdrom": "none,media=cdrom", "ide2": "local:iso/x.iso,"
                                "media=cdrom"}) == {"ide2": "none,media=cdrom"}
