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
  refuses read-only backends), a read-only SCSI one as ``scsi-cd`` (PVE's
  media=cdrom); virtio disks stay disks.
* Boot order: ``bootindex`` 100, 101, ... in the spec's order (PVE's scheme);
  devices not listed get none. With an order, ``strict=on`` stops the
  firmware from falling back to unlisted devices.
* Console: ttyS0 is always a socket chardev (``<vmid>.serial``) so every
  guest has a console. ``vga=std|virtio`` adds the display device and VNC on
  ``<vmid>.vnc``; ``none``/``serial0`` add no display device and no VNC.
  A SPICE display (``spice_port``: vga qxl*/virtio*, PVE's ``$is_spice``) adds
  PVE's devices (a ``virtio-serial`` bus ``spice``, the ``spicevmc`` vdagent
  chardev and its ``com.redhat.spice.0`` port) and ``-spice`` with TLS only, on
  127.0.0.1, with the node's cluster certificate; VNC stays.
* NBD sources go straight into ``file=`` (QEMU parses the URI); with no
  format, ``format=raw`` is still given so QEMU never probes guest data.
* Values from the spec are escaped for QEMU's option parser (``,`` -> ``,,``).
* PVE's VM options, as qemu-server's config_to_command writes them: ``acpi: 0``
  is ``-machine q35,acpi=off`` (``-no-acpi`` is deprecated since QEMU 8.0);
  ``kvm: 0`` forces TCG; ``tablet`` a USB tablet on a ``qemu-xhci``
  controller; ``keyboard`` ``-k``; ``localtime``/``startdate``/``tdf``
  ``-rtc``; ``smbios1`` ``-smbios type=1``; ``vmgenid`` a ``vmgenid`` device
  (needs ACPI, so none with ``acpi: 0``); ``balloon`` a ``virtio-balloon-pci``;
  ``numa: 1`` the ``numaN`` nodes, or one node per socket with its share of
  the memory; ``watchdog`` the device and ``-watchdog-action``; ``reboot: 0``
  ``-no-reboot``; ``freeze`` ``-S``; ``serialN`` more ports (``isa-serial``
  with its index, so ttyS2 stays ttyS2 without ttyS1); ``bios: ovmf`` two
  pflash drives (the vars: the VM's ``efidisk0``, else a per-start copy;
  Secure Boot code adds SMM and a secure pflash); ``tpmstate0`` a
  ``tpm-tis`` on swtpm's socket; ``rng0`` ``virtio-rng-pci``; ``audio0`` the
  device with a ``none`` backend; ``allow-ksm: 0`` ``mem-merge=off``;
  ``ivshmem`` an ``ivshmem-plain`` on ``/dev/shm/pve-shm-<name>`` (removed at
  stop, as PVE);
  ``agent`` (enabled) a chardev on ``<vmid>.qga`` and, for ``type=virtio``, a
  ``virtio-serial`` bus with the port ``org.qemu.guest_agent.0`` (``isa``: an
  ``isa-serial`` port), as qemu-server;
  ``args`` (root only) appended last.
* CPU: 'host' exists only with KVM; under TCG it becomes 'max' (everything TCG
  emulates). PVE's flags are QEMU's ``name=on|off``, except ``nested-virt``
  (PVE turns it into vmx or svm by the host's vendor, which a pure function
  cannot know: left out) and the ``hv-*`` enlightenments (KVM only).
* The target of a live migration (``incoming=True``) gets ``-S -incoming
  defer``: QEMU waits for a ``migrate-incoming`` over QMP (the runtime then
  picks the listening address) and stays paused after the state arrived, so
  the guest runs there only once the source has handed over and the service
  says ``cont``.
"""

from __future__ import annotations

from pathlib import Path

from binome.guest.memory import SLOTS, Dimm
from binome.guest.network import tap_name
from binome.guest.paths import GuestPaths
from binome.guest.spec import DiskSpec, LaunchSpec, NicSpec

__all__ = ["NIC_DEVICES", "QEMU_BINARY", "build_argv", "disk_device", "drive_option",
           "hotplug_slot", "nic_device", "nic_netdev", "qemu_opt"]

QEMU_BINARY = "qemu-system-x86_64"

NIC_DEVICES = {"virtio": "virtio-net-pci", "e1000": "e1000", "rtl8139": "rtl8139"}
BOOTINDEX_BASE = 100
SCSI_CONTROLLER = "scsihw0"
BUS_ORDER = ("virtio", "scsi", "ide", "sata")
SATA_CONTROLLER = "ahci0"


# Hot-plug layout (spec.hotplug_pci), as PVE's pci bridges on q35: a DMI-to-PCI bridge
# on pcie.0 and conventional PCI bridges behind it (SHPC/ACPI hot-plug, transitional
# virtio), each device at a slot fixed by its name, so a device plugged into a
# running guest sits where a later start or a migration target puts it.
# PVE's print_qemu_xhci_controller: 15 USB2 and 15 USB3 ports
XHCI_CONTROLLER = "qemu-xhci,p2=15,p3=15,id=xhci"
HOTPLUG_DMI = "pcidmi"
HOTPLUG_BRIDGES = ("pci.1", "pci.2", "pci.3")   # virtio0-15, net0-15, net16-31
SLOTS_PER_BRIDGE = 16


def hotplug_slot(name: str) -> tuple[str, str]:
    """(bus, addr) of a VirtIO disk or NIC under the hot-plug layout."""
    index = int(name.lstrip("abcdefghijklmnopqrstuvwxyz"))
    if name.startswith("virtio"):
        bridge = HOTPLUG_BRIDGES[0]
    else:
        bridge = HOTPLUG_BRIDGES[1 + index // SLOTS_PER_BRIDGE]
    return bridge, hex(1 + index % SLOTS_PER_BRIDGE)


def hotplug_bridges() -> list[str]:
    argv = ["-device", f"i82801b11-bridge,id={HOTPLUG_DMI},bus=pcie.0,addr=0x1e"]
    for n, bridge in enumerate(HOTPLUG_BRIDGES, start=1):
        argv += ["-device", f"pci-bridge,id={bridge},chassis_nr={n},bus={HOTPLUG_DMI},"
                            f"addr={hex(n)}"]
    return argv


def _placed(dev: str, name: str, hotplug_pci: bool) -> str:
    if not hotplug_pci:
        return dev
    bus, addr = hotplug_slot(name)
    return f"{dev},bus={bus},addr={addr}"


def qemu_opt(value: str) -> str:
    """Escape a value for a QEMU ``key=value,...`` option string."""
    return value.replace(",", ",,")


def _bootindex(spec: LaunchSpec) -> dict[str, int]:
    order: dict[str, int] = {}
    for name in spec.boot:
        if name not in order:
            order[name] = BOOTINDEX_BASE + len(order)
    return order


def drive_option(disk: DiskSpec) -> str:
    opts = [f"file={qemu_opt(disk.source)}", "if=none", f"id=drive-{disk.name}"]
    opts.append(f"format={disk.format or 'raw'}")
    opts.append(f"cache={disk.cache}")
    if disk.readonly:
        opts.append("readonly=on")
    return ",".join(opts)


def usb_host_device(index: int, selector: str) -> str:
    """`usbN`'s ``-device`` (qemu-server's print_usbdevice_full): a usb-host on the xhci
    at port N+2 (port 1 is the tablet's)."""
    return f"usb-host,bus=xhci.0,port={index + 2},{selector},id=usb{index}"


def disk_device(disk: DiskSpec, bootindex: int | None, hotplug_pci: bool = False) -> str:
    """The ``-device`` value of a disk (also what is hot-plugged with device_add)."""
    ref = f"drive=drive-{disk.name},id={disk.name}"
    if disk.bus == "virtio":
        dev = _placed(f"virtio-blk-pci,{ref}", disk.name, hotplug_pci)
    elif disk.bus == "scsi":
        kind = "scsi-cd" if disk.readonly else "scsi-hd"   # PVE: media=cdrom is scsi-cd
        dev = f"{kind},bus={SCSI_CONTROLLER}.0,channel=0,scsi-id=0,lun={disk.index},{ref}"
    else:
        kind = "ide-cd" if disk.readonly else "ide-hd"
        port = f"ide.{disk.index}" if disk.bus == "ide" else f"{SATA_CONTROLLER}.{disk.index}"
        dev = f"{kind},bus={port},{ref}"
    if bootindex is not None:
        dev += f",bootindex={bootindex}"
    return dev


VGA_DEVICES = {"std": "VGA", "cirrus": "cirrus-vga", "vmware": "vmware-svga",
               "qxl": "qxl-vga", "qxl2": "qxl-vga", "qxl3": "qxl-vga", "qxl4": "qxl-vga",
               "virtio": "virtio-vga"}


def cpu_option(model: str, flags: tuple[str, ...], accel: str) -> str:
    """The ``-cpu`` value: the model (see the module notes) and its flags as ``x=on``."""
    if model == "host" and accel != "kvm":
        model = "max"
    parts = [model]
    for flag in flags:
        name = flag[1:]
        if name == "nested-virt" or (name.startswith("hv-") and accel != "kvm"):
            continue
        parts.append(f"{name}={'on' if flag[0] == '+' else 'off'}")
    return ",".join(parts)


def _display(spec: LaunchSpec, paths: GuestPaths) -> list[str]:
    device = VGA_DEVICES.get(spec.vga)
    if device is None:     # none, serialN: no display device, no VNC
        return ["-display", "none"]
    opts = f"{device},id=vga"
    if spec.vga_memory_mb is not None and spec.vga != "virtio":
        opts += f",vgamem_mb={spec.vga_memory_mb}"
    argv = ["-device", opts]
    if spec.vga.startswith("qxl") and len(spec.vga) == 4:
        # PVE: 'qxlN' is N displays, the first VGA-compatible
        argv += [a for i in range(1, int(spec.vga[3])) for a in ("-device", f"qxl,id=vga{i}")]
    argv += ["-vnc", f"unix:{qemu_opt(str(paths.vnc))}"]
    if spec.spice_port is not None and spec.spice_x509 is not None:
        cert, key, ca = (qemu_opt(p) for p in spec.spice_x509)
        argv += ["-device", "virtio-serial,id=spice",
                 "-chardev", "spicevmc,id=vdagent,name=vdagent",
                 "-device", "virtserialport,chardev=vdagent,name=com.redhat.spice.0",
                 "-spice", f"tls-port={spec.spice_port},addr=127.0.0.1,tls-ciphers=HIGH,"
                           f"seamless-migration=on,x509-cert-file={cert},"
                           f"x509-key-file={key},x509-cacert-file={ca}"]
    if spec.keyboard:
        argv += ["-k", spec.keyboard]
    return argv


def dimm_backend(name: str, size: int) -> str:
    """A DIMM's memory (PVE's print_mem_object without hugepages)."""
    return f"memory-backend-ram,id=mem-{name},size={size}M"


def dimm_device(dimm: Dimm) -> str:
    return f"pc-dimm,id={dimm.name},memdev=mem-{dimm.name},node={dimm.node}"


def _numa(spec: LaunchSpec) -> list[str]:
    """PVE's numaN nodes as given (cpus and host nodes as repeated keys); without them
    one node per socket, its cores, an equal share of memory (the remainder on the last
    node, as QEMU wants the nodes to add up)."""
    argv: list[str] = []
    if spec.numa_nodes:
        for nodeid, cpus, memory, hostnodes, policy in spec.numa_nodes:
            backend = f"memory-backend-ram,id=ram-node{nodeid},size={memory}M"
            if hostnodes is not None:
                backend += "".join(f",host-nodes={h}" for h in hostnodes.split(";"))
                backend += f",policy={policy}"
            argv += ["-object", backend, "-numa",
                     f"node,nodeid={nodeid},"
                     + ",".join(f"cpus={c}" for c in cpus.split(";"))
                     + f",memdev=ram-node{nodeid}"]
        return argv
    static = spec.static_memory_mb
    share = static // spec.sockets
    for i in range(spec.sockets):
        size = share if i < spec.sockets - 1 else static - share * (spec.sockets - 1)
        first = i * spec.cores
        cpus = str(first) if spec.cores == 1 else f"{first}-{first + spec.cores - 1}"
        argv += ["-object", f"memory-backend-ram,id=ram-node{i},size={size}M",
                 "-numa", f"node,nodeid={i},cpus={cpus},memdev=ram-node{i}"]
    return argv


def _serials(spec: LaunchSpec, paths: GuestPaths) -> list[str]:
    argv: list[str] = []
    for index, port in sorted(spec.serials):
        if index == 0 and port == "socket":
            continue    # the console, always there
        if port == "socket":
            chardev = (f"socket,id=serial{index},path={qemu_opt(str(paths.serial_port(index)))}"
                       ",server=on,wait=off")
        else:
            chardev = f"serial,id=serial{index},path={qemu_opt(port)}"
        argv += ["-chardev", chardev, "-device", f"isa-serial,chardev=serial{index},index={index}"]
    return argv


def _agent(spec: LaunchSpec, paths: GuestPaths) -> list[str]:
    if spec.agent is None:
        return []
    argv = ["-chardev", f"socket,path={qemu_opt(str(paths.qga))},server=on,wait=off,id=qga0"]
    if spec.agent == "isa":
        return [*argv, "-device", "isa-serial,chardev=qga0"]
    return [*argv, "-device", "virtio-serial,id=qga0",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]


def nic_netdev(vmid: int, nic: NicSpec) -> str:
    return f"tap,id={nic.name},ifname={tap_name(vmid, nic.index)},script=no,downscript=no"


def nic_device(nic: NicSpec, bootindex: int | None, hotplug_pci: bool = False) -> str:
    """The ``-device`` value of a NIC (also what is hot-plugged with device_add)."""
    dev = f"{NIC_DEVICES[nic.model]},netdev={nic.name},id={nic.name},mac={nic.mac.lower()}"
    dev = _placed(dev, nic.name, hotplug_pci)
    if bootindex is not None:
        dev += f",bootindex={bootindex}"
    return dev


def _nic(vmid: int, nic: NicSpec, bootindex: int | None, hotplug_pci: bool) -> list[str]:
    return ["-netdev", nic_netdev(vmid, nic),
            "-device", nic_device(nic, bootindex, hotplug_pci)]


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
    if not spec.kvm:
        accel = "tcg"
    paths = GuestPaths(run_dir, spec.vmid)
    boot = _bootindex(spec)
    online = spec.vcpus_online or spec.vcpus
    console = dict(spec.serials).get(0, "socket")
    if console == "socket":
        chardev0 = f"socket,id=serial0,path={qemu_opt(str(paths.serial))},server=on,wait=off"
    else:
        chardev0 = f"serial,id=serial0,path={qemu_opt(console)}"
    argv = [
        qemu,
        "-name", f"guest={qemu_opt(spec.name)},debug-threads=on",
        "-no-user-config",
        "-nodefaults",
        "-machine", ",".join(["q35", *([] if spec.acpi else ["acpi=off"]),
                              *(["smm=on"] if spec.secure_boot else []),
                              *([] if spec.mem_merge else ["mem-merge=off"])]),
        "-accel", accel,
        "-cpu", cpu_option(spec.cpu, spec.cpu_flags, accel),
        "-smp", f"{online},sockets={spec.sockets},cores={spec.cores},maxcpus={spec.vcpus}",
        "-m", (str(spec.memory_mb) if spec.memory_hotplug_max_mb is None else
               f"size={spec.static_memory_mb},slots={SLOTS},"
               f"maxmem={spec.memory_hotplug_max_mb}M"),
        # QEMU writes and locks the pidfile: a second QEMU for this vmid cannot start.
        "-pidfile", str(paths.pidfile),
        "-qmp", f"unix:{qemu_opt(str(paths.qmp))},server=on,wait=off",
        "-chardev", chardev0,
        "-serial", "chardev:serial0",
        "-msg", "timestamp=on",
    ]
    if spec.ovmf_code and (spec.ovmf_vars_template or spec.efivars_source):
        code = qemu_opt(spec.ovmf_code)
        if spec.efivars_source:    # the VM's efidisk0 (PVE's drive-efidisk0)
            efivars = (f"id=drive-efidisk0,format={spec.efivars_format or 'raw'},"
                       f"file={qemu_opt(spec.efivars_source)}")
        else:
            efivars = f"format=raw,file={qemu_opt(str(paths.efivars))}"
        argv += ["-drive", f"if=pflash,unit=0,format=raw,readonly=on,file={code}",
                 "-drive", f"if=pflash,unit=1,{efivars}"]
        if spec.secure_boot:
            # the secboot build keeps its vars behind SMM: only SMM code may write them
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    if spec.tpm_state:
        # PVE: tpm-tis for both versions (swtpm's --tpm2 decides), swtpm on a socket
        argv += ["-chardev", f"socket,id=tpmchar,path={qemu_opt(str(paths.tpm_socket))}",
                 "-tpmdev", "emulator,id=tpmdev,chardev=tpmchar",
                 "-device", "tpm-tis,tpmdev=tpmdev"]
    if spec.numa:
        argv += _numa(spec)
    for dimm in spec.dimms():        # PVE's memory hot-plug: the DIMMs of `memory`
        argv += ["-object", dimm_backend(dimm.name, dimm.size), "-device", dimm_device(dimm)]
    if spec.uuid:
        argv += ["-uuid", spec.uuid]
    if spec.smbios1:
        argv += ["-smbios", ",".join(["type=1", *(f"{k}={qemu_opt(v)}" for k, v in spec.smbios1)])]
    if spec.rtc_base or spec.rtc_driftfix:
        flags = (["driftfix=slew"] if spec.rtc_driftfix else []) + (
            [f"base={spec.rtc_base}"] if spec.rtc_base else [])
        argv += ["-rtc", ",".join(flags)]
    if spec.no_reboot:
        argv.append("-no-reboot")
    argv += _display(spec, paths)
    if spec.usb_hosts or spec.tablet:
        # qemu-server: one qemu-xhci with 15 USB2 and 15 USB3 ports, usbN at port N+1;
        # the tablet keeps port 1, so binome puts usbN at port N+2 (every port a
        # hot-plugged usbN may take is there)
        argv += ["-device", XHCI_CONTROLLER]
    if spec.tablet:
        argv += ["-device", "usb-tablet,id=tablet,bus=xhci.0,port=1"]
    for index, selector in spec.usb_hosts:
        argv += ["-device", usb_host_device(index, selector)]
    if spec.vmgenid and spec.acpi:
        argv += ["-device", f"vmgenid,guid={spec.vmgenid},id=vmgenid0"]
    if spec.balloon:
        argv += ["-device", "virtio-balloon-pci,id=balloon0"]
    if spec.watchdog:
        argv += ["-device", f"{spec.watchdog},id=watchdog0"]
        if spec.watchdog_action:
            argv += ["-watchdog-action", spec.watchdog_action]
    if spec.rng:
        # PVE's RNG.pm: rng-random on the host source, a virtio-rng-pci rate-limited
        source, max_bytes, period = spec.rng
        dev = "virtio-rng-pci,rng=rng0,id=rng0"
        if max_bytes:
            dev += f",max-bytes={max_bytes},period={period}"
        argv += ["-object", f"rng-random,filename={source},id=rng0", "-device", dev]
    if spec.ivshmem_path:
        argv += ["-object", f"memory-backend-file,id=ivshmem,share=on,"
                            f"mem-path={spec.ivshmem_path},size={spec.ivshmem_size_mb}M",
                 "-device", "ivshmem-plain,memdev=ivshmem,id=ivshmem"]
    if spec.audio:
        # the device the guest sees; the host side is always 'none' (no SPICE here)
        argv += ["-audiodev", "none,id=audiodev0"]
        if spec.audio == "AC97":
            argv += ["-device", "AC97,id=audiodev0-dev,audiodev=audiodev0"]
        else:
            argv += ["-device", f"{spec.audio},id=audiodev0-hda",
                     "-device", "hda-duplex,id=audiodev0-codec0,bus=audiodev0-hda.0,"
                                "cad=0,audiodev=audiodev0"]
    argv += _serials(spec, paths)
    argv += _agent(spec, paths)
    argv += ["-boot", "strict=on,reboot-timeout=1000" if boot else "reboot-timeout=1000"]
    if spec.kernel:
        argv += ["-kernel", spec.kernel]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
        if spec.append:
            argv += ["-append", spec.append]

    disks = sorted(spec.disks, key=lambda d: (BUS_ORDER.index(d.bus), d.index))
    if spec.hotplug_pci:
        argv += hotplug_bridges()
    if spec.hotplug_scsi or any(d.bus == "scsi" for d in disks):
        argv += ["-device", f"virtio-scsi-pci,id={SCSI_CONTROLLER}"]
    if any(d.bus == "sata" for d in disks):
        argv += ["-device", f"ahci,id={SATA_CONTROLLER}"]
    for disk in disks:
        argv += ["-drive", drive_option(disk),
                 "-device", disk_device(disk, boot.get(disk.name), spec.hotplug_pci)]
    for nic in sorted(spec.nics, key=lambda n: n.index):
        argv += _nic(spec.vmid, nic, boot.get(nic.name), spec.hotplug_pci)
    if incoming:
        argv += ["-S", "-incoming", "defer"]
    elif spec.freeze:
        argv.append("-S")
    argv += list(spec.args)
    return argv
