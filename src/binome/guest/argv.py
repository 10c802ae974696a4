"""The QEMU command line for a :class:`~binome.guest.spec.LaunchSpec` (pure).

Owns the mapping from Proxmox-style devices to QEMU options. Choices, and why:

* ``q35`` machine, ``-nodefaults -no-user-config``: nothing appears that the
  spec did not ask for, and no host config file changes the guest.
* Devices get Proxmox's ids (drive ``drive-virtio0``, device ``virtio0``,
  NIC ``net0``) so QMP output (``query-blockstats``, ``query-block``) reads
  like PVE's and maps back to config keys.
* Buses: ``virtio`` is virtio-blk-pci; ``scsi`` is one virtio-scsi-pci
  controller ``scsihw0`` with ``scsiN`` as LUN N (PVE's virtio-scsi-pci
  layout); ``ide`` uses q35's built-in ICH9 AHCI ports ``ide.N``; ``sata``
  uses a separate AHCI controller ``ahci0`` (ports ``ahci0.N``), as PVE does,
  so ideN and sataN never share a port.
* A read-only IDE/SATA disk is attached as ``ide-cd`` (QEMU's ``ide-hd``
  refuses read-only backends); virtio and SCSI disks stay disks.
* Boot order: ``bootindex`` 100, 101, ... in the spec's order (PVE's scheme);
  devices not listed get none. With an order, ``strict=on`` stops the
  firmware from falling back to unlisted devices.
* Console: ttyS0 is always a socket chardev (``<vmid>.serial``) so every
  guest has a console. ``vga=std|virtio`` adds the display device and VNC on
  ``<vmid>.vnc``; ``none``/``serial0`` add no display device and no VNC.
* NBD sources go straight into ``file=`` (QEMU parses the URI); with no
  format, ``format=raw`` is still given so QEMU never probes guest data.
* Values from the spec are escaped for QEMU's option parser (``,`` -> ``,,``).
* The target of a live migration (``incoming=True``) gets ``-S -incoming
  defer``: QEMU waits for a ``migrate-incoming`` over QMP (the runtime then
  picks the listening address) and stays paused after the state arrived, so
  the guest runs there only once the source has handed over and the service
  says ``cont``.
"""

from __future__ import annotations

from pathlib import Path

from binome.guest.network import tap_name
from binome.guest.paths import GuestPaths
from binome.guest.spec import DiskSpec, LaunchSpec, NicSpec

__all__ = ["NIC_DEVICES", "QEMU_BINARY", "build_argv", "qemu_opt"]

QEMU_BINARY = "qemu-system-x86_64"

NIC_DEVICES = {"virtio": "virtio-net-pci", "e1000": "e1000", "rtl8139": "rtl8139"}
BOOTINDEX_BASE = 100
SCSI_CONTROLLER = "scsihw0"
BUS_ORDER = ("virtio", "scsi", "ide", "sata")
SATA_CONTROLLER = "ahci0"


def qemu_opt(value: str) -> str:
    """Escape a value for a QEMU ``key=value,...`` option string."""
    return value.replace(",", ",,")


def _bootindex(spec: LaunchSpec) -> dict[str, int]:
    order: dict[str, int] = {}
    for name in spec.boot:
        if name not in order:
            order[name] = BOOTINDEX_BASE + len(order)
    return order


def _drive(disk: DiskSpec) -> str:
    opts = [f"file={qemu_opt(disk.source)}", "if=none", f"id=drive-{disk.name}"]
    opts.append(f"format={disk.format or 'raw'}")
    opts.append(f"cache={disk.cache}")
    if disk.readonly:
        opts.append("readonly=on")
    return ",".join(opts)


def _disk_device(disk: DiskSpec, bootindex: int | None) -> str:
    ref = f"drive=drive-{disk.name},id={disk.name}"
    if disk.bus == "virtio":
        dev = f"virtio-blk-pci,{ref}"
    elif disk.bus == "scsi":
        dev = f"scsi-hd,bus={SCSI_CONTROLLER}.0,channel=0,scsi-id=0,lun={disk.index},{ref}"
    else:
        kind = "ide-cd" if disk.readonly else "ide-hd"
        port = f"ide.{disk.index}" if disk.bus == "ide" else f"{SATA_CONTROLLER}.{disk.index}"
        dev = f"{kind},bus={port},{ref}"
    if bootindex is not None:
        dev += f",bootindex={bootindex}"
    return dev


def _nic(vmid: int, nic: NicSpec, bootindex: int | None) -> list[str]:
    netdev = f"tap,id={nic.name},ifname={tap_name(vmid, nic.index)},script=no,downscript=no"
    dev = f"{NIC_DEVICES[nic.model]},netdev={nic.name},id={nic.name},mac={nic.mac.lower()}"
    if bootindex is not None:
        dev += f",bootindex={bootindex}"
    return ["-netdev", netdev, "-device", dev]


def build_argv(
    spec: LaunchSpec, run_dir: Path, accel: str, *, qemu: str = QEMU_BINARY,
    incoming: bool = False,
) -> list[str]:
    """The full argv (``argv[0]`` is the QEMU binary) to run ``spec``.

    ``accel`` is ``"kvm"`` or ``"tcg"``. ``incoming``: the target side of a
    live migration (paused, waiting for ``migrate-incoming``). Pure: touches
    no file and no device.
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel {accel!r}: want kvm or tcg")
    paths = GuestPaths(run_dir, spec.vmid)
    boot = _bootindex(spec)
    argv = [
        qemu,
        "-name", f"guest={qemu_opt(spec.name)},debug-threads=on",
        "-no-user-config",
        "-nodefaults",
        "-machine", "q35",
        "-accel", accel,
        "-cpu", spec.cpu,
        "-smp", f"{spec.vcpus},sockets={spec.sockets},cores={spec.cores},maxcpus={spec.vcpus}",
        "-m", str(spec.memory_mb),
        # QEMU writes and locks the pidfile: a second QEMU for this vmid cannot start.
        "-pidfile", str(paths.pidfile),
        "-qmp", f"unix:{qemu_opt(str(paths.qmp))},server=on,wait=off",
        "-chardev", f"socket,id=serial0,path={qemu_opt(str(paths.serial))},server=on,wait=off",
        "-serial", "chardev:serial0",
        "-msg", "timestamp=on",
    ]
    if spec.uuid:
        argv += ["-uuid", spec.uuid]
    if spec.vga in ("std", "virtio"):
        device = "VGA" if spec.vga == "std" else "virtio-vga"
        argv += ["-device", f"{device},id=vga", "-vnc", f"unix:{qemu_opt(str(paths.vnc))}"]
    else:
        argv += ["-display", "none"]
    argv += ["-boot", "strict=on,reboot-timeout=1000" if boot else "reboot-timeout=1000"]
    if spec.kernel:
        argv += ["-kernel", spec.kernel]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
        if spec.append:
            argv += ["-append", spec.append]

    disks = sorted(spec.disks, key=lambda d: (BUS_ORDER.index(d.bus), d.index))
    if any(d.bus == "scsi" for d in disks):
        argv += ["-device", f"virtio-scsi-pci,id={SCSI_CONTROLLER}"]
    if any(d.bus == "sata" for d in disks):
        argv += ["-device", f"ahci,id={SATA_CONTROLLER}"]
    for disk in disks:
        argv += ["-drive", _drive(disk), "-device", _disk_device(disk, boot.get(disk.name))]
    for nic in sorted(spec.nics, key=lambda n: n.index):
        argv += _nic(spec.vmid, nic, boot.get(nic.name))
    if incoming:
        argv += ["-S", "-incoming", "defer"]
    return argv
