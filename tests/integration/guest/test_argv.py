"""The QEMU command line for launch specs (exact fragments), spec validation, exit reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from binome.guest.argv import build_argv
from binome.guest.process import classify_exit, wrapper_argv
from binome.guest.runtime import QemuRuntime
from binome.guest.spec import DiskSpec, LaunchSpec, NicSpec

RUN = Path("/run/binome-test/qemu")  # only ever a string in argv: nothing is created there


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return tmp_path / "run"


def _pairs(argv: list[str], option: str) -> list[str]:
    """Every value given to ``option`` in argv, in order."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == option]


def _full_spec() -> LaunchSpec:
    return LaunchSpec(
        vmid=100,
        name="web,1",
        memory_mb=512,
        cores=2,
        sockets=2,
        cpu="qemu64",
        disks=(
            DiskSpec("virtio", 0, "/var/lib/vz/images/100/vm-100-disk-0.raw"),
            DiskSpec("virtio", 1, "nbd+unix:///vm-100-disk-1?socket=/run/binome/nbd/r0.sock",
                     format=None, cache="writeback"),
            DiskSpec("scsi", 3, "/var/lib/vz/images/100/vm-100-disk-2.qcow2", format="qcow2"),
            DiskSpec("ide", 2, "/isos/tools.raw", readonly=True, cache="writethrough"),
            DiskSpec("ide", 0, "/var/lib/vz/images/100/ide0.raw", cache="unsafe"),
            DiskSpec("sata", 5, "/var/lib/vz/images/100/sata5.raw"),
        ),
        nics=(
            NicSpec(1, "e1000", "BC:24:11:00:00:02", "vmbr1", tag=20),
            NicSpec(0, "virtio", "bc:24:11:00:00:01", "vmbr0"),
            NicSpec(2, "rtl8139", "bc:24:11:00:00:03", "vmbr0"),
        ),
        boot=("scsi3", "net0", "virtio1", "ide9"),
        kernel="/boot/vmlinuz-guest",
        initrd="/boot/initrd-guest",
        append="console=ttyS0 root=/dev/vda",
        vga="none",
        uuid="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    )


def test_full_spec_argv_fragments(run: Path) -> None:
    argv = QemuRuntime(run, accel="tcg").argv(_full_spec())
    assert argv[0] == "qemu-system-x86_64"
    assert _pairs(argv, "-accel") == ["tcg"]
    assert _pairs(argv, "-machine") == ["q35"]
    assert "-nodefaults" in argv and "-no-user-config" in argv
    assert _pairs(argv, "-name") == ["guest=web,,1,debug-threads=on"]  # comma escaped
    assert _pairs(argv, "-cpu") == ["qemu64"]
    assert _pairs(argv, "-smp") == ["4,sockets=2,cores=2,maxcpus=4"]
    assert _pairs(argv, "-m") == ["512"]
    assert _pairs(argv, "-uuid") == ["0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"]
    assert _pairs(argv, "-pidfile") == [f"{run}/100.pid"]
    assert _pairs(argv, "-qmp") == [f"unix:{run}/100.qmp,server=on,wait=off"]
    assert _pairs(argv, "-chardev") == [
        f"socket,id=serial0,path={run}/100.serial,server=on,wait=off"]
    assert _pairs(argv, "-serial") == ["chardev:serial0"]
    # vga=none: no display device, no VNC
    assert _pairs(argv, "-display") == ["none"] and "-vnc" not in argv
    assert not any(d.startswith(("VGA", "virtio-vga")) for d in _pairs(argv, "-device"))
    assert _pairs(argv, "-kernel") == ["/boot/vmlinuz-guest"]
    assert _pairs(argv, "-initrd") == ["/boot/initrd-guest"]
    assert _pairs(argv, "-append") == ["console=ttyS0 root=/dev/vda"]
    assert _pairs(argv, "-boot") == ["strict=on,reboot-timeout=1000"]

    assert _pairs(argv, "-drive") == [
        "file=/var/lib/vz/images/100/vm-100-disk-0.raw,if=none,id=drive-virtio0,format=raw,"
        "cache=none",
        "file=nbd+unix:///vm-100-disk-1?socket=/run/binome/nbd/r0.sock,if=none,"
        "id=drive-virtio1,format=raw,cache=writeback",
        "file=/var/lib/vz/images/100/vm-100-disk-2.qcow2,if=none,id=drive-scsi3,format=qcow2,"
        "cache=none",
        "file=/var/lib/vz/images/100/ide0.raw,if=none,id=drive-ide0,format=raw,cache=unsafe",
        "file=/isos/tools.raw,if=none,id=drive-ide2,format=raw,cache=writethrough,readonly=on",
        "file=/var/lib/vz/images/100/sata5.raw,if=none,id=drive-sata5,format=raw,cache=none",
    ]
    assert _pairs(argv, "-device") == [
        "virtio-scsi-pci,id=scsihw0",
        "ahci,id=ahci0",
        "virtio-blk-pci,drive=drive-virtio0,id=virtio0",
        "virtio-blk-pci,drive=drive-virtio1,id=virtio1,bootindex=102",
        "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=3,drive=drive-scsi3,id=scsi3,"
        "bootindex=100",
        "ide-hd,bus=ide.0,drive=drive-ide0,id=ide0",
        "ide-cd,bus=ide.2,drive=drive-ide2,id=ide2",  # read-only IDE: a CD drive
        "ide-hd,bus=ahci0.5,drive=drive-sata5,id=sata5",
        "virtio-net-pci,netdev=net0,id=net0,mac=bc:24:11:00:00:01,bootindex=101",
        "e1000,netdev=net1,id=net1,mac=bc:24:11:00:00:02",
        "rtl8139,netdev=net2,id=net2,mac=bc:24:11:00:00:03",
    ]
    assert _pairs(argv, "-netdev") == [
        "tap,id=net0,ifname=tap100i0,script=no,downscript=no",
        "tap,id=net1,ifname=tap100i1,script=no,downscript=no",
        "tap,id=net2,ifname=tap100i2,script=no,downscript=no",
    ]


def test_minimal_spec_has_display_and_no_optional_devices(run: Path) -> None:
    argv = QemuRuntime(run, accel="kvm").argv(LaunchSpec(vmid=101, name="tiny", memory_mb=64))
    assert _pairs(argv, "-accel") == ["kvm"]
    assert _pairs(argv, "-device") == ["VGA,id=vga"]
    assert _pairs(argv, "-vnc") == [f"unix:{run}/101.vnc"]
    assert _pairs(argv, "-boot") == ["reboot-timeout=1000"]
    for absent in ("-drive", "-netdev", "-kernel", "-uuid", "-display"):
        assert absent not in argv
    virtio = QemuRuntime(run, accel="tcg").argv(
        LaunchSpec(vmid=101, name="tiny", memory_mb=64, vga="virtio"))
    assert _pairs(virtio, "-device") == ["virtio-vga,id=vga"]
    serial = QemuRuntime(run, accel="tcg").argv(
        LaunchSpec(vmid=101, name="tiny", memory_mb=64, vga="serial0"))
    assert _pairs(serial, "-display") == ["none"] and "-vnc" not in serial


def test_incoming_migration_target_starts_paused_and_deferred(run: Path) -> None:
    """The target of a live migration: same command line, plus -S and -incoming defer (the
    runtime chooses the listening address over QMP), so it cannot run before the hand-over."""
    spec = LaunchSpec(vmid=101, name="tiny", memory_mb=64, vga="serial0")
    normal = build_argv(spec, run, "tcg")
    incoming = build_argv(spec, run, "tcg", incoming=True)
    assert incoming[:len(normal)] == normal
    assert incoming[len(normal):] == ["-S", "-incoming", "defer"]
    assert "-incoming" not in normal and "-S" not in normal


def test_path_with_comma_is_escaped(run: Path) -> None:
    spec = LaunchSpec(vmid=102, name="x", memory_mb=64,
                      disks=(DiskSpec("virtio", 0, "/data/a,b.raw"),))
    argv = QemuRuntime(run, accel="tcg").argv(spec)
    assert _pairs(argv, "-drive")[0].startswith("file=/data/a,,b.raw,if=none,")


def test_spec_round_trips_through_json_shape() -> None:
    spec = _full_spec()
    assert LaunchSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DiskSpec("nvme", 0, "/x"), "disk bus"),
        (lambda: DiskSpec("ide", 4, "/x"), "index must be 0..3"),
        (lambda: DiskSpec("sata", 6, "/x"), "index must be 0..5"),
        (lambda: DiskSpec("virtio", 0, "/x", format="vmdk"), "format"),
        (lambda: DiskSpec("virtio", 0, "/x", format=None), "explicit format"),
        (lambda: DiskSpec("virtio", 0, "/x", cache="directsync"), "cache"),
        (lambda: NicSpec(0, "vmxnet3", "bc:24:11:00:00:01", "vmbr0"), "model"),
        (lambda: NicSpec(0, "virtio", "bc:24:11:00:00", "vmbr0"), "MAC"),
        (lambda: NicSpec(0, "virtio", "01:24:11:00:00:01", "vmbr0"), "multicast"),
        (lambda: NicSpec(0, "virtio", "bc:24:11:00:00:01", "vmbr0", tag=4095), "VLAN tag"),
        (lambda: NicSpec(0, "virtio", "bc:24:11:00:00:01", "a" * 16), "bridge name"),
        (lambda: LaunchSpec(vmid=99, name="x", memory_mb=64), "vmid"),
        (lambda: LaunchSpec(vmid=100, name="x", memory_mb=0), "memory"),
        (lambda: LaunchSpec(vmid=100, name="x", memory_mb=64, vga="matrox"), "vga"),
        (lambda: LaunchSpec(vmid=100, name="x", memory_mb=64, initrd="/i"), "need a kernel"),
        (lambda: LaunchSpec(vmid=100, name="x", memory_mb=64, uuid="nope"), "uuid"),
        (lambda: LaunchSpec(vmid=100, name="x", memory_mb=64, cpu="host;rm"), "cpu"),
        (lambda: LaunchSpec(vmid=100, name="x", memory_mb=64,
                            disks=(DiskSpec("virtio", 0, "/a"), DiskSpec("virtio", 0, "/b"))),
         "given twice"),
    ],
)
def test_bad_specs_are_rejected(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_wrapper_runs_qemu_under_sh_and_names_the_vm() -> None:
    argv = wrapper_argv(100, RUN / "100.exitcode", ["tap100i0", "tap100i1"], ["qemu", "-m", "1"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:] == ["binome-vm-100", f"{RUN}/100.exitcode", "tap100i0 tap100i1",
                        "qemu", "-m", "1"]


@pytest.mark.parametrize(
    ("status", "requested", "qmp", "log", "reason"),
    [
        (0, "stop", None, "", "stopped by request"),
        (137, "stop", None, "", "stopped by request"),
        (0, "shutdown", "guest-shutdown", "", "shut down by request (guest powered off)"),
        (0, None, "guest-shutdown", "", "guest powered off"),
        (0, None, None, "", "guest powered off"),
        (137, None, None, "", "QEMU exited unexpectedly (killed by signal 9, SIGKILL)"),
        (134, None, None, "", "QEMU exited unexpectedly (killed by signal 6, SIGABRT)"),
        (0, None, None, "2026-01-01T00:00:00Z qemu-system-x86_64: terminating on signal 15 "
         "from pid 42 (bash)\n", "QEMU terminated by signal 15 (SIGTERM)"),
        (0, None, "host-qmp-quit", "", "QEMU quit by a QMP client"),
        (0, "migrated", "host-qmp-quit", "", "migrated away (source stopped by request)"),
        (1, None, None, "qemu-system-x86_64: -drive file=/x: Could not open '/x': No such file\n",
         "QEMU exited with status 1: -drive file=/x: Could not open '/x': No such file"),
        (None, None, None, "", "QEMU exited (exit status unknown: its wrapper is gone)"),
    ],
)
def test_exit_reasons(status, requested, qmp, log, reason) -> None:
    assert classify_exit(status, requested=requested, qmp_reason=qmp, log_text=log) == reason
