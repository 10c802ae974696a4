"""PVE's VM options on the QEMU command line: config -> launch options -> argv (pure).

What qemu-server's config_to_command writes for each key binome honours, in
QEMU's own syntax; PVE's defaults (tablet on, balloon device unless 0, local
time for Windows) come from `launch_options`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from binome.guest import config as vmconf
from binome.guest.argv import build_argv
from binome.guest.spec import LaunchSpec

RUN = Path("/run/binome-test/qemu")   # only ever a string in argv


def argv_of(config: dict, accel: str = "tcg", **spec) -> list[str]:
    conf = vmconf.parse_conf(vmconf.format_conf(vmconf.check_params(config)))
    opts = vmconf.launch_options(conf)
    launch = LaunchSpec(vmid=100, name="t", memory_mb=int(conf.get("memory", 512)),
                        cores=int(conf.get("cores", 1)), sockets=int(conf.get("sockets", 1)),
                        **{**opts, **spec})
    return build_argv(launch, RUN, accel)


def values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == option]


def test_defaults_are_pves():
    argv = argv_of({})
    devices = values(argv, "-device")
    assert "usb-tablet,id=tablet,bus=xhci.0,port=1" in devices      # tablet: 1
    assert "qemu-xhci,p2=15,p3=15,id=xhci" in devices        # PVE's ports: usbN hot-plug
    assert "virtio-balloon-pci,id=balloon0" in devices              # balloon unless 0
    assert values(argv, "-machine") == ["q35"]
    assert values(argv, "-accel") == ["tcg"]
    assert "-rtc" not in argv and "-no-reboot" not in argv and "-S" not in argv
    assert "-k" not in argv


def test_acpi_off():
    argv = argv_of({"acpi": "0", "vmgenid": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"})
    assert values(argv, "-machine") == ["q35,acpi=off"]
    # the generation ID is an ACPI device: none without ACPI
    assert not any(d.startswith("vmgenid") for d in values(argv, "-device"))


def test_kvm_off_forces_tcg_even_where_kvm_works():
    assert values(argv_of({"kvm": "0"}, accel="kvm"), "-accel") == ["tcg"]
    assert values(argv_of({}, accel="kvm"), "-accel") == ["kvm"]


def test_tablet_off_and_serial_display_defaults():
    assert not any("tablet" in d for d in values(argv_of({"tablet": "0"}), "-device"))
    # PVE: no tablet by default with a serial terminal (no display)
    assert not any("tablet" in d for d in values(argv_of({"vga": "serial0"}), "-device"))
    assert any("tablet" in d for d in values(argv_of({"vga": "serial0", "tablet": "1"}),
                                             "-device"))


def test_balloon_zero_removes_the_device():
    assert not any("balloon" in d for d in values(argv_of({"balloon": "0"}), "-device"))
    assert "virtio-balloon-pci,id=balloon0" in values(argv_of({"balloon": "256"}), "-device")


def test_keyboard_goes_with_vnc():
    argv = argv_of({"keyboard": "de"})
    assert values(argv, "-k") == ["de"]
    assert "-k" not in argv_of({"keyboard": "de", "vga": "serial0"})  # no VNC, no keymap


def test_localtime_startdate_and_windows_defaults():
    assert values(argv_of({"localtime": "1"}), "-rtc") == ["base=localtime"]
    assert values(argv_of({"ostype": "win11"}), "-rtc") == ["driftfix=slew,base=localtime"]
    assert values(argv_of({"ostype": "win10", "localtime": "0", "tdf": "0"}), "-rtc") == []
    assert values(argv_of({"startdate": "2006-06-17", "localtime": "1"}), "-rtc") == [
        "base=2006-06-17"]
    assert "-rtc" not in argv_of({"ostype": "l26"})


def test_smbios1_fields_decoded_and_escaped():
    argv = argv_of({"smbios1": "uuid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0,base64=1,"
                               "manufacturer=QWNtZSwgSW5jLg==,product=UkQ="})
    assert values(argv, "-smbios") == [
        "type=1,uuid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0,manufacturer=Acme,, Inc.,product=RD"]
    assert values(argv, "-uuid") == ["0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"]
    plain = argv_of({"smbios1": "serial=ABC123,family=Lab"})
    assert values(plain, "-smbios") == ["type=1,serial=ABC123,family=Lab"]


def test_vmgenid_device():
    argv = argv_of({"vmgenid": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"})
    assert "vmgenid,guid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0,id=vmgenid0" in values(
        argv, "-device")
    assert not any(d.startswith("vmgenid") for d in values(argv_of({"vmgenid": "0"}),
                                                           "-device"))


@pytest.mark.parametrize(("cpu", "accel", "expected"), [
    ("qemu64", "tcg", "qemu64"),
    ("host", "kvm", "host"),
    ("host", "tcg", "max"),            # 'host' needs KVM; 'max' is all TCG emulates
    ("kvm64,flags=+aes;-pcid", "tcg", "kvm64,aes=on,pcid=off"),
    ("x86-64-v2-AES", "tcg", "qemu64,aes=on,popcnt=on,pni=on,sse4.1=on,sse4.2=on,ssse3=on"),
    ("host,flags=+nested-virt;+hv-tlbflush", "tcg", "max"),
    ("host,flags=+hv-tlbflush", "kvm", "host,hv-tlbflush=on"),
])
def test_cpu_models_and_flags(cpu, accel, expected):
    assert values(argv_of({"cpu": cpu}, accel=accel), "-cpu") == [expected]


def test_no_cpu_keeps_binomes_default():
    assert values(argv_of({}), "-cpu") == ["qemu64"]


def test_vcpus_online_and_max():
    argv = argv_of({"cores": "2", "sockets": "2", "vcpus": "3"})
    assert values(argv, "-smp") == ["3,sockets=2,cores=2,maxcpus=4"]
    with pytest.raises(ValueError, match="must not exceed"):
        argv_of({"cores": "1", "vcpus": "2"})


def test_numa_one_node_per_socket():
    argv = argv_of({"numa": "1", "sockets": "2", "cores": "2", "memory": "1025"})
    assert values(argv, "-object") == ["memory-backend-ram,id=ram-node0,size=512M",
                                       "memory-backend-ram,id=ram-node1,size=513M"]
    assert values(argv, "-numa") == ["node,nodeid=0,cpus=0-1,memdev=ram-node0",
                                     "node,nodeid=1,cpus=2-3,memdev=ram-node1"]
    assert "-numa" not in argv_of({"numa": "0"})


@pytest.mark.parametrize(("vga", "device"), [
    ("std", "VGA,id=vga"), ("cirrus", "cirrus-vga,id=vga"), ("vmware", "vmware-svga,id=vga"),
    ("virtio", "virtio-vga,id=vga"), ("qxl", "qxl-vga,id=vga"),
    ("type=std,memory=32", "VGA,id=vga,vgamem_mb=32"),
])
def test_vga_types(vga, device):
    argv = argv_of({"vga": vga})
    assert values(argv, "-device")[0] == device
    assert values(argv, "-vnc")


def test_vga_qxl_displays_and_headless():
    assert values(argv_of({"vga": "qxl3"}), "-device")[:3] == [
        "qxl-vga,id=vga", "qxl,id=vga1", "qxl,id=vga2"]
    for headless in ("none", "serial1"):
        argv = argv_of({"vga": headless})
        assert values(argv, "-display") == ["none"] and "-vnc" not in argv
    with pytest.raises(ValueError, match="OpenGL"):
        argv_of({"vga": "virtio-gl"})


def test_serial_ports():
    argv = argv_of({"serial0": "socket", "serial2": "socket", "serial3": "/dev/ttyS1"})
    chardevs = values(argv, "-chardev")
    assert chardevs[0].startswith("socket,id=serial0,path=/run/binome-test/qemu/100.serial,")
    assert ("socket,id=serial2,path=/run/binome-test/qemu/100.serial2,server=on,wait=off"
            in chardevs)
    assert "serial,id=serial3,path=/dev/ttyS1" in chardevs
    devices = values(argv, "-device")
    assert "isa-serial,chardev=serial2,index=2" in devices
    assert "isa-serial,chardev=serial3,index=3" in devices
    assert not any("chardev=serial0" in d for d in devices)   # the console: -serial


def test_watchdog():
    argv = argv_of({"watchdog": "model=ib700,action=poweroff"})
    assert "ib700,id=watchdog0" in values(argv, "-device")
    assert values(argv, "-watchdog-action") == ["poweroff"]
    assert "i6300esb,id=watchdog0" in values(argv_of({"watchdog": "i6300esb"}), "-device")


def test_reboot_freeze_args():
    assert "-no-reboot" in argv_of({"reboot": "0"})
    assert "-S" in argv_of({"freeze": "1"})
    argv = argv_of({"args": "-global kvm-pit.lost_tick_policy=discard -name 'x y'"})
    assert argv[-4:] == ["-global", "kvm-pit.lost_tick_policy=discard", "-name", "x y"]


def test_ovmf_pflash_drives():
    argv = argv_of({"bios": "ovmf"}, ovmf_code="/usr/share/OVMF/OVMF_CODE_4M.fd",
                   ovmf_vars_template="/usr/share/OVMF/OVMF_VARS_4M.fd")
    assert values(argv, "-drive")[:2] == [
        "if=pflash,unit=0,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        "if=pflash,unit=1,format=raw,file=/run/binome-test/qemu/100.efivars.fd"]


def test_stored_only_keys_change_nothing():
    base = argv_of({})
    stored = {"cpulimit": "2", "cpuunits": "512", "shares": "0", "hotplug": "1",
              "startup": "order=1", "onboot": "1", "autostart": "1", "protection": "1",
              "tags": "a", "description": "x", "machine": "pc", "agent": "0,type=isa",
              "migrate_speed": "10", "affinity": "0-1", "hookscript": "local:snippets/h.pl",
              "scsihw": "lsi", "ostype": "l26", "bios": "seabios", "hugepages": "2"}
    assert argv_of(stored) == base


def test_old_specs_without_the_new_fields_still_load():
    spec = LaunchSpec.from_dict({"vmid": 100, "name": "old", "memory_mb": 64})
    assert spec.balloon is False and spec.tablet is False and spec.kvm is True
    assert LaunchSpec.from_dict(spec.to_dict()) == spec
    rich = LaunchSpec(vmid=100, name="r", memory_mb=64, smbios1=(("serial", "1"),),
                      serials=((2, "socket"),), cpu_flags=("+aes",), args=("-S",))
    assert LaunchSpec.from_dict(rich.to_dict()) == rich


def test_spice_display_is_pves_with_tls_on_localhost():
    x509 = ("/etc/binome/pki/node.pem", "/etc/binome/pki/node.key", "/etc/binome/pki/ca.pem")
    argv = argv_of({"vga": "qxl"}, spice_port=61000, spice_x509=x509)
    devices = values(argv, "-device")
    assert devices[0] == "qxl-vga,id=vga"
    assert "virtio-serial,id=spice" in devices
    assert "virtserialport,chardev=vdagent,name=com.redhat.spice.0" in devices
    assert values(argv, "-chardev")[-1] == "spicevmc,id=vdagent,name=vdagent"
    assert values(argv, "-spice") == [
        "tls-port=61000,addr=127.0.0.1,tls-ciphers=HIGH,seamless-migration=on,"
        "x509-cert-file=/etc/binome/pki/node.pem,x509-key-file=/etc/binome/pki/node.key,"
        "x509-cacert-file=/etc/binome/pki/ca.pem"]
    assert values(argv, "-vnc"), "VNC stays"
    assert "-spice" not in argv_of({"vga": "qxl"}), "no port given: no SPICE"
    # SPICE only with a SPICE display (PVE's $is_spice), a port and all three files
    for bad in ({"vga": "std", "spice_port": 61000, "spice_x509": x509},
                {"vga": "qxl", "spice_port": 61000},
                {"vga": "qxl", "spice_port": 80, "spice_x509": x509},
                {"vga": "qxl", "spice_port": 61000, "spice_x509": ("a", "b", "c")}):
        config = {"vga": bad.pop("vga")}
        with pytest.raises(ValueError, match="SPICE"):
            argv_of(config, **bad)
    spec = LaunchSpec(vmid=100, name="t", memory_mb=64, vga="virtio", spice_port=61001,
                      spice_x509=x509)
    assert LaunchSpec.from_dict(spec.to_dict()) == spec
